"""The nftables dialect: Policy -> one `inet portward` table, as libnftables JSON and as nft text.

Address lists become named interval sets (one per family), so a rule's cost does not grow with the
list; rules stay few (one per rule, protocol and family). The JSON produced here is in the same shape
that `nft -j list` prints back (e.g. `tcp dport`, not `meta l4proto tcp th dport`), so a live table can be
compared with a compiled one without a second normalisation step; tests/dialects/test_nft.py keeps
that true against the real kernel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portward.dialects import Rendered
from portward.policy.addresses import (
    Net,
    PortRange,
    format_address,
    is_loopback,
    merge,
    merge_ports,
    parse_port_spec,
    prefix_length,
)

if TYPE_CHECKING:
    from portward.policy.model import InboundRule, KnockDoor, OutboundRule, Policy, SpaDoor
    from portward.policy.toml import LoadedPolicy

TABLE = "portward"
FAMILY = "inet"
NFLOG_GROUP_DENIED = 7601
DENIED_LOG_PREFIX = "portward denied "
# kernel limits (rate, per, burst): echo requests admitted, and denied packets copied to user space, so a
# flood never reaches it at line rate; the iptables and firewalld exports say the same
PING_LIMIT = (20, "second", 50)
DENIED_LOG_LIMIT = (50, "second", 100)
NFLOG_GROUP_SPA = 7603  # SPA packets for `portward spad` (7602 is `portward knockd`'s)
SPA_LOG_PREFIX = "portward spa "
SPA_MIN_UDP, SPA_MAX_UDP = 8 + 140, 8 + 1500  # UDP lengths of fwknop's payload bounds
SPA_RATE, SPA_BURST = 10, 20  # SPA packets per second a single sender may have looked at
# `[watch]`: the kernel's scan verdicts go to the denied group with their own prefixes (see Compiler._watch_scans)
BAN_LOG_PREFIX = "portward ban "
SCAN_LOG_PREFIX = "portward scan "
WATCH_SIZE = 65535  # bounded state per watch set: a flood of sources cannot grow it further
WATCH_PROTOCOLS = ["tcp", "udp", "sctp"]  # transport headers with a destination port: what a port scan touches
ICMP_ESSENTIAL = ["destination-unreachable", "time-exceeded", "parameter-problem"]
ICMPV6_ESSENTIAL = [
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "mld-listener-query",
    "mld-listener-report",
    "mld2-listener-report",
]
RATE_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
METER_SIZE = 65535  # bounded state: at most this many sources tracked per rate-limited rule
DOOR_SIZE = 65535  # bounded state per knock stage: a flood of sources cannot grow it further

Json = dict[str, Any]


@dataclass(frozen=True)
class SetSpec:
    name: str
    type: str | tuple[str, ...]
    flags: tuple[str, ...] = ()
    timeout: int | None = None  # seconds
    size: int | None = None
    # Interval address sets hold managed elements as (first, last) integer ranges; None means the
    # set's contents are the kernel's (meters, door grants): never diffed, kept across re-applies.
    elements: tuple[tuple[int, int], ...] | None = None
    comment: str | None = None

    @property
    def family(self) -> int:
        return 6 if self.type == "ipv6_addr" else 4

    def definition(self) -> tuple[Any, ...]:
        """What must match for the live set to be kept as it is (elements aside)."""
        # the kernel does not report 'dynamic' back; it is implied by use in an update statement
        flags = tuple(sorted(flag for flag in self.flags if flag != "dynamic"))
        return (self.name, self.type, flags, self.timeout, self.size if self.elements is None else None)

    def element_json(self) -> list[Any]:
        return elements_json(self.family, self.elements or ())

    def to_json(self, with_elements: bool = True) -> Json:
        body: Json = {
            "family": FAMILY,
            "table": TABLE,
            "name": self.name,
            "type": list(self.type) if isinstance(self.type, tuple) else self.type,
        }
        if self.flags:
            body["flags"] = list(self.flags)
        if self.timeout is not None:
            body["timeout"] = self.timeout
        if self.size is not None:
            body["size"] = self.size
        if self.comment:
            body["comment"] = self.comment
        if with_elements and self.elements:
            body["elem"] = self.element_json()
        return body


@dataclass(frozen=True)
class ChainSpec:
    name: str
    hook: str | None = None
    prio: int = 0
    policy: str | None = None
    type: str = "filter"

    def to_json(self) -> Json:
        body: Json = {"family": FAMILY, "table": TABLE, "name": self.name}
        if self.hook:
            body.update({"type": self.type, "hook": self.hook, "prio": self.prio, "policy": self.policy})
        return body


@dataclass(frozen=True)
class RuleSpec:
    chain: str
    expr: tuple[Any, ...]
    comment: str | None = None

    def key(self) -> str:
        return json.dumps([self.chain, normalize(list(self.expr)), self.comment], sort_keys=True)

    def to_json(self) -> Json:
        body: Json = {"family": FAMILY, "table": TABLE, "chain": self.chain, "expr": list(self.expr)}
        if self.comment:
            body["comment"] = self.comment
        return body


@dataclass
class Ruleset:
    sets: dict[str, SetSpec] = field(default_factory=dict)
    chains: dict[str, ChainSpec] = field(default_factory=dict)
    rules: list[RuleSpec] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def rules_of(self, chain: str) -> list[RuleSpec]:
        return [rule for rule in self.rules if rule.chain == chain]

    def create_commands(self) -> list[Json]:
        """Replace the whole table in one transaction (add first so the delete cannot fail)."""
        table = {"family": FAMILY, "name": TABLE}
        commands: list[Json] = [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]
        commands += [{"add": {"set": spec.to_json()}} for spec in self.sets.values()]
        commands += [{"add": {"chain": spec.to_json()}} for spec in self.chains.values()]
        commands += [{"add": {"rule": rule.to_json()}} for rule in self.rules]
        return commands

    def to_dict(self) -> Json:
        """A JSON-safe snapshot (state dir); from_dict reads it back."""
        return {
            "sets": [
                {
                    **spec.to_json(with_elements=False),
                    "elements": None if spec.elements is None else [[first, last] for first, last in spec.elements],
                }
                for spec in self.sets.values()
            ],
            "chains": [spec.to_json() for spec in self.chains.values()],
            "rules": [rule.to_json() for rule in self.rules],
        }

    @classmethod
    def from_dict(cls, data: Json) -> Ruleset:
        ruleset = cls()
        for item in data["sets"]:
            kind = item["type"]
            ruleset.sets[item["name"]] = SetSpec(
                name=item["name"],
                type=tuple(kind) if isinstance(kind, list) else kind,
                flags=tuple(item.get("flags", ())),
                timeout=item.get("timeout"),
                size=item.get("size"),
                elements=None if item["elements"] is None else tuple((a, b) for a, b in item["elements"]),
                comment=item.get("comment"),
            )
        for item in data["chains"]:
            ruleset.chains[item["name"]] = ChainSpec(
                item["name"], item.get("hook"), item.get("prio", 0), item.get("policy"), item.get("type", "filter")
            )
        ruleset.rules = [RuleSpec(item["chain"], tuple(item["expr"]), item.get("comment")) for item in data["rules"]]
        return ruleset


def normalize(value: Any) -> Any:
    """Order-insensitive parts (anonymous set elements) sorted, so equal rules compare equal."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "set" and isinstance(item, list):
                out[key] = sorted((normalize(element) for element in item), key=lambda e: json.dumps(e, sort_keys=True))
            else:
                out[key] = normalize(item)
        return out
    if isinstance(value, list):
        return [normalize(item) for item in value]
    return value


def elements_json(family: int, spans: Iterable[tuple[int, int]]) -> list[Any]:
    """interval_json for many ranges; v4 inlined because block lists are long."""
    if family == 6:
        return [interval_json(6, first, last) for first, last in spans]
    out: list[Any] = []
    append = out.append
    for first, last in spans:
        address = f"{first >> 24}.{(first >> 16) & 255}.{(first >> 8) & 255}.{first & 255}"
        if first == last:
            append(address)
            continue
        size = last - first + 1
        if size & (size - 1) == 0 and first & (size - 1) == 0:
            append({"prefix": {"addr": address, "len": 33 - size.bit_length()}})
        else:
            append({"range": [address, f"{last >> 24}.{(last >> 16) & 255}.{(last >> 8) & 255}.{last & 255}"]})
    return out


def interval_json(family: int, first: int, last: int) -> Any:
    if first == last:
        return format_address(family, first)
    length = prefix_length(family, first, last)
    if length is not None:
        return {"prefix": {"addr": format_address(family, first), "len": length}}
    return {"range": [format_address(family, first), format_address(family, last)]}


# ----------------------------------------------------------------------------------- expressions


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field_name: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field_name}}


def _addr_payload(family: int, direction: str) -> Json:
    return _payload("ip" if family == 4 else "ip6", direction)


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _ports_right(spans: tuple[tuple[int, int], ...]) -> Any:
    items: list[Any] = [first if first == last else {"range": [first, last]} for first, last in spans]
    if len(items) == 1:
        return items[0]
    return {"set": items}


def _verdict(action: str, proto: str | None = None) -> list[Json]:
    if action == "reject":
        if proto == "tcp":
            return [{"reject": {"type": "tcp reset"}}]
        return [{"reject": {"type": "icmpx", "expr": "port-unreachable"}}]
    return [{action: None}]


def _ct_state(states: list[str]) -> Json:
    return _match({"ct": {"key": "state"}}, states if len(states) > 1 else states[0], "in")


def _limit(rate: int, per: str, burst: int, inv: bool = False) -> Json:
    body: Json = {"rate": rate, "burst": burst, "per": per}
    if inv:
        body["inv"] = True
    return {"limit": body}


# ------------------------------------------------------------------------------------- compiler


class Compiler:
    """Builds the Ruleset for one policy. One instance per compile."""

    def __init__(self, loaded: LoadedPolicy) -> None:
        self.loaded = loaded
        self.policy: Policy = loaded.policy
        self.out = Ruleset()
        self._set_by_content: dict[tuple[int, tuple[tuple[int, int], ...]], str] = {}

    # named sets -----------------------------------------------------------------------------------

    def address_set(self, base: str, family: int, nets: tuple[Net, ...]) -> str:
        """A named interval set for these networks of one family (shared when the content repeats)."""
        return self.span_set(base, family, tuple((net.first, net.last) for net in nets if net.family == family))

    def span_set(self, base: str, family: int, spans: tuple[tuple[int, int], ...]) -> str:
        key = (family, spans)
        if key in self._set_by_content:
            return self._set_by_content[key]
        name = self._unique(f"{_ident(base)}_v{family}")
        self.out.sets[name] = SetSpec(name, "ipv4_addr" if family == 4 else "ipv6_addr", ("interval",), elements=spans)
        self._set_by_content[key] = name
        return name

    def _unique(self, name: str) -> str:
        candidate, number = name, 2
        while candidate in self.out.sets:
            candidate = f"{name}_{number}"
            number += 1
        return candidate

    # chains ---------------------------------------------------------------------------------------

    def compile(self) -> Ruleset:
        defaults = self.policy.defaults
        inbound_policy = "accept" if defaults.inbound == "accept" else "drop"
        self.out.chains["input"] = ChainSpec("input", "input", 0, inbound_policy)
        self._input()
        if defaults.outbound != "accept" or self.policy.outbound:
            self.out.chains["output"] = ChainSpec(
                "output", "output", 0, "accept" if defaults.outbound == "accept" else "drop"
            )
            self._output()
        if defaults.forward == "drop":
            # no rules: forwarding is refused; 'keep' and 'accept' leave it to others (Docker, libvirt)
            self.out.chains["forward"] = ChainSpec("forward", "forward", 0, "drop")
        return self.out

    def _rule(self, chain: str, comment: str | None, *expr: Json) -> None:
        self.out.rules.append(RuleSpec(chain, tuple(expr), comment))

    def _input(self) -> None:
        defaults = self.policy.defaults
        self._rule("input", "loopback", _match(_meta("iif"), "lo"), {"accept": None})
        for family in (4, 6):
            if self.loaded.block[family]:
                name = self.span_set("block", family, tuple(self.loaded.block[family]))
                verdict: list[Json] = [{"drop": None}]
                if defaults.log_denied:
                    self._rule(
                        "input", "block log", _match(_addr_payload(family, "saddr"), f"@{name}"), *self._log_denied()
                    )
                self._rule("input", "block", _match(_addr_payload(family, "saddr"), f"@{name}"), *verdict)
        self._rule("input", "established", _ct_state(["established", "related"]), {"accept": None})
        self._rule("input", "invalid", _ct_state(["invalid"]), {"drop": None})
        self._rule(
            "input", "icmp essential", _match(_payload("icmp", "type"), {"set": ICMP_ESSENTIAL}), {"accept": None}
        )
        self._rule(
            "input", "icmpv6 essential", _match(_payload("icmpv6", "type"), {"set": ICMPV6_ESSENTIAL}), {"accept": None}
        )
        self._watch_bans()
        if defaults.ping:
            for proto in ("icmp", "icmpv6"):
                self._rule(
                    "input",
                    f"{proto} echo",
                    _match(_payload(proto, "type"), "echo-request"),
                    _limit(*PING_LIMIT),
                    {"accept": None},
                )
        for door in self.policy.knock:
            self._knock_door(door)
        self._spa_doors()
        for rule in self.policy.inbound:
            self._traffic_rule("input", "inbound", rule, "saddr", "iifname")
        self._final("input", defaults.inbound, defaults.log_denied)

    # knock doors ----------------------------------------------------------------------------------

    def _knock_door(self, door: KnockDoor) -> None:
        """A knockd-style door evaluated by the kernel alone.

        Per family: stage sets S1..S(n-1) of sources that knocked the first k ports, and a grant set whose
        elements time out after `open_for`.  Every element is added from the packet path with the set's
        timeout, so no process has to stay alive to close the door.  S1 is added once (`add` never refreshes
        a timeout) and every later stage also requires S1: the whole sequence must fit in `seq_timeout`.
        A new packet from a source in progress that is neither the next knock nor a repeat of the current one
        deletes it from every stage, so a wrong order or a sequential sweep never opens anything.
        """
        is_any, nets = self.policy.resolve(door.from_)
        nets = tuple(net for net in merge(nets) if not is_loopback(net))
        knocks = [parse_port_spec(spec) for spec in door.sequence]
        opened = merge_ports(parse_port_spec(spec) for spec in door.open)
        base = f"knock_{_ident(door.name)}"
        iface: list[Json] = [_match(_meta("iifname"), door.interface)] if door.interface else []
        for family in (4, 6):
            source: list[Json] = []
            if not is_any:
                if not any(net.family == family for net in nets):
                    continue
                source = [_match(_addr_payload(family, "saddr"), f"@{self.address_set(base + '_from', family, nets)}")]
            saddr = _addr_payload(family, "saddr")
            stages = [f"{base}_s{k}_v{family}" for k in range(1, len(knocks))]
            grant = f"{base}_open_v{family}"
            for name, timeout in [*((stage, door.seq_timeout) for stage in stages), (grant, door.open_for)]:
                self.out.sets[name] = SetSpec(
                    name, "ipv4_addr" if family == 4 else "ipv6_addr", ("timeout",), timeout=timeout, size=DOOR_SIZE
                )
            chain = f"{base}_v{family}"
            self.out.chains[chain] = ChainSpec(chain)
            comment = f"knock {door.name}"
            for proto, spans in opened.items():
                self._rule(
                    "input", f"{comment} open", *iface, _match(saddr, f"@{grant}"),
                    _match(_payload(proto, "dport"), _ports_right(spans)), {"accept": None},
                )
            self._rule(
                "input", comment, *iface, *source, _match(_meta("nfproto"), "ipv4" if family == 4 else "ipv6"),
                _ct_state(["new"]), {"jump": {"target": chain}},
            )

            self._knock_chain(chain, comment, saddr, knocks, stages, grant)

    def _knock_chain(
        self, chain: str, comment: str, saddr: Json, knocks: list[PortRange], stages: list[str], grant: str
    ) -> None:
        def member(name: str) -> Json:
            return _match(saddr, f"@{name}")

        def knock(index: int) -> list[Json]:
            spec = knocks[index]
            out = [_match(_payload(spec.proto, "dport"), spec.first)]
            if spec.proto == "tcp":  # only a connection's first SYN is a knock (knockd's tcpflags = syn)
                out.append(_match({"&": [_payload("tcp", "flags"), ["fin", "syn", "rst", "ack"]]}, "syn"))
            return out

        def dynset(op: str, name: str) -> Json:
            return {"set": {"op": op, "elem": saddr, "set": f"@{name}"}}

        reset = [dynset("delete", name) for name in stages]
        for k in range(len(stages), 0, -1):  # deepest stage first: one packet advances one stage
            within = [member(stages[0])] + ([member(stages[k - 1])] if k > 1 else [])
            advance = [dynset("update", grant), *reset] if k == len(stages) else [dynset("add", stages[k])]
            self._rule(chain, f"{comment} stage {k + 1}", *within, *knock(k), *advance, {"return": None})
            self._rule(chain, f"{comment} repeat {k}", *within, *knock(k - 1), {"return": None})
            self._rule(chain, f"{comment} wrong {k}", member(stages[k - 1]), *reset)
        first = [dynset("add", stages[0])] if stages else [dynset("update", grant)]
        self._rule(chain, f"{comment} stage 1", *knock(0), *first, {"return": None})

    # SPA doors -----------------------------------------------------------------------------------

    def _spa_doors(self) -> None:
        """fwknop-style doors: the kernel keeps the grants, `portward spad` only adds them.

        Per door and family a set of (source . protocol . port) with `flags timeout`: spad adds exactly
        what a valid packet asked for (and the door's `open` allows), with the timeout the packet earned;
        the kernel deletes it when that runs out, whether or not spad is still alive.  SPA packets are
        copied to NFLOG group 7603 and dropped in the kernel, so the SPA port never answers anyone (no
        reply, no ICMP) and senders outside every door's `from` never reach user space at all.
        """
        if not self.policy.spa:
            return
        by_port: dict[tuple[str, int], list[SpaDoor]] = {}
        for door in self.policy.spa:
            spec = parse_port_spec(door.port)
            by_port.setdefault((spec.proto, spec.first), []).append(door)
            for family in (4, 6):
                grant = spa_grant_set(door.name, family)
                kind = ("ipv4_addr" if family == 4 else "ipv6_addr", "inet_proto", "inet_service")
                self.out.sets[grant] = SetSpec(grant, kind, ("timeout",), timeout=door.open_for, size=DOOR_SIZE)
                key = {"concat": [_addr_payload(family, "saddr"), _meta("l4proto"), _payload("th", "dport")]}
                self._rule("input", f"spa {door.name} open", _match(key, f"@{grant}"), {"accept": None})
        for (proto, port), doors in by_port.items():
            names = ", ".join(door.name for door in doors)
            dport = _match(_payload(proto, "dport"), port)
            log = {"log": {"prefix": SPA_LOG_PREFIX, "group": NFLOG_GROUP_SPA}}
            # only what could be an SPA packet reaches spad, and no one sender can fill its queue: a flood from
            # one address is dropped here, so a real client's packet does not wait behind it
            self._rule("input", f"spa {names} size", dport, _match(_payload("udp", "length"),
                       {"range": [SPA_MIN_UDP, SPA_MAX_UDP]}, "!="), {"drop": None})
            for family in (4, 6):
                meter = f"spa_{port}_rate_v{family}"
                self.out.sets[meter] = SetSpec(meter, "ipv4_addr" if family == 4 else "ipv6_addr", ("timeout",),
                                               timeout=60, size=METER_SIZE)
                update = {"set": {"op": "update", "elem": _addr_payload(family, "saddr"), "set": f"@{meter}",
                                  "stmt": [_limit(SPA_RATE, "second", SPA_BURST, inv=True)]}}
                self._rule("input", f"spa {names} rate", dport, update, {"drop": None})
            senders: list[Net] = []
            everyone = False
            for door in doors:
                is_any, nets = self.policy.resolve(door.from_)
                everyone = everyone or is_any
                senders += nets
            if everyone:
                self._rule("input", f"spa {names} packet", dport, log, {"drop": None})
                continue
            merged = tuple(net for net in merge(senders) if not is_loopback(net))
            for family in (4, 6):
                if any(net.family == family for net in merged):
                    name = self.address_set(f"spa_{port}_from", family, merged)
                    source = _match(_addr_payload(family, "saddr"), f"@{name}")
                    self._rule("input", f"spa {names} packet", source, dport, log, {"drop": None})
            self._rule("input", f"spa {names} silent", dport, {"drop": None})

    def _output(self) -> None:
        defaults = self.policy.defaults
        self._rule("output", "loopback", _match(_meta("oif"), "lo"), {"accept": None})
        self._rule("output", "established", _ct_state(["established", "related"]), {"accept": None})
        if defaults.outbound != "accept":
            self._rule(
                "output", "icmp essential", _match(_payload("icmp", "type"), {"set": ICMP_ESSENTIAL}), {"accept": None}
            )
            self._rule(
                "output",
                "icmpv6 essential",
                _match(_payload("icmpv6", "type"), {"set": ICMPV6_ESSENTIAL}),
                {"accept": None},
            )
            if defaults.ping:
                for proto in ("icmp", "icmpv6"):
                    self._rule(
                        "output", f"{proto} echo", _match(_payload(proto, "type"), "echo-request"), {"accept": None}
                    )
        for rule in self.policy.outbound:
            self._traffic_rule("output", "outbound", rule, "daddr", "oifname")
        self._final("output", defaults.outbound, False)

    def _log_denied(self, prefix: str = DENIED_LOG_PREFIX) -> list[Json]:
        # the kernel rate limit keeps a flood from reaching user space at line rate
        return [_limit(*DENIED_LOG_LIMIT), {"log": {"prefix": prefix, "group": NFLOG_GROUP_DENIED}}]

    def _final(self, chain: str, verdict: str, log_denied: bool) -> None:
        if verdict == "accept":
            return
        if chain == "input" and watching(self.policy):
            self._watch_scans()
        if log_denied:
            self._rule(chain, "log denied", *self._log_denied())
        if verdict == "reject":
            self._rule(chain, "reject", _match(_meta("l4proto"), "tcp"), {"reject": {"type": "tcp reset"}})
            self._rule(chain, "reject", {"reject": {"type": "icmpx", "expr": "port-unreachable"}})

    # watch: scans and bans --------------------------------------------------------------------------

    def _watch_bans(self) -> None:
        """Drop every new packet from a banned source, before anything that could accept it.

        After `established` on purpose: a ban stops new connections (allowed ports included, knock and SPA
        doors too) but leaves running ones alone, so a forged sweep in a peer's name cannot cut that peer's
        sessions, and an operator who scans the host from their ssh session keeps the session. After the
        essential ICMP as well: neighbour discovery with a banned host must go on for those sessions.
        """
        if not watching(self.policy):
            if "watch" in self.policy.model_fields_set:
                why = "log_denied is off" if not self.policy.defaults.log_denied else "inbound = accept denies nothing"
                self.out.notes.append(f"[watch]: no scan detection or bans ({why})")
            return
        if self.policy.watch.ban_for == 0:
            return
        for family in (4, 6):
            name = self._watch_set("ban", family, self.policy.watch.ban_for)
            self._rule("input", "watch ban", _match(_addr_payload(family, "saddr"), f"@{name}"), {"drop": None})

    def _watch_scans(self) -> None:
        """Count, per source, the distinct ports its denied packets touch; at `scan_ports`, ban it at once.

        Per family, one rule at the end of input (only denied packets get there):
        - `watch_seen_vN` (source . protocol . port, timeout scan_window): a port counts once per window,
          so retransmissions and a client retrying one closed port never add up;
        - `watch_scan_vN` (source, timeout scan_window, elements added and never refreshed): each element
          carries its own packet limit of scan_ports - 1 that does not refill within the window, so the
          scan_ports-th distinct port within scan_window of the first one is "over" -- that packet itself;
        - `watch_ban_vN` (timeout ban_for) gets the source, and the packet is logged with the prefix
          "portward ban " (alert only, ban_for = 0: `watch_alert_vN` with timeout scan_window, prefix
          "portward scan "), once: the ban rule drops the source from then on, the alert set is checked.
        The window is fixed from the first counted port, not sliding. Only TCP, UDP and SCTP packets to one of
        this host's own addresses count (not broadcast or multicast chatter), and not the knock doors' ports:
        a knock sequence is not a scan. Every set is bounded (WATCH_SIZE); when one is full, new sources are
        not counted (nor banned) until elements expire, and nothing else is affected.
        """
        watch = self.policy.watch
        knock_ports = sorted({(spec.proto, spec.first) for door in self.policy.knock
                              for spec in map(parse_port_spec, door.sequence)})
        verdict_set, prefix = ("ban", BAN_LOG_PREFIX) if watch.ban_for else ("alert", SCAN_LOG_PREFIX)
        limit = _scan_limit(watch.scan_ports, watch.scan_window)
        head: list[Json] = [
            _match(_meta("l4proto"), {"set": list(WATCH_PROTOCOLS)}),
            _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
        ]
        if knock_ports:
            doors = [{"concat": [proto, port]} for proto, port in knock_ports]
            head.append(_match({"concat": [_meta("l4proto"), _payload("th", "dport")]}, {"set": doors}, "!="))
        for family in (4, 6):
            saddr = _addr_payload(family, "saddr")
            key = {"concat": [saddr, _meta("l4proto"), _payload("th", "dport")]}
            seen = self._watch_set("seen", family, watch.scan_window)
            scan = self._watch_set("scan", family, watch.scan_window)
            verdict = self._watch_set(verdict_set, family, watch.ban_for or watch.scan_window)
            self._rule(
                "input", "watch scan", *head,
                _match(key, f"@{seen}", "!="),
                {"set": {"op": "add", "elem": key, "set": f"@{seen}"}},
                {"set": {"op": "add", "elem": saddr, "set": f"@{scan}", "stmt": [limit]}},
                _match(saddr, f"@{verdict}", "!="),
                {"set": {"op": "add", "elem": saddr, "set": f"@{verdict}"}},
                *self._log_denied(prefix),
            )

    def _watch_set(self, kind: str, family: int, timeout: int) -> str:
        name = watch_set(kind, family)
        address = "ipv4_addr" if family == 4 else "ipv6_addr"
        key: str | tuple[str, ...] = (address, "inet_proto", "inet_service") if kind == "seen" else address
        self.out.sets[name] = SetSpec(name, key, ("timeout",), timeout=timeout, size=WATCH_SIZE)
        return name

    def _traffic_rule(
        self, chain: str, section: str, rule: InboundRule | OutboundRule, direction: str, iface_key: str
    ) -> None:
        is_any, nets = self.policy.resolve(rule.sources)
        # loopback is admitted before any rule, so 'localhost' needs no addresses in a set
        nets = tuple(net for net in merge(nets) if not is_loopback(net))
        comment = f"{section} {rule.name}"
        if not is_any and not nets:
            self.out.notes.append(f"{section} {rule.name!r}: only localhost, which is always admitted")
            return
        matches_by_family: list[tuple[int | None, list[Json]]] = []
        if is_any:
            matches_by_family.append((None, []))
        else:
            for family in (4, 6):
                if any(net.family == family for net in nets):
                    name = self.address_set(self._set_base(section, rule), family, nets)
                    matches_by_family.append((family, [_match(_addr_payload(family, direction), f"@{name}")]))
        iface: list[Json] = [_match(_meta(iface_key), rule.interface)] if rule.interface else []
        ports = merge_ports(_port_ranges(rule.ports)) if rule.ports is not None else None
        for rule_family, address_match in matches_by_family:
            protos: list[tuple[str | None, list[Json]]]
            if ports is None:
                protos = [(None, [])]
            else:
                protos = [
                    (proto, [_match(_payload(proto, "dport"), _ports_right(spans))]) for proto, spans in ports.items()
                ]
            for proto, port_match in protos:
                head = [*iface, *address_match, *port_match]
                if rule.rate:
                    head_meter = self._meter(section, rule, rule_family, direction)
                    for meter_family, meter_name in head_meter:
                        # no explicit `meta nfproto`: nft adds it as the dependency of `ip saddr` in
                        # the update statement, and lists the rule without it
                        from portward.policy.model import rate_parts

                        count, unit, burst = rate_parts(rule.rate)
                        self._rule(
                            chain,
                            f"{comment} rate",
                            *head,
                            _ct_state(["new"]),
                            {
                                "set": {
                                    "op": "update",
                                    "elem": _addr_payload(meter_family, direction),
                                    "set": f"@{meter_name}",
                                    "stmt": [_limit(count, unit, burst, inv=True)],
                                }
                            },
                            {"drop": None},
                        )
                self._rule(chain, comment, *head, *_verdict(rule.action, proto))

    def _set_base(self, section: str, rule: InboundRule | OutboundRule) -> str:
        """Name a rule's address set after its zone when that is all it lists (others then share it)."""
        named = [source for source in rule.sources if source != "localhost"]
        if len(named) == 1 and named[0] in self.policy.zones:
            return f"zone_{named[0]}"
        return f"{section[:3]}_{rule.name}"

    def _meter(
        self, section: str, rule: InboundRule | OutboundRule, family: int | None, direction: str
    ) -> list[tuple[int, str]]:
        assert rule.rate is not None
        from portward.policy.model import rate_parts

        _count, unit, _burst = rate_parts(rule.rate)
        timeout = max(60, RATE_SECONDS[unit])
        out = []
        for meter_family in (4, 6) if family is None else (family,):
            name = f"rate_{_ident(section[:3] + '_' + rule.name)}_v{meter_family}"
            if name not in self.out.sets:
                self.out.sets[name] = SetSpec(
                    name,
                    "ipv4_addr" if meter_family == 4 else "ipv6_addr",
                    ("timeout",),
                    timeout=timeout,
                    size=METER_SIZE,
                )
            out.append((meter_family, name))
        return out


def _port_ranges(specs: list[str] | None) -> list[Any]:
    from portward.policy.addresses import parse_port_spec

    return [parse_port_spec(spec) for spec in specs or []]


def watching(policy: Policy) -> bool:
    """Scan detection and bans are compiled when the policy has a `[watch]` table, logs denied packets, and
    denies something by default. Without `[watch]`, log_denied only logs: bans are never a surprise."""
    return (
        policy.defaults.log_denied and "watch" in policy.model_fields_set and policy.defaults.inbound != "accept"
    )


def watch_set(kind: str, family: int) -> str:
    """`watch_seen_vN`, `watch_scan_vN`, `watch_ban_vN` or `watch_alert_vN` (status lists the ban sets)."""
    return f"watch_{kind}_v{family}"


def _scan_limit(scan_ports: int, scan_window: int) -> Json:
    """A limit that holds scan_ports - 1 packets and refills less than one packet within scan_window.

    The kernel's bucket holds `burst` packets of 1/rate each and starts full; 1/day refills a packet a day,
    1/week for windows of a day and more (its bucket overflows 64 bits above ~30,000 packets: then 1/day)."""
    burst = scan_ports - 1
    per = "week" if scan_window >= 86400 and burst <= 30000 else "day"
    return _limit(1, per, burst, inv=True)


def spa_grant_set(door: str, family: int) -> str:
    """The set `portward spad` adds a door's grants to (source . proto . port, with timeouts)."""
    return f"spa_{_ident(door)}_open_v{family}"


def _ident(text: str) -> str:
    return "".join(char if char.isalnum() or char == "_" else "_" for char in text)


def compile_policy(loaded: LoadedPolicy) -> Ruleset:
    return Compiler(loaded).compile()


# ------------------------------------------------------------------------------------- nft text


def render_text(ruleset: Ruleset) -> str:
    """The ruleset as an `nft -f` script (export --format nft). Replaces only table inet portward."""
    lines = [
        "#!/usr/sbin/nft -f",
        "# generated by portward: replaces table inet portward only",
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
    ]
    for spec in ruleset.sets.values():
        kind = " . ".join(spec.type) if isinstance(spec.type, tuple) else spec.type
        lines.append(f"\tset {spec.name} {{")
        lines.append(f"\t\ttype {kind}")
        if spec.flags:
            lines.append(f"\t\tflags {','.join(spec.flags)}")
        if spec.timeout is not None:
            lines.append(f"\t\ttimeout {spec.timeout}s")
        if spec.size is not None:
            lines.append(f"\t\tsize {spec.size}")
        if spec.elements:
            items = [_element_text(spec.family, first, last) for first, last in spec.elements]
            lines.append("\t\telements = { " + ",\n\t\t\t".join(items) + " }")
        lines.append("\t}")
    for chain in ruleset.chains.values():
        lines.append(f"\tchain {chain.name} {{")
        if chain.hook:
            lines.append(f"\t\ttype {chain.type} hook {chain.hook} priority {chain.prio}; policy {chain.policy};")
        for rule in ruleset.rules_of(chain.name):
            text = " ".join(_expr_text(expr) for expr in rule.expr)
            if rule.comment:
                text += f' comment "{rule.comment}"'
            lines.append(f"\t\t{text}")
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _element_text(family: int, first: int, last: int) -> str:
    value = interval_json(family, first, last)
    if isinstance(value, str):
        return value
    if "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    return f"{value['range'][0]}-{value['range'][1]}"


def _value_text(value: Any) -> str:
    if isinstance(value, dict):
        if "set" in value:
            return "{ " + ", ".join(_value_text(item) for item in value["set"]) + " }"
        if "range" in value:
            return f"{_value_text(value['range'][0])}-{_value_text(value['range'][1])}"
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "payload" in value:
            return f"{value['payload']['protocol']} {value['payload']['field']}"
        if "meta" in value:
            return f"meta {value['meta']['key']}"
        if "ct" in value:
            return f"ct {value['ct']['key']}"
        if "fib" in value:
            return f"fib {' . '.join(value['fib']['flags'])} {value['fib']['result']}"
        if "concat" in value:
            return " . ".join(_value_text(item) for item in value["concat"])
        if "&" in value:
            base, mask = value["&"]
            return f"{_value_text(base)} & ({'|'.join(mask) if isinstance(mask, list) else mask})"
    if isinstance(value, list):
        return ",".join(_value_text(item) for item in value)
    return str(value)


def _expr_text(expr: Json) -> str:
    if "match" in expr:
        match = expr["match"]
        left, right, op = match["left"], match["right"], match["op"]
        operator = "" if op in ("==", "in") else f"{op} "
        quoted = isinstance(left, dict) and left.get("meta", {}).get("key") in ("iifname", "oifname", "iif", "oif")
        right_text = f'"{right}"' if quoted else _value_text(right)
        return f"{_value_text(left)} {operator}{right_text}"
    if "limit" in expr:
        limit = expr["limit"]
        over = "over " if limit.get("inv") else ""
        return f"limit rate {over}{limit['rate']}/{limit['per']} burst {limit['burst']} packets"
    if "log" in expr:
        return f'log prefix "{expr["log"]["prefix"]}" group {expr["log"]["group"]}'
    if "reject" in expr:
        reject = expr["reject"]
        return "reject with tcp reset" if reject.get("type") == "tcp reset" else f"reject with icmpx {reject['expr']}"
    if "set" in expr:
        update = expr["set"]
        inner = "".join(" " + _expr_text(stmt) for stmt in update.get("stmt", []))
        return f"{update['op']} {update['set']} {{ {_value_text(update['elem'])}{inner} }}"
    if "jump" in expr or "goto" in expr:
        (verdict,) = expr.keys()
        return f"{verdict} {expr[verdict]['target']}"
    (verdict,) = expr.keys()
    return str(verdict)


def export(loaded: LoadedPolicy, policy_path: str, root: Path) -> Rendered:
    """`export --format nft`: the ruleset `apply` loads, as a script for `nft -f`."""
    return Rendered({"etc/portward/portward.nft": render_text(compile_policy(loaded))}, stream=True)
