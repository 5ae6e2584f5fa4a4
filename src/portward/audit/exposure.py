"""Who can open a new connection to a local port, according to the LIVE ruleset (whoever wrote it).

Input is the `nft -j list ruleset` array (tables written through iptables-nft, and iptables-legacy, are
first translated from `iptables-save` into the same JSON by `dialects/iptables.py`). For one question —
family, protocol, destination port, local address — the evaluator walks every base chain that a new
incoming packet traverses (hooks ingress, prerouting and input; filter chains decide, nat chains can divert)
symbolically: the packet's constant fields (ct state new, tcp flags syn, l4proto, dport, daddr, …) are
known, while the source address and the input interface are split into classes by each match.  A packet is
admitted when no base chain drops it: accept in one base chain only hands it to the next, so the answer is
"everything minus the union of what any base chain drops", independent of chain priorities.

Beyond the evaluator (said as `unknown`, with the rule): xt matches that survived translation (ipset, recent),
socket/osf/numgen/… expressions, queue verdicts.  Choices stated plainly: marks are assumed unset;
`limit … over` and meters "over rate" do not fire (a well-behaved client); a source-port match fires for an
accept (an attacker picks the port) and not for a drop.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from portward.audit import spans as sp
from portward.audit.spans import Spans
from portward.policy.addresses import parse_address

Json = dict[str, Any]
Classes = dict[str, Spans]  # input interface -> source addresses

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58, "udplite": 136,
                 "igmp": 2, "gre": 47, "esp": 50, "ah": 51}
VERDICTS = ("accept", "drop", "reject", "jump", "goto", "return", "continue", "queue")
IGNORED_STATEMENTS = frozenset({"counter", "log", "mangle", "notrack", "ct helper", "ct timeout", "ct expectation",
                                "meta", "ct", "synproxy", "flow", "dup", "secmark", "comment", "xt_comment",
                                "snat", "masquerade"})
DIVERTING = frozenset({"dnat", "redirect", "tproxy", "fwd"})
DIVERTING_XT = frozenset({"DNAT", "REDIRECT", "TPROXY", "NETMAP"})
IGNORED_XT_TARGETS = frozenset({"LOG", "NFLOG", "MARK", "CONNMARK", "CT", "TRACE", "SNAT", "MASQUERADE", "TCPMSS",
                                "CHECKSUM", "NOTRACK", "AUDIT", "SECMARK", "CONNSECMARK", "DSCP", "TOS", "TTL",
                                "HL", "CLASSIFY"})
MAX_DEPTH = 32

# Sources no remote host can use for a TCP/UDP connection: loopback, "this network", multicast and the
# reserved 240/4 (v4); unspecified, loopback, v4-mapped and multicast (v6).  "world" means everything else.
_NOT_REMOTE = {
    4: sp.normalize([(0, (1 << 24) - 1), (127 << 24, (128 << 24) - 1), (224 << 24, (1 << 32) - 1)]),
    6: sp.normalize([(0, 1), (0xFFFF << 32, (0xFFFF << 32) + 0xFFFFFFFF), (0xFF << 120, (1 << 128) - 1)]),
}
REMOTE = {family: sp.subtract(sp.full(family), _NOT_REMOTE[family]) for family in (4, 6)}


class Unknown(Exception):
    """An expression the evaluator cannot decide."""


@dataclass(frozen=True)
class Question:
    family: int
    proto: str
    port: int
    daddr: int


@dataclass
class Answer:
    admitted: Classes
    unknown: list[str] = field(default_factory=list)  # "table ip filter chain INPUT rule 3: xt match 'recent'"
    diverted: list[str] = field(default_factory=list)  # nat rules that send the packet elsewhere
    port_range: tuple[int, int] = (0, 65535)  # ports for which this answer holds as well


class _NotApplicable(Exception):
    """A match on a header the packet does not have (nft's implicit dependency fails): no match."""


_ANY_SPORT = object()


@dataclass
class _Set:
    family: str
    table: str
    name: str
    type: Any
    is_map: bool
    elements: list[Any]
    cache: dict[str, Spans] = field(default_factory=dict)


@dataclass
class _Chain:
    family: str
    table: str
    name: str
    hook: str | None
    type: str
    prio: int
    policy: str
    device: tuple[str, ...]
    rules: list[Json] = field(default_factory=list)

    def where(self) -> str:
        return f"table {self.family} {self.table} chain {self.name}"


def _classes_and(classes: Classes, span_set: Spans) -> Classes:
    out = {}
    for iface, sources in classes.items():
        kept = sp.intersect(sources, span_set)
        if kept:
            out[iface] = kept
    return out


def _classes_minus(classes: Classes, other: Classes) -> Classes:
    out = {}
    for iface, sources in classes.items():
        removed = other.get(iface)
        kept = sp.subtract(sources, removed) if removed else sources
        if kept:
            out[iface] = kept
    return out


def _classes_union(a: Classes, b: Classes) -> Classes:
    out = dict(a)
    for iface, sources in b.items():
        out[iface] = sp.union(out[iface], sources) if iface in out else sources
    return out


class Ruleset:
    """An indexed `nft -j list ruleset` (plus translated iptables tables)."""

    def __init__(self, listing: Iterable[Json]) -> None:
        self.chains: dict[tuple[str, str, str], _Chain] = {}
        self.sets: dict[tuple[str, str, str], _Set] = {}
        for item in listing:
            if "chain" in item:
                body = item["chain"]
                devices = body.get("dev") or body.get("devices") or ()
                key = (body["family"], body["table"], body["name"])
                self.chains[key] = _Chain(
                    body["family"], body["table"], body["name"], body.get("hook"), body.get("type", "filter"),
                    int(body.get("prio", 0)), body.get("policy", "accept"),
                    (devices,) if isinstance(devices, str) else tuple(devices),
                )
            elif "rule" in item:
                body = item["rule"]
                chain = self.chains.get((body["family"], body["table"], body["chain"]))
                if chain is not None:
                    chain.rules.append(body)
            elif "set" in item or "map" in item:
                is_map = "map" in item
                body = item["map" if is_map else "set"]
                self.sets[(body["family"], body["table"], body["name"])] = _Set(
                    body["family"], body["table"], body["name"], body.get("type"), is_map, list(body.get("elem", []))
                )

    def base_chains(self, family: int) -> list[_Chain]:
        families = {"inet", "netdev", "ip" if family == 4 else "ip6"}
        chains = [
            chain for chain in self.chains.values()
            if chain.family in families and chain.hook in ("ingress", "prerouting", "input")
            and chain.type in ("filter", "nat")
        ]
        order = {"ingress": 0, "prerouting": 1, "input": 2}
        return sorted(chains, key=lambda c: (order[c.hook or "input"], c.prio))


class Evaluator:
    """Answers Questions against one Ruleset for the given input interfaces (loopback excluded)."""

    def __init__(self, ruleset: Ruleset, interfaces: Sequence[str]) -> None:
        self.ruleset = ruleset
        self.interfaces = [name for name in interfaces if name != "lo"] or ["(none)"]
        self._cache: dict[tuple[int, str, int], list[tuple[tuple[int, int], Answer]]] = {}

    # -- public ---------------------------------------------------------------------------------------------
    def answer(self, question: Question) -> Answer:
        key = (question.family, question.proto, question.daddr)
        for (low, high), cached in self._cache.get(key, ()):
            if low <= question.port <= high:
                return cached
        run = _Run(self, question)
        answer = run.evaluate()
        self._cache.setdefault(key, []).append((answer.port_range, answer))
        return answer


class _Run:
    def __init__(self, evaluator: Evaluator, question: Question) -> None:
        self.ruleset = evaluator.ruleset
        self.interfaces = evaluator.interfaces
        self.q = question
        self.low, self.high = 0, 65535
        self.unknown: list[str] = []
        self.diverted: list[str] = []
        self.where = ""
        self.scope = ("", "")  # (family, table) of the chain being walked: named sets live there
        self.accepting = False

    def evaluate(self) -> Answer:
        remote = REMOTE[self.q.family]
        everything: Classes = {iface: remote for iface in self.interfaces}
        denied: Classes = {}
        for chain in self.ruleset.base_chains(self.q.family):
            entering = everything
            if (chain.family == "netdev" or chain.hook == "ingress") and chain.device:
                entering = {i: s for i, s in everything.items() if i in chain.device}
            _accepted, dropped, returned = self.chain(chain, entering, 0)
            if chain.type == "filter" and chain.policy == "drop":
                dropped = _classes_union(dropped, returned)
            denied = _classes_union(denied, dropped)
        admitted = _classes_minus(everything, denied)
        return Answer(admitted, self.unknown, self.diverted, (self.low, self.high))

    # -- chains and rules -----------------------------------------------------------------------------------
    def chain(self, chain: _Chain, classes: Classes, depth: int) -> tuple[Classes, Classes, Classes]:
        """-> (accepted, dropped, returned-or-fell-through) for the classes entering `chain`."""
        if depth > MAX_DEPTH:
            raise Unknown(f"{chain.where()}: jumps nested deeper than {MAX_DEPTH}")
        accepted: Classes = {}
        dropped: Classes = {}
        returned: Classes = {}
        remaining = classes
        for number, rule in enumerate(chain.rules, 1):
            if not remaining:
                break
            self.scope = (chain.family, chain.table)
            self.where = f"{chain.where()} rule {rule.get('handle', number)}"
            try:
                outcomes = self.rule(rule["expr"], remaining)
            except Unknown as exc:
                self.unknown.append(f"{self.where}: {exc}")
                continue
            for matched, verdict in outcomes:
                matched = {i: s for i, s in matched.items() if i in remaining}
                if not matched or verdict is None:
                    continue
                kind = next(iter(verdict))
                if kind == "accept":
                    if chain.type == "filter":
                        accepted = _classes_union(accepted, matched)
                    else:  # accept in a nat chain ends that chain only; the packet goes on unchanged
                        returned = _classes_union(returned, matched)
                elif kind in ("drop", "reject"):
                    dropped = _classes_union(dropped, matched)
                elif kind == "divert":
                    self.diverted.append(f"{self.where}: {verdict[kind]}")
                    dropped = _classes_union(dropped, matched)
                elif kind in ("jump", "goto"):
                    target = self.ruleset.chains.get((chain.family, chain.table, verdict[kind]["target"]))
                    if target is None:
                        raise Unknown(f"{self.where}: {kind} to a missing chain {verdict[kind]['target']!r}")
                    sub_accepted, sub_dropped, sub_returned = self.chain(target, matched, depth + 1)
                    accepted = _classes_union(accepted, sub_accepted)
                    dropped = _classes_union(dropped, sub_dropped)
                    if kind == "goto":
                        returned = _classes_union(returned, sub_returned)
                    else:  # what the sub-chain returned goes on with the next rule here
                        matched = _classes_union(sub_accepted, sub_dropped)
                elif kind == "return":
                    returned = _classes_union(returned, matched)
                elif kind == "queue":
                    self.unknown.append(f"{self.where}: queue to user space (a program decides)")
                    accepted = _classes_union(accepted, matched)
                elif kind == "continue":
                    continue
                remaining = _classes_minus(remaining, matched)
        returned = _classes_union(returned, remaining)
        return accepted, dropped, returned

    def rule(self, exprs: list[Json], classes: Classes) -> list[tuple[Classes, Json | None]]:
        verdict_kind = next((next(iter(e)) for e in reversed(exprs) if next(iter(e)) in VERDICTS), None)
        self.accepting = verdict_kind in ("accept", "jump", "goto", "queue")
        current = classes
        outcomes: list[tuple[Classes, Json | None]] = []
        for expr in exprs:
            if not current:
                return outcomes
            kind = next(iter(expr))
            body = expr[kind]
            if kind == "match":
                try:
                    current = self.match(body, current)
                except _NotApplicable:
                    return outcomes
            elif kind in VERDICTS:
                outcomes.append((current, expr))
                return outcomes
            elif kind == "vmap":
                outcomes.extend(self.vmap(body, current))
                return outcomes
            elif kind in ("limit", "quota"):
                if body.get("inv"):
                    return outcomes  # "over": a well-behaved client stays under it
            elif kind in ("set", "map", "meter"):
                statements = body.get("stmt", []) or ([body["stmt"]] if isinstance(body.get("stmt"), dict) else [])
                if any(next(iter(s)) in ("limit", "quota") and next(iter(s.values())).get("inv") for s in statements):
                    return outcomes
            elif kind in DIVERTING or (kind == "nat" and body.get("type") in ("dnat", "redirect")):
                outcomes.append((current, {"divert": f"{kind} {body}"}))
                return outcomes
            elif kind == "xt":
                name = body.get("name", "?")
                if body.get("type") == "target" and name in DIVERTING_XT:
                    outcomes.append((current, {"divert": f"xt target {name}"}))
                    return outcomes
                if body.get("type") == "target" and name == "REJECT":
                    outcomes.append((current, {"reject": None}))
                    return outcomes
                if body.get("type") == "target" and name in IGNORED_XT_TARGETS:
                    continue
                raise Unknown(f"xt {body.get('type', 'match')} {name!r} (an iptables extension nft does not show)")
            elif kind in IGNORED_STATEMENTS:
                continue
            else:
                raise Unknown(f"statement {kind!r}")
        outcomes.append((current, None))
        return outcomes

    def vmap(self, body: Json, classes: Classes) -> list[tuple[Classes, Json | None]]:
        data = body["data"]
        pairs: list[Any]
        if isinstance(data, str) and data.startswith("@"):
            pairs = [self._unwrap(e) for e in self._named(data).elements]
        else:
            pairs = data["set"]
        out: list[tuple[Classes, Json | None]] = []
        left = classes
        for key, verdict in pairs:
            matched = self.match({"left": body["key"], "right": {"set": [key]}, "op": "=="}, left)
            if matched:
                out.append((matched, verdict))
                left = _classes_minus(left, matched)
        return out

    # -- matches --------------------------------------------------------------------------------------------
    def match(self, body: Json, classes: Classes) -> Classes:
        left, right, op = body["left"], body["right"], body.get("op", "==")
        negate = op == "!="
        source_family = self._source_family(left)
        if source_family is not None:
            if source_family != self.q.family:
                raise _NotApplicable
            matching = self.address_spans(right)
            return _classes_minus(classes, _classes_and(classes, matching)) if negate else _classes_and(
                classes, matching
            )
        if isinstance(left, dict) and "meta" in left and left["meta"].get("key") in ("iifname", "iif"):
            names = self.interface_names(right)
            keep = {i: s for i, s in classes.items() if _iface_in(i, names) != negate}
            return keep
        if isinstance(left, dict) and "concat" in left:
            return self.concat(left["concat"], right, op, classes)
        value = self.value(left)
        if value is _ANY_SPORT:
            return classes if self.accepting else {}
        return classes if self.compare(left, value, op, right) else {}

    @staticmethod
    def _source_family(left: Any) -> int | None:
        if isinstance(left, dict) and "payload" in left:
            payload = left["payload"]
            if payload.get("field") == "saddr" and payload.get("protocol") in ("ip", "ip6"):
                return 4 if payload["protocol"] == "ip" else 6
        return None

    def concat(self, parts: list[Any], right: Any, op: str, classes: Classes) -> Classes:
        elements = self._elements(right)
        result: Classes = {}
        for element in elements:
            element = self._unwrap(element)
            values = element["concat"] if isinstance(element, dict) and "concat" in element else None
            if values is None or len(values) != len(parts):
                raise Unknown("a concatenation this evaluator cannot pair with its set")
            part_classes = classes
            for part, value in zip(parts, values, strict=True):
                try:
                    part_classes = self.match({"left": part, "right": value, "op": "=="}, part_classes)
                except _NotApplicable:
                    part_classes = {}
                if not part_classes:
                    break
            result = _classes_union(result, part_classes)
        if op == "!=":
            return _classes_minus(classes, result)
        return result

    def value(self, left: Any) -> Any:
        """The packet's value for a non-symbolic expression."""
        q = self.q
        if not isinstance(left, dict):
            return left  # a constant on the left (rare)
        if "meta" in left:
            key = left["meta"]["key"]
            constants = {
                "l4proto": PROTO_NUMBERS[q.proto], "nfproto": "ipv4" if q.family == 4 else "ipv6",
                "protocol": "ip" if q.family == 4 else "ip6", "pkttype": "host", "iiftype": "ether",
                "mark": 0, "skuid": None, "iifgroup": 0,
            }
            if key not in constants or constants[key] is None:
                raise Unknown(f"meta {key}")
            return constants[key]
        if "payload" in left:
            payload = left["payload"]
            protocol, name = payload.get("protocol"), payload.get("field")
            if protocol in ("ip", "ip6"):
                if (protocol == "ip") != (q.family == 4):
                    raise _NotApplicable
                if name == "daddr":
                    return ("address", q.daddr)
                if name in ("protocol", "nexthdr"):
                    return PROTO_NUMBERS[q.proto]
                raise Unknown(f"{protocol} {name}")
            if protocol in ("tcp", "udp", "sctp", "udplite", "th"):
                if protocol != "th" and protocol != q.proto:
                    raise _NotApplicable
                if name == "dport":
                    return ("port", q.port)
                if name == "sport":
                    return _ANY_SPORT
                if protocol == "tcp" and name == "flags":
                    return frozenset({"syn"})
                raise Unknown(f"{protocol} {name}")
            if protocol in ("icmp", "icmpv6", "igmp", "esp", "ah", "gre", "arp", "vlan"):
                raise _NotApplicable
            if protocol == "ether":
                raise Unknown("ether header")
            raise Unknown(f"payload {protocol} {name}")
        if "ct" in left:
            key = left["ct"]["key"]
            ct_values: dict[str, Any] = {
                "state": frozenset({"new"}), "direction": "original", "status": frozenset(), "mark": 0, "zone": 0,
            }
            if key not in ct_values:
                raise Unknown(f"ct {key}")
            return ct_values[key]
        if "fib" in left:
            fib = left["fib"]
            flags = set(fib.get("flags", []))
            if fib.get("result") == "type" and "daddr" in flags:
                return "local"
            if fib.get("result") == "type" and "saddr" in flags:
                return "unicast"
            if fib.get("result") in ("oif", "oifname") and "saddr" in flags:
                return True  # reverse-path check: a real client's address routes back ("exists")
            raise Unknown(f"fib {fib}")
        if "&" in left:
            base, mask = left["&"]
            value = self.value(base)
            if isinstance(value, frozenset):
                return value & frozenset(self._flags(mask))
            if isinstance(value, int):
                return value & int(mask)
            raise Unknown(f"bitwise & on {base}")
        raise Unknown(f"{_summary(left)}")

    def compare(self, left: Any, value: Any, op: str, right: Any) -> bool:
        if isinstance(value, frozenset):
            if op == "in" or (op == "==" and isinstance(right, list)):
                wanted = frozenset(self._flags(right))
                return bool(value & wanted) if op == "in" else value == wanted
            if (isinstance(right, dict) and "set" in right) or (isinstance(right, str) and right.startswith("@")):
                members = [frozenset(self._flags(e)) for e in self._elements(right)]
                return (value in members) != (op == "!=")
            wanted = frozenset(self._flags(right))  # empty for "ct status 0"
            return (value == wanted) != (op == "!=")
        if isinstance(value, tuple) and value[0] == "address":
            matching = self.address_spans(right, family=self.q.family)
            inside = sp.contains(matching, value[1])
            return inside != (op == "!=")
        if isinstance(value, tuple) and value[0] == "port":
            port = value[1]
            if op in ("<", ">", "<=", ">="):
                bound = int(right)
                ports = {"<": ((0, bound - 1),), "<=": ((0, bound),), ">": ((bound + 1, 65535),),
                         ">=": ((bound, 65535),)}[op]
                matching = sp.normalize([p for p in ports if p[0] <= p[1]])
            else:
                matching = self.port_spans(right)
            self.low, self.high = sp.around(matching, port, self.low, self.high)
            return sp.contains(matching, port) != (op == "!=")
        if value is True:  # fib … oif exists
            return (right is not False and right != "missing") != (op == "!=")
        members = [self._normal(e) for e in self._elements(right)]
        if op in ("==", "in"):
            return self._normal(value) in members
        if op == "!=":
            return self._normal(value) not in members
        raise Unknown(f"comparison {op!r} on {_summary(left)}")

    # -- right-hand sides -----------------------------------------------------------------------------------
    def _named(self, reference: str) -> _Set:
        found = self.ruleset.sets.get((*self.scope, reference[1:]))
        if found is None:
            raise Unknown(f"set {reference} is not in the listing")
        return found

    def _elements(self, right: Any) -> list[Any]:
        if isinstance(right, str) and right.startswith("@"):
            return [self._unwrap(e) for e in self._named(right).elements]
        if isinstance(right, dict) and "set" in right:
            items = right["set"]
            return [self._unwrap(e) for e in (items if isinstance(items, list) else [items])]
        return [right]

    @staticmethod
    def _unwrap(element: Any) -> Any:
        while isinstance(element, dict) and "elem" in element:
            element = element["elem"]["val"]
        return element

    def address_spans(self, right: Any, family: int | None = None) -> Spans:
        family = family or self.q.family
        if isinstance(right, str) and right.startswith("@"):
            named = self._named(right)
            cached = named.cache.get(f"addr{family}")
            if cached is None:
                cached = self._address_spans_of(named.elements, family)
                named.cache[f"addr{family}"] = cached
            return cached
        return self._address_spans_of(self._elements(right), family)

    def _address_spans_of(self, elements: Iterable[Any], family: int) -> Spans:
        out: list[tuple[int, int]] = []
        for element in elements:
            element = self._unwrap(element)
            try:
                if isinstance(element, str):
                    out.extend(sp.from_text(family, element))
                elif isinstance(element, dict) and "prefix" in element:
                    out.extend(sp.from_text(family, f"{element['prefix']['addr']}/{element['prefix']['len']}"))
                elif isinstance(element, dict) and "range" in element:
                    f1, first = parse_address(element["range"][0])
                    _f2, last = parse_address(element["range"][1])
                    if f1 == family:
                        out.append((first, last))
                else:
                    raise Unknown(f"address element {element!r}")
            except ValueError as exc:
                raise Unknown(f"address element {element!r}: {exc}") from None
        return sp.normalize(out)

    def port_spans(self, right: Any) -> Spans:
        if isinstance(right, str) and right.startswith("@"):
            named = self._named(right)
            cached = named.cache.get("ports")
            if cached is None:
                cached = self._port_spans_of(named.elements)
                named.cache["ports"] = cached
            return cached
        return self._port_spans_of(self._elements(right))

    def _port_spans_of(self, elements: Iterable[Any]) -> Spans:
        out: list[tuple[int, int]] = []
        for element in elements:
            element = self._unwrap(element)
            if isinstance(element, dict) and "range" in element:
                out.append((_port(element["range"][0]), _port(element["range"][1])))
            elif isinstance(element, int | str):
                port = _port(element)
                out.append((port, port))
            else:
                raise Unknown(f"port element {element!r}")
        return sp.normalize(out)

    def interface_names(self, right: Any) -> list[str]:
        return [str(e) for e in self._elements(right)]

    @staticmethod
    def _flags(value: Any) -> list[str]:
        if isinstance(value, list):
            return [str(v) for v in value]
        if isinstance(value, dict) and "set" in value:
            return [str(v) for v in value["set"]]
        if isinstance(value, int):
            return [] if value == 0 else [str(value)]
        return [str(value)]

    @staticmethod
    def _normal(value: Any) -> Any:
        if isinstance(value, str) and value in PROTO_NUMBERS:
            return PROTO_NUMBERS[value]
        return value


def _iface_in(iface: str, names: list[str]) -> bool:
    for name in names:
        if name.endswith("*") and not name.endswith("\\*"):
            if iface.startswith(name[:-1]):
                return True
        elif iface == name:
            return True
    return False


def _port(value: Any) -> int:
    if isinstance(value, int):
        return value
    text = str(value)
    if text.isdigit():
        return int(text)
    try:
        return socket.getservbyname(text)
    except OSError:
        raise Unknown(f"service name {text!r}") from None


def _summary(expr: Any) -> str:
    if isinstance(expr, dict) and expr:
        kind = next(iter(expr))
        body = expr[kind]
        if isinstance(body, dict):
            detail = " ".join(str(v) for v in body.values() if isinstance(v, str | int))
            return f"{kind} {detail}".strip()
        return str(kind)
    return repr(expr)
