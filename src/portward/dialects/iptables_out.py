"""The iptables dialect, writer side: Policy -> `iptables-restore` / `ip6tables-restore` input.

`export --format iptables` writes `etc/iptables/rules.v4` and `--format ip6tables` `etc/iptables/rules.v6`,
the files iptables-persistent (netfilter-persistent) restores at boot.  Each one gives, for its family, the
same verdicts as the ruleset `portward apply` loads (dialects/nft.py, `Compiler`, is the reference; the
rules come in the same order and under the same comments).  tests/dialects/test_iptables_export.py loads
both into a namespace and probes them from the LAN and the WAN side.

Why the file owns the filter table: iptables-restore without `--noflush` replaces every table a file names,
so restoring it twice gives the same table, as a person restoring rules.v4 expects.  A file of jumps into
user chains would need `--noflush`, and then every restore would append the jump again.  So INPUT, FORWARD
and OUTPUT carry the policy's defaults as chain policies (`:INPUT DROP`, as seed 004 writes them) and the
rules themselves; user chains only hold what iptables cannot say in one rule (block + log, knock doors).
Other tables (nat, mangle, raw: Docker's NAT, for one) and nftables tables are left alone.

Translation:
- address lists -> `-s a,b,c` (iptables adds one rule per address, each as cheap as a set member test
  would be for a short list); a range that is not a few CIDRs -> `-m iprange`.  No ipset: a block list of
  thousands of entries is thousands of rules, which works but is slow (a note says so).
- port lists -> `--dport` or `-m multiport --dports` (15 slots per match, a range takes two: split).
- `rate` -> `-m hashlimit --hashlimit-above` keyed like the nft meter (source inbound, destination
  outbound), one hash table per rule and family, same burst, expiry and size.
- `log_denied` -> `-j NFLOG --nflog-group 7601 --nflog-prefix "portward denied "` behind the same limit,
  so `portward watch` reads the same events.
- reject -> `REJECT --reject-with tcp-reset` for TCP rules, ICMP(v6) port-unreachable otherwise.
- knock doors -> `-m recent` lists named like the nft sets: the same stages, repeats, resets and grant,
  with `--rcheck --seconds` as the set timeouts; nft's non-refreshing `add` is `! --rcheck` then `--set`.
- SPA doors need `portward spad`, which adds grants to nft sets: only the SPA port's silent drop is kept.
  `[watch]` scan detection and bans are nft sets too: noted, not translated.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from portward.dialects import Rendered
from portward.dialects.nft import (
    DENIED_LOG_LIMIT,
    DENIED_LOG_PREFIX,
    DOOR_SIZE,
    ICMP_ESSENTIAL,
    ICMPV6_ESSENTIAL,
    METER_SIZE,
    NFLOG_GROUP_DENIED,
    PING_LIMIT,
    RATE_SECONDS,
    _ident,
)
from portward.policy.addresses import (
    Net,
    PortRange,
    format_address,
    format_interval,
    is_loopback,
    merge,
    merge_ports,
    parse_port_spec,
    prefix_length,
    to_cidrs,
)
from portward.policy.model import rate_parts

if TYPE_CHECKING:
    from portward.policy.model import InboundRule, KnockDoor, OutboundRule, Policy
    from portward.policy.toml import LoadedPolicy

FILES = {4: "etc/iptables/rules.v4", 6: "etc/iptables/rules.v6"}
TOOLS = {4: "iptables-restore", 6: "ip6tables-restore"}
MULTIPORT_SLOTS = 15  # xt_multiport: at most 15 ports, a range counts as two
CIDRS_PER_RANGE = 4  # a merged range that needs more CIDRs than this becomes one -m iprange match
LIST_CHARS = 1000  # one `-s a,b,...` argument; iptables-restore reads lines into a 10 KiB buffer
CHAIN_CHARS = 28  # iptables chain names: up to 28 characters
HASHLIMIT_CHARS = 15  # xt_hashlimit table names: up to 15 characters
HASHLIMIT_SCALE = 1_000_000  # xt_hashlimit counts the interval between packets in microseconds
HASHLIMIT_BURST_MAX = 1_000_000  # libxt_hashlimit refuses a larger --hashlimit-burst
LARGE_LIST = 1000  # sources from which a note recommends nft's interval sets
RECENT_DEFAULT_SIZE = 100  # xt_recent's ip_list_tot: addresses per list unless the module is loaded otherwise
BLOCK_CHAIN = "portward-block"

ICMP_PROTO = {4: "icmp", 6: "ipv6-icmp"}
ICMP_OPTION = {4: "--icmp-type", 6: "--icmpv6-type"}
REJECT_ICMP = {4: "icmp-port-unreachable", 6: "icmp6-port-unreachable"}
# nft's ICMPv6 names -> ip6tables' (the MLD types have no name in ip6tables: numbers)
ICMPV6_NAMES = {
    "destination-unreachable": "destination-unreachable",
    "packet-too-big": "packet-too-big",
    "time-exceeded": "time-exceeded",
    "parameter-problem": "parameter-problem",
    "nd-router-solicit": "router-solicitation",
    "nd-router-advert": "router-advertisement",
    "nd-neighbor-solicit": "neighbour-solicitation",
    "nd-neighbor-advert": "neighbour-advertisement",
    "mld-listener-query": "130",
    "mld-listener-report": "131",
    "mld2-listener-report": "143",
    "echo-request": "echo-request",
}
TARGETS = {"accept": "ACCEPT", "drop": "DROP"}

Args = list[str]


@dataclass
class Script:
    """One family's filter table: built-in chain policies, user chains, and rules in order."""

    family: int
    policies: dict[str, str | None] = field(default_factory=dict)  # None: chain left as it is
    chains: list[str] = field(default_factory=list)
    rules: list[tuple[str, Args]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self, source: str) -> str:
        name = Path(FILES[self.family]).name
        lines = [
            f"# {name}: written by portward from {source}",
            f"# `{TOOLS[self.family]} < {name}` replaces the whole filter table, as netfilter-persistent does at",
            "# boot; the nat, mangle and raw tables and nftables' own tables are left alone.",
            *(f"# note: {note}" for note in self.notes),
            "*filter",
        ]
        lines += [f":{chain} {policy} [0:0]" for chain, policy in self.policies.items() if policy]
        lines += [f":{chain} - [0:0]" for chain in self.chains]
        for name in [*self.policies, *self.chains]:  # grouped by chain, built-in chains first
            lines += [" ".join(["-A", chain, *map(_quote, args)]) for chain, args in self.rules if chain == name]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def _quote(arg: str) -> str:
    """iptables-restore splits on blanks but keeps a double-quoted argument whole (comments, log prefixes)."""
    if arg and not any(char in arg for char in ' \t"\\'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------- matches


def address_matches(nets: Iterable[Net], family: int, direction: str) -> list[Args]:
    """Alternatives (one rule each) matching these networks of one family; `direction` is src or dst.

    CIDRs go into comma lists, which iptables itself splits into one rule per address; a range that is
    not a CIDR becomes CIDRs unless that takes more than a few, then `-m iprange`.
    """
    cidrs: list[str] = []
    ranges: list[Args] = []
    for net in nets:
        if net.family != family:
            continue
        if prefix_length(family, net.first, net.last) is not None:
            cidrs.append(format_interval(family, net.first, net.last))
            continue
        parts = list(to_cidrs(net))
        if len(parts) <= CIDRS_PER_RANGE:
            cidrs.extend(_short_cidr(part) for part in parts)
        else:
            span = f"{format_address(family, net.first)}-{format_address(family, net.last)}"
            ranges.append(["-m", "iprange", f"--{direction}-range", span])
    flag = "-s" if direction == "src" else "-d"
    return [[flag, ",".join(chunk)] for chunk in _chunks(cidrs)] + ranges


def _short_cidr(cidr: str) -> str:
    """'198.18.0.1/32' -> '198.18.0.1', as format_interval writes single addresses."""
    address, _slash, length = cidr.partition("/")
    return address if length in ("32", "128") and (":" in address) == (length == "128") else cidr


def rules_for(matches: list[Args]) -> int:
    """How many rules iptables makes of these alternatives (it splits `-s a,b,c` into one per address)."""
    return sum(len(match[1].split(",")) if match and match[0] in ("-s", "-d") else 1 for match in matches)


def _chunks(items: list[str]) -> list[list[str]]:
    """Comma lists short enough for one iptables-restore line."""
    out: list[list[str]] = []
    size = LIST_CHARS + 1
    for item in items:
        if size + len(item) + 1 > LIST_CHARS:
            out.append([])
            size = 0
        out[-1].append(item)
        size += len(item) + 1
    return out


def _port_text(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}:{last}"


def port_matches(proto: str, spans: tuple[tuple[int, int], ...]) -> list[Args]:
    """Alternatives matching these destination ports: `--dport`, or multiport groups of at most 15 slots."""
    groups: list[list[tuple[int, int]]] = []
    used = MULTIPORT_SLOTS + 1
    for first, last in spans:
        cost = 1 if first == last else 2
        if used + cost > MULTIPORT_SLOTS:
            groups.append([])
            used = 0
        groups[-1].append((first, last))
        used += cost
    out: list[Args] = []
    for group in groups:
        texts = [_port_text(first, last) for first, last in group]
        if len(texts) == 1:
            out.append(["-p", proto, "--dport", texts[0]])
        else:
            out.append(["-p", proto, "-m", "multiport", "--dports", ",".join(texts)])
    return out


def _interface(flag: str, name: str | None) -> Args:
    """nft's `eth*` wildcard is iptables' `eth+`."""
    if not name:
        return []
    return [flag, name[:-1] + "+" if name.endswith("*") else name]


def _comment(text: str) -> Args:
    return ["-m", "comment", "--comment", text]


def _ct_state(states: str) -> Args:
    return ["-m", "conntrack", "--ctstate", states]


def _reject(family: int, proto: str | None) -> Args:
    if proto == "tcp":
        return ["-j", "REJECT", "--reject-with", "tcp-reset"]
    return ["-j", "REJECT", "--reject-with", REJECT_ICMP[family]]


def _verdict(family: int, action: str, proto: str | None) -> Args:
    # like nft's _verdict: a ports-less reject rule answers every protocol with port-unreachable
    return _reject(family, proto) if action == "reject" else ["-j", TARGETS[action]]


def _icmp(family: int, nft_type: str) -> Args:
    name = nft_type if family == 4 else ICMPV6_NAMES[nft_type]
    return ["-p", ICMP_PROTO[family], ICMP_OPTION[family], name]


def _log_denied() -> Args:
    # the same limit as nft's: a flood cannot reach user space at line rate
    return [
        *_limit(DENIED_LOG_LIMIT),
        "-j", "NFLOG", "--nflog-group", str(NFLOG_GROUP_DENIED), "--nflog-prefix", DENIED_LOG_PREFIX,
    ]  # fmt: skip


def _limit(limit: tuple[int, str, int]) -> Args:
    """`-m limit` for one of the nft compile's (rate, per, burst) limits."""
    rate, per, burst = limit
    return ["-m", "limit", "--limit", f"{rate}/{per}", "--limit-burst", str(burst)]


def _recent(name: str, *options: str) -> Args:
    return ["-m", "recent", "--name", name, *options]


def _unique(name: str, taken: set[str], limit: int) -> str:
    """`name` cut to `limit` characters, with a number instead of its tail when that is taken."""
    candidate, number = name[:limit], 2
    while candidate in taken:
        suffix = f"-{number}"
        candidate = name[: limit - len(suffix)] + suffix
        number += 1
    taken.add(candidate)
    return candidate


# --------------------------------------------------------------------------------------- compiler


class Compiler:
    """Builds one family's Script for one policy, walking it as nft.Compiler does."""

    def __init__(self, loaded: LoadedPolicy, family: int) -> None:
        self.loaded = loaded
        self.policy: Policy = loaded.policy
        self.family = family
        self.out = Script(family)
        self._chain_names: set[str] = {"INPUT", "FORWARD", "OUTPUT"}
        self._hashlimit_names: set[str] = set()

    def compile(self) -> Script:
        defaults = self.policy.defaults
        self.out.policies["INPUT"] = "ACCEPT" if defaults.inbound == "accept" else "DROP"
        self.out.policies["FORWARD"] = None if defaults.forward == "keep" else defaults.forward.upper()
        self.out.policies["OUTPUT"] = "ACCEPT" if defaults.outbound == "accept" else "DROP"
        self._input()
        if defaults.outbound != "accept" or self.policy.outbound:
            self._output()
        self._general_notes()
        return self.out

    def _rule(self, chain: str, comment: str | None, *parts: Args) -> None:
        args = [arg for part in parts for arg in part]
        if comment:
            # the comment goes before the target, where iptables-save prints it
            at = args.index("-j") if "-j" in args else args.index("-g") if "-g" in args else len(args)
            args[at:at] = _comment(comment)
        self.out.rules.append((chain, args))

    def _chain(self, base: str, suffix: str = "") -> str:
        """A user chain named `base` + `suffix`, `base` cut so that the whole fits iptables' limit."""
        name = _unique(base[: CHAIN_CHARS - len(suffix)] + suffix, self._chain_names, CHAIN_CHARS)
        self.out.chains.append(name)
        return name

    def _nets(self, sources: list[str]) -> tuple[bool, tuple[Net, ...]]:
        """(any, this family's networks); loopback is admitted before any rule, so it is left out."""
        is_any, nets = self.policy.resolve(sources)
        return is_any, tuple(net for net in merge(nets) if not is_loopback(net) and net.family == self.family)

    # input --------------------------------------------------------------------------------------

    def _input(self) -> None:
        defaults = self.policy.defaults
        self._rule("INPUT", "loopback", ["-i", "lo", "-j", "ACCEPT"])
        self._block()
        self._rule("INPUT", "established", _ct_state("RELATED,ESTABLISHED"), ["-j", "ACCEPT"])
        self._rule("INPUT", "invalid", _ct_state("INVALID"), ["-j", "DROP"])
        proto = "icmp" if self.family == 4 else "icmpv6"
        for kind in ICMP_ESSENTIAL if self.family == 4 else ICMPV6_ESSENTIAL:
            self._rule("INPUT", f"{proto} essential", _icmp(self.family, kind), ["-j", "ACCEPT"])
        if defaults.ping:
            limit = _limit(PING_LIMIT)
            self._rule("INPUT", f"{proto} echo", _icmp(self.family, "echo-request"), limit, ["-j", "ACCEPT"])
        for door in self.policy.knock:
            self._knock_door(door)
        self._spa_doors()
        for rule in self.policy.inbound:
            self._traffic_rule("INPUT", "inbound", rule, "src", "-i")
        self._final("INPUT", defaults.inbound, defaults.log_denied)

    def _block(self) -> None:
        spans = self.loaded.block[self.family]
        if not spans:
            return
        target = ["-j", "DROP"]
        if self.policy.defaults.log_denied:
            # one chain, so one limit for all blocked sources, as nft's single rule on the set
            chain = self._chain(BLOCK_CHAIN)
            self._rule(chain, "block log", _log_denied())
            self._rule(chain, "block", ["-j", "DROP"])
            target = ["-j", chain]
        matches = address_matches((Net(self.family, a, b) for a, b in spans), self.family, "src")
        for match in matches:
            self._rule("INPUT", "block", match, target)
        self._note_size("[block]", rules_for(matches))

    def _note_size(self, what: str, rules: int) -> None:
        if rules > LARGE_LIST:
            self.out.notes.append(
                f"{what} becomes {rules} rules (iptables has no sets without ipset): packets are checked against "
                "them one by one and loading them takes long; it works, but `portward apply` keeps the addresses "
                "in one nft interval set"
            )

    def _final(self, chain: str, verdict: str, log_denied: bool) -> None:
        if verdict == "accept":
            return
        if log_denied:
            self._rule(chain, "log denied", _log_denied())
        if verdict == "reject":
            self._rule(chain, "reject", ["-p", "tcp"], _reject(self.family, "tcp"))
            self._rule(chain, "reject", _reject(self.family, None))

    # inbound and outbound rules ---------------------------------------------------------------------

    def _traffic_rule(
        self, chain: str, section: str, rule: InboundRule | OutboundRule, direction: str, iface_flag: str
    ) -> None:
        is_any, all_nets = self.policy.resolve(rule.sources)
        if not is_any and all(is_loopback(net) for net in all_nets):
            self.out.notes.append(f"{section} {rule.name!r}: only localhost, which is always admitted")
            return
        is_any, nets = self._nets(rule.sources)
        if not is_any and not nets:
            return  # sources of the other family only
        addresses = [[]] if is_any else address_matches(nets, self.family, direction)
        iface = _interface(iface_flag, rule.interface)
        comment = f"{section} {rule.name}"
        limit = self._hashlimit(section, rule, direction) if rule.rate else None
        protos: list[tuple[str | None, list[Args]]] = [(None, [[]])]
        if rule.ports is not None:
            merged = merge_ports(parse_port_spec(spec) for spec in rule.ports)
            protos = [(proto, port_matches(proto, spans)) for proto, spans in merged.items()]
        self._note_size(f"{section} {rule.name!r}", rules_for(addresses) * sum(len(ports) for _p, ports in protos))
        for proto, ports in protos:
            for address in addresses:
                for port in ports:
                    if limit:
                        self._rule(chain, f"{comment} rate", iface, address, port, _ct_state("NEW"), limit)
                    self._rule(chain, comment, iface, address, port, _verdict(self.family, rule.action, proto))

    def _hashlimit(self, section: str, rule: InboundRule | OutboundRule, direction: str) -> Args:
        """nft's per-source meter (per destination outbound): same rate, burst, expiry and size.

        The table name carries a digest of its settings: xt_hashlimit keeps an existing table of the same
        name and family, settings and all, when a restore replaces the rules that use it.
        """
        assert rule.rate is not None
        count, unit, burst = self._hashlimit_rate(f"{section} {rule.name!r}", rule.rate)
        expire_ms = max(60, RATE_SECONDS[unit]) * 1000
        settings = f"{section} {rule.name} {count}/{unit} {burst} {direction} {expire_ms} {METER_SIZE}"
        digest = hashlib.sha256(settings.encode()).hexdigest()[:4]
        head = f"pw-{_ident(rule.name)}"[: HASHLIMIT_CHARS - 5]
        name = _unique(f"{head}-{digest}", self._hashlimit_names, HASHLIMIT_CHARS)
        return [
            "-m", "hashlimit", "--hashlimit-above", f"{count}/{unit}", "--hashlimit-burst", str(burst),
            "--hashlimit-mode", f"{direction}ip", "--hashlimit-name", name,
            "--hashlimit-htable-max", str(METER_SIZE), "--hashlimit-htable-expire", str(expire_ms),
            "-j", "DROP",
        ]  # fmt: skip

    def _hashlimit_rate(self, where: str, rate: str) -> tuple[int, str, int]:
        """The rate as hashlimit can hold it: at most 1000000/second, and a full bucket that refills in a day.

        xt_hashlimit keeps the interval between packets in microseconds (so 1000000/second is the fastest)
        and the bucket's size in 64-bit credits: interval × burst must stay under a day's worth or the
        kernel refuses the rule (or, past some HZ-dependent point, silently wraps around).
        """
        count, unit, burst = rate_parts(rate)
        seconds = RATE_SECONDS[unit]
        if count > HASHLIMIT_SCALE * seconds:
            self.out.notes.append(
                f"{where}: rate {rate!r} is faster than hashlimit can count (1000000/second): limited to that"
            )
            count, unit, seconds = HASHLIMIT_SCALE, "second", 1
        interval = HASHLIMIT_SCALE * seconds // count
        most = min(HASHLIMIT_BURST_MAX, HASHLIMIT_SCALE * RATE_SECONDS["day"] // interval)
        if burst > most:
            self.out.notes.append(
                f"{where}: rate {rate!r}: hashlimit cannot hold a burst of {burst} at that rate; burst {most} "
                "instead (the bucket must refill within a day, and hold at most 1000000)"
            )
            burst = most
        return count, unit, burst

    # knock doors --------------------------------------------------------------------------------------

    def _knock_door(self, door: KnockDoor) -> None:
        """nft's kernel door with xt_recent lists instead of timeout sets (see nft.Compiler._knock_door).

        A list named like the nft set holds each source with the time it was added; `--rcheck --seconds T`
        is membership in a set whose elements time out after T.  nft's `add` leaves a live element's
        timeout alone: `! --rcheck --seconds T` before `--set`.  Resetting every stage needs one
        `--remove` per rule (a match that removes nothing stops the rule), so it is a chain of its own.
        """
        is_any, nets = self._nets(door.from_)
        if not is_any and not nets:
            return
        family = self.family
        base = f"knock_{_ident(door.name)}"
        knocks = [parse_port_spec(spec) for spec in door.sequence]
        stages = [f"{base}_s{k}_v{family}" for k in range(1, len(knocks))]
        grant = f"{base}_open_v{family}"
        comment = f"knock {door.name}"
        iface = _interface("-i", door.interface)
        chain = self._chain(f"portward-knock-{door.name}")
        reset = self._chain(chain, "-reset") if stages else None
        opened = self._chain(chain, "-open")
        for proto, spans in merge_ports(parse_port_spec(spec) for spec in door.open).items():
            for port in port_matches(proto, spans):
                granted = _recent(grant, "--rcheck", "--seconds", str(door.open_for))
                self._rule("INPUT", f"{comment} open", iface, granted, port, ["-j", "ACCEPT"])
        for address in [[]] if is_any else address_matches(nets, family, "src"):
            self._rule("INPUT", comment, iface, address, _ct_state("NEW"), ["-j", chain])
        # the grant: refresh it, forget the stages, and (reached by -g) go back to INPUT
        self._rule(opened, f"{comment} grant", _recent(grant, "--set"))
        if reset:
            self._rule(opened, f"{comment} grant", ["-j", reset])
            for stage in stages:
                self._rule(reset, f"{comment} reset", _recent(stage, "--remove"))
        self._knock_chain(chain, comment, knocks, stages, door.seq_timeout, reset, opened)

    def _knock_chain(
        self,
        chain: str,
        comment: str,
        knocks: list[PortRange],
        stages: list[str],
        seq_timeout: int,
        reset: str | None,
        opened: str,
    ) -> None:
        seconds = str(seq_timeout)

        def member(name: str) -> Args:
            return _recent(name, "--rcheck", "--seconds", seconds)

        def knock(index: int) -> Args:
            spec = knocks[index]
            out = ["-p", spec.proto, "--dport", str(spec.first)]
            if spec.proto == "tcp":  # only a connection's first SYN is a knock (knockd's tcpflags = syn)
                out += ["--tcp-flags", "FIN,SYN,RST,ACK", "SYN"]
            return out

        def add(label: str, within: list[Args], stage: str) -> None:
            """nft `add @stage` + return: set only when not a live member, return either way."""
            fresh = [*_recent(stage, "!", "--rcheck", "--seconds", seconds), *_recent(stage, "--set")]
            self._rule(chain, label, *within, fresh, ["-j", "RETURN"])
            self._rule(chain, label, *within, ["-j", "RETURN"])

        for k in range(len(stages), 0, -1):  # deepest stage first: one packet advances one stage
            within = [member(stages[0])] + ([member(stages[k - 1])] if k > 1 else [])
            if k == len(stages):
                self._rule(chain, f"{comment} stage {k + 1}", *within, knock(k), ["-g", opened])
            else:
                add(f"{comment} stage {k + 1}", [*within, knock(k)], stages[k])
            self._rule(chain, f"{comment} repeat {k}", *within, knock(k - 1), ["-j", "RETURN"])
            assert reset is not None
            self._rule(chain, f"{comment} wrong {k}", member(stages[k - 1]), ["-j", reset])
        if stages:
            add(f"{comment} stage 1", [knock(0)], stages[0])
        else:
            self._rule(chain, f"{comment} stage 1", knock(0), ["-g", opened])

    def _spa_doors(self) -> None:
        """SPA grants live in nft sets that `portward spad` fills: keep only the port's silence."""
        by_port: dict[tuple[str, int], list[str]] = {}
        for door in self.policy.spa:
            spec = parse_port_spec(door.port)
            by_port.setdefault((spec.proto, spec.first), []).append(door.name)
            self.out.notes.append(
                f"spa {door.name!r}: single packet authorization needs `portward spad`, which opens the door in "
                "nft's table inet portward; here its port stays silent and nothing opens the door — use "
                "`portward apply` for it"
            )
        for (proto, port), names in by_port.items():
            dport = ["-p", proto, "--dport", str(port)]
            self._rule("INPUT", f"spa {', '.join(names)} silent", dport, ["-j", "DROP"])

    # output -------------------------------------------------------------------------------------------

    def _output(self) -> None:
        defaults = self.policy.defaults
        self._rule("OUTPUT", "loopback", ["-o", "lo", "-j", "ACCEPT"])
        self._rule("OUTPUT", "established", _ct_state("RELATED,ESTABLISHED"), ["-j", "ACCEPT"])
        if defaults.outbound != "accept":
            proto = "icmp" if self.family == 4 else "icmpv6"
            for kind in ICMP_ESSENTIAL if self.family == 4 else ICMPV6_ESSENTIAL:
                self._rule("OUTPUT", f"{proto} essential", _icmp(self.family, kind), ["-j", "ACCEPT"])
            if defaults.ping:
                self._rule("OUTPUT", f"{proto} echo", _icmp(self.family, "echo-request"), ["-j", "ACCEPT"])
        for rule in self.policy.outbound:
            self._traffic_rule("OUTPUT", "outbound", rule, "dst", "-o")
        self._final("OUTPUT", defaults.outbound, False)

    def _general_notes(self) -> None:
        if self.policy.defaults.forward == "keep":
            self.out.notes.append(
                "forward = keep: the file does not declare FORWARD, but restoring it empties the whole filter "
                "table, FORWARD rules of Docker or libvirt included (and with iptables-nft the FORWARD chain "
                "itself) — restore it before they start, as netfilter-persistent does at boot, or use "
                "`portward apply`, which touches only its own nft table"
            )
        if "watch" in self.policy.model_fields_set:
            logged = (
                " (denied packets still go to NFLOG group 7601, so it can alert)"
                if self.policy.defaults.log_denied
                else ""
            )
            self.out.notes.append(
                "[watch]: scan detection and kernel bans live in nft sets that `portward apply` sets up and "
                f"`portward watch` reads; this file has neither, so scanners are not banned{logged}"
            )
        if any(name.startswith("portward-knock-") for name in self.out.chains):
            self.out.notes.append(
                f"knock doors use xt_recent lists, which hold {RECENT_DEFAULT_SIZE} sources each unless the "
                f"module is loaded with a larger ip_list_tot (nft's door sets hold {DOOR_SIZE}): with more "
                "sources knocking at once, the oldest are forgotten first"
            )


def render(loaded: LoadedPolicy, family: int, source: str = "") -> tuple[str, list[str]]:
    """One family's restore file and the notes on what it cannot say."""
    script = Compiler(loaded, family).compile()
    return script.render(source or "a policy"), script.notes


def _export(loaded: LoadedPolicy, policy_path: str, family: int) -> Rendered:
    text, notes = render(loaded, family, os.path.abspath(policy_path))
    return Rendered({FILES[family]: text}, notes, stream=True)


def export_v4(loaded: LoadedPolicy, policy_path: str, root: Path) -> Rendered:
    """`export --format iptables`: etc/iptables/rules.v4 for iptables-restore."""
    return _export(loaded, policy_path, 4)


def export_v6(loaded: LoadedPolicy, policy_path: str, root: Path) -> Rendered:
    """`export --format ip6tables`: etc/iptables/rules.v6 for ip6tables-restore."""
    return _export(loaded, policy_path, 6)
