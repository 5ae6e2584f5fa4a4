"""The ufw dialect: the policy as a shell script of `ufw` commands (ufw 0.36, Debian 12).

ufw is first-match: the first rule that matches a new connection decides, its defaults decide the rest.
The script keeps the user's own rules and puts portward's first, in policy order:

1. it deletes the rules an earlier run added — the ones whose comment starts with `portward:`, read back
   with `ufw show added` (which works whether ufw is enabled or not) and passed to `ufw delete`;
2. sets the defaults (`ufw default deny incoming`, `… outgoing`, `… routed`);
3. adds every rule with `ufw prepend`, last rule first, so they end up on top in policy order, ahead of
   whatever the user had (those still follow, and can admit what the policy's default would refuse).

Every rule carries `comment 'portward: NAME'`, so a re-run replaces exactly what portward wrote.  The script
never runs `ufw enable` or `ufw reset`: enabling over ssh is the operator's call.

What ufw cannot say becomes a note (also written at the top of the script): SCTP, knock and SPA doors,
rates other than ufw's fixed `limit` (more than 6 new connections in 30 s from one source are refused;
used when the policy's rate is at most twice that, else the rule is a plain allow), long block lists (two
ufw rules each — in, and out since nft never lets a blocked address answer — and every ufw call rewrites its
rule files), and the packets ufw's own before.rules admit
whatever the policy says (ICMP echo, DHCP replies, mDNS, UPnP).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from portward.dialects import Rendered
from portward.policy.addresses import is_loopback, merge, merge_ports, parse_port_spec, to_cidrs
from portward.policy.model import RATE_UNITS, InboundRule, OutboundRule, Policy, rate_parts

if TYPE_CHECKING:
    from portward.policy.toml import LoadedPolicy

SCRIPT = "etc/portward/ufw.sh"
COMMENT = "portward: "
UFW_LIMIT_HITS, UFW_LIMIT_SECONDS = 6, 30  # ufw's `limit`: the recent module's --hitcount 6 --seconds 30
LIMIT_FACTOR = 2  # use `ufw limit` when the policy's rate is at most this many times ufw's
MULTIPORT_MAX = 15  # iptables multiport: 15 ports, a range counts as two
BLOCK_MAX = 256  # one ufw call per entry, each rewriting user.rules: keep the script finishing in minutes
VERBS = {"drop": "deny", "reject": "reject", "accept": "allow"}  # ufw's words for actions and defaults
UFW_PROTOCOLS = ("tcp", "udp")

DELETE_OLD = """\
ufw show added | sed -n "s/^ufw \\(.* comment '{prefix}[^']*'\\)\\$/\\1/p" | while IFS= read -r rule; do
    eval "ufw delete $rule"
done"""


@dataclass(frozen=True)
class UfwRule:
    """One `ufw` rule, in the words ufw takes after `ufw prepend`."""

    action: str  # allow | deny | reject | limit
    direction: str  # in | out
    comment: str
    interface: str | None = None
    source: str = "any"
    destination: str = "any"
    ports: str | None = None  # "22", "80,443", "44321:44323"
    proto: str | None = None

    def words(self) -> list[str]:
        out = [self.action, self.direction]
        if self.interface:
            out += ["on", self.interface.replace("*", "+")]  # ufw, like iptables, spells a wildcard '+'
        out += ["from", self.source, "to", self.destination]
        if self.ports is not None:
            out += ["port", self.ports]
        if self.proto is not None:
            out += ["proto", self.proto]
        return [*out, "comment", COMMENT + self.comment]

    def command(self, verb: str = "prepend") -> str:
        return "ufw " + " ".join(shlex.quote(word) for word in [verb, *self.words()])


def _short(cidr: str) -> str:
    """198.18.0.5/32 -> 198.18.0.5: how ufw itself shows a single address."""
    address, _slash, length = cidr.partition("/")
    return address if length == ("128" if ":" in address else "32") else cidr


def port_groups(ranges: Sequence[tuple[int, int]]) -> Iterator[str]:
    """ufw `port` values of at most 15 multiport slots each (a range takes two)."""
    group: list[str] = []
    used = 0
    for first, last in ranges:
        cost = 1 if first == last else 2
        if used + cost > MULTIPORT_MAX:
            yield ",".join(group)
            group, used = [], 0
        group.append(str(first) if first == last else f"{first}:{last}")
        used += cost
    if group:
        yield ",".join(group)


class UfwWriter:
    """Builds the script for one policy. One instance per export."""

    def __init__(self, loaded: LoadedPolicy, policy_path: str) -> None:
        self.loaded = loaded
        self.policy: Policy = loaded.policy
        self.source = os.path.abspath(policy_path)
        self.notes: list[str] = []

    @property
    def _has_ipv6(self) -> bool:
        rules: list[InboundRule | OutboundRule] = [*self.policy.inbound, *self.policy.outbound]
        resolved = [self.policy.resolve(rule.sources) for rule in rules]
        return any(net.family == 6 for net in self.loaded.block_nets) or any(
            is_any or any(net.family == 6 for net in nets) for is_any, nets in resolved
        )

    def addresses(self, section: str, rule: InboundRule | OutboundRule) -> list[str] | None:
        """ufw address words: ["any"], CIDRs, or None when only loopback is named (always admitted)."""
        is_any, nets = self.policy.resolve(rule.sources)
        if is_any:
            return ["any"]
        kept = [net for net in merge(nets) if not is_loopback(net)]
        if not kept:
            self.notes.append(f"{section} {rule.name!r}: only localhost, which ufw's before.rules always admit")
            return None
        return [_short(cidr) for net in kept for cidr in to_cidrs(net)]

    def action(self, section: str, rule: InboundRule | OutboundRule) -> str:
        if rule.action != "accept" or rule.rate is None:
            return VERBS[rule.action]
        count, unit, _burst = rate_parts(rule.rate)
        per_window = count * UFW_LIMIT_SECONDS / RATE_UNITS[unit]
        ufw_rate = f"{UFW_LIMIT_HITS} new connections per {UFW_LIMIT_SECONDS} s from one source"
        if section == "inbound" and per_window <= UFW_LIMIT_HITS * LIMIT_FACTOR:
            looser = UFW_LIMIT_HITS / per_window
            how = f", {looser:.0f} times looser than the policy: the nearest ufw has" if looser > LIMIT_FACTOR else ""
            self.notes.append(f"inbound {rule.name!r}: rate {rule.rate} becomes `ufw limit` ({ufw_rate}, then "
                              f"refused){how}")
            return "limit"
        self.notes.append(
            f"{section} {rule.name!r}: rate {rule.rate} is not written — ufw has one fixed rate ({ufw_rate})"
            + (" for incoming rules" if section == "outbound" else f", too far from {rule.rate}")
        )
        return "allow"

    def traffic(self, section: str, rule: InboundRule | OutboundRule) -> list[UfwRule]:
        addresses = self.addresses(section, rule)
        if addresses is None:
            return []
        action = self.action(section, rule)
        direction = "in" if section == "inbound" else "out"
        ports: list[tuple[str | None, str | None]] = [(None, None)]
        if rule.ports is not None:
            merged = merge_ports(parse_port_spec(spec) for spec in rule.ports)
            for name in merged:
                if name not in UFW_PROTOCOLS:
                    self.notes.append(f"{section} {rule.name!r}: ufw has no {name} ports — {name} is left out")
            ports = [(group, name) for name, spans in merged.items() if name in UFW_PROTOCOLS
                     for group in port_groups(spans)]
            if not ports:
                return []
        out = []
        for address in addresses:
            for group, proto in ports:
                out.append(
                    UfwRule(
                        action, direction, rule.name, rule.interface,
                        source=address if section == "inbound" else "any",
                        destination=address if section == "outbound" else "any",
                        ports=group, proto=proto,
                    )
                )
        return out

    def block(self) -> list[UfwRule]:
        cidrs = [_short(cidr) for net in self.loaded.block_nets for cidr in to_cidrs(net)]
        if len(cidrs) > BLOCK_MAX:
            self.notes.append(
                f"[block]: {len(cidrs)} networks; the first {BLOCK_MAX} are written, the other "
                f"{len(cidrs) - BLOCK_MAX} are not — ufw adds one rule per network and has no address sets "
                "(use the nft ruleset for long lists)"
            )
        # both ways: nft drops a blocked address's replies too, ufw accepts replies before any user rule
        rules = []
        for cidr in cidrs[:BLOCK_MAX]:
            rules += [UfwRule("deny", "in", "block", source=cidr), UfwRule("deny", "out", "block", destination=cidr)]
        return rules

    def defaults(self) -> list[str]:
        defaults = self.policy.defaults
        lines = [
            f"ufw default {VERBS[defaults.inbound]} incoming",
            f"ufw default {VERBS[defaults.outbound]} outgoing",
        ]
        if defaults.forward == "keep":
            self.notes.append("defaults.forward = keep: ufw's routed default is left as it is")
        else:
            lines.append(f"ufw default {'allow' if defaults.forward == 'accept' else 'deny'} routed")
        return lines

    def _notes(self) -> None:
        policy = self.policy
        for door in policy.knock:
            self.notes.append(f"knock {door.name!r}: not carried over — ufw has no port knocking; the door needs "
                              "portward's own nft ruleset (`portward apply`)")
        for spa in policy.spa:
            self.notes.append(f"spa {spa.name!r}: not carried over — ufw cannot open a door on one packet; "
                              "`portward spad` needs portward's own nft ruleset (`portward apply`)")
        if "watch" in policy.model_fields_set and policy.defaults.log_denied:
            self.notes.append("[watch]: scan detection and kernel bans are not carried over (ufw's `limit` is the "
                              "nearest it has) — they live in portward's nft ruleset")
        if not policy.defaults.ping:
            self.notes.append("ping = false: ufw's before.rules admit ICMP echo; remove those lines to refuse it")
        if policy.defaults.log_denied:
            self.notes.append(
                "log_denied: `ufw logging low` logs refused packets as [UFW BLOCK] in the kernel log, not to the "
                "NFLOG group `portward watch` reads"
            )
        self.notes.append(
            "ufw's before.rules admit DHCP replies, mDNS (5353/udp) and UPnP (1900/udp) multicast whatever the "
            "policy says; the script does not enable ufw — check with `ufw show added`, then `ufw enable`"
        )
        if self._has_ipv6:
            self.notes.append("the IPv6 rules need IPV6=yes in /etc/default/ufw (Debian's default)")

    def render(self) -> Rendered:
        rules = self.block()
        for inbound in self.policy.inbound:
            rules += self.traffic("inbound", inbound)
        for outbound in self.policy.outbound:
            rules += self.traffic("outbound", outbound)
        defaults = self.defaults()
        self._notes()
        lines = [
            "#!/bin/sh",
            f"# written by portward from {self.source}",
            "# ufw is first-match: portward's rules go on top, in policy order; the user's own rules follow.",
            *(f"# note: {note}" for note in self.notes),
            "set -e",
            "",
            "# 1. forget the rules an earlier run of this script added (comment 'portward: …')",
            DELETE_OLD.format(prefix=COMMENT),
            "",
            "# 2. defaults",
            *defaults,
        ]
        if self.policy.defaults.log_denied:
            lines.append("ufw logging low")
        lines += ["", "# 3. rules, last first: each `ufw prepend` puts its rule on top"]
        lines += [rule.command() for rule in reversed(rules)]
        return Rendered({SCRIPT: "\n".join(lines) + "\n"}, self.notes, stream=True)


def export(loaded: LoadedPolicy, policy_path: str, root: Path) -> Rendered:
    """`export --format ufw`: a shell script of ufw commands (etc/portward/ufw.sh under --root)."""
    return UfwWriter(loaded, policy_path).render()
