"""The firewalld dialect (seed 003): the policy as permanent firewalld configuration under etc/firewalld.

What is written (firewalld ≥ 1.0; Debian 12 ships 1.3):

* `zones/portward.xml` — inbound.  Target from `defaults.inbound`.  A rule open to `any` without rate becomes
  a `<port>`; everything else is a rich rule.  firewalld sorts a zone's rich rules by `priority` and, at
  priority 0, by action (log, deny, allow — not file order) and puts `<port>` elements after the negative
  priorities: so every rich rule gets a negative priority that follows policy order (first match wins, as
  in nft), and a rule becomes a `<port>` only when no later rule of the zone drops or rejects its ports.
* `zones/pw-IFACE.xml` — one zone per interface a rule names (an interface belongs to one zone only), bound
  to it (`*` becomes firewalld's `+`), holding the rules without interface plus that interface's rules.
  `portward` has no interface: it must be the default zone, which a note says how to set (portward does
  not rewrite the user's firewalld.conf).
* `ipsets/pw-*.xml` (hash:net, one per family) — `[block]` and any rule listing more than a handful of
  CIDRs of one family; a rich rule names one source only, an ipset keeps it one rule.
* `policies/portward-out.xml` (HOST → ANY) and `policies/pwo-IFACE.xml` (HOST → that interface's zone,
  target CONTINUE, evaluated first) — outbound; they also drop new connections to `[block]` addresses,
  whose replies portward's nft ruleset never lets in.  Seed 003 uses direct rules (`direct.xml`, `-o enp3s0`
  in iptables syntax) because firewalld < 0.9 had no other way to filter OUTPUT; firewalld deprecates
  direct rules since 1.0 and policies say the same thing natively, with RELATED,ESTABLISHED already
  accepted by firewalld before any policy — so policies it is.
* `policies/portward-fwd.xml` (ANY → ANY) — `defaults.forward` drop or accept; `keep` writes nothing.

Rates are `limit value="N/m"` on the accept, followed by a drop at the next priority so the excess is
dropped as in nft, not passed to later rules — but firewalld's limit is one bucket for everybody, not
per source; the notes say so.  A `reject` default becomes the zone's reject target plus two tail rules so
TCP gets a reset and the rest an ICMP port-unreachable, as portward's nft ruleset does.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from portward.dialects import Rendered
from portward.dialects.nft import PING_LIMIT as NFT_PING_LIMIT
from portward.policy.addresses import PortRange, is_loopback, merge, merge_ports, parse_port_spec, to_cidrs
from portward.policy.model import InboundRule, OutboundRule, Policy, rate_parts

if TYPE_CHECKING:
    from portward.policy.toml import LoadedPolicy

BASE = "etc/firewalld"
ZONE = "portward"
OUT_POLICY = "portward-out"
FORWARD_POLICY = "portward-fwd"
# firewalld derives nft/iptables chain names from these: zone ≤ 17, policy ≤ 18, ipset ≤ 31 characters
ZONE_NAME_MAX, POLICY_NAME_MAX, IPSET_NAME_MAX = 17, 18, 31
INLINE_SOURCES = 4  # more CIDRs than this of one family in one rule → an ipset
PRIO_BLOCK = -32768
PRIO_ICMP = -32700
PRIO_RULES = -32000  # rule i: PRIO_RULES + 2 i (its verdict) and + 1 (a rate rule's excess drop)
PRIO_TAIL = 32767  # after <port>/<service>: the default reject, per protocol
OUT_PRIORITY, OUT_IFACE_PRIORITY, FORWARD_PRIORITY = -10, -20, -30
ZONE_TARGETS = {"accept": "ACCEPT", "drop": "DROP", "reject": "%%REJECT%%"}
POLICY_TARGETS = {"accept": "CONTINUE", "drop": "DROP", "reject": "REJECT"}
# firewalld icmptype names for what portward always admits (MLD has no firewalld icmptype)
ESSENTIAL_ICMP = (
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
    "neighbour-solicitation",
    "neighbour-advertisement",
    "router-solicitation",
    "router-advertisement",
)
PING_LIMIT = f"{NFT_PING_LIMIT[0]}/{NFT_PING_LIMIT[1][0]}"  # the nft ruleset's echo-request limit: "20/s"
FAMILIES = {4: "ipv4", 6: "ipv6"}
PORT_UNREACHABLE = {"ipv4": "icmp-port-unreachable", "ipv6": "icmp6-port-unreachable"}
OWNED_FILE = re.compile(r"^(portward|pw-|pwo-).*\.xml$")


@dataclass(frozen=True)
class Rich:
    """One firewalld rich rule; `source`/`destination` is an address or `ipset:NAME`."""

    priority: int
    action: str  # accept | drop | reject
    family: str | None = None
    source: str | None = None
    destination: str | None = None
    port: PortRange | None = None
    protocol: str | None = None
    icmp_type: str | None = None
    reject_type: str | None = None
    limit: str | None = None

    def element(self) -> ET.Element:
        rule = ET.Element("rule", {"priority": str(self.priority)})
        if self.family:
            rule.set("family", self.family)
        for tag, value in (("source", self.source), ("destination", self.destination)):
            if value is not None:
                key, _sep, name = value.partition(":") if value.startswith("ipset:") else ("address", "", value)
                ET.SubElement(rule, tag, {key: name})
        if self.port is not None:
            ET.SubElement(rule, "port", {"port": _port_text(self.port), "protocol": self.port.proto})
        if self.protocol is not None:
            ET.SubElement(rule, "protocol", {"value": self.protocol})
        if self.icmp_type is not None:
            ET.SubElement(rule, "icmp-type", {"name": self.icmp_type})
        verdict = ET.SubElement(rule, self.action, {"type": self.reject_type} if self.reject_type else {})
        if self.limit:
            ET.SubElement(verdict, "limit", {"value": self.limit})
        return rule


@dataclass
class Body:
    """What a zone and a policy both hold: plain open ports and rich rules."""

    ports: list[PortRange] = field(default_factory=list)
    rules: list[Rich] = field(default_factory=list)

    def fill(self, parent: ET.Element) -> None:
        for port in self.ports:
            ET.SubElement(parent, "port", {"port": _port_text(port), "protocol": port.proto})
        for rule in sorted(self.rules, key=lambda rich: rich.priority):  # stable: same priority keeps order
            parent.append(rule.element())


def _port_text(port: PortRange) -> str:
    return str(port.first) if port.first == port.last else f"{port.first}-{port.last}"


def _xml(root: ET.Element) -> str:
    ET.indent(root, "  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _ident(text: str) -> str:
    return "".join(char if char.isalnum() or char in "_-" else "_" for char in text)


def interface_covers(pattern: str, interface: str) -> bool:
    """Does a rule's interface pattern apply to the zone made for `interface` (itself maybe `eth*`)?"""
    if pattern == interface:
        return True
    return pattern.endswith("*") and interface.rstrip("*").startswith(pattern[:-1])


class FirewalldWriter:
    """Builds every file for one policy. One instance per export."""

    def __init__(self, loaded: LoadedPolicy, policy_path: str, root: Path) -> None:
        self.loaded = loaded
        self.policy: Policy = loaded.policy
        self.source = os.path.abspath(policy_path)
        self.root = root
        self.files: dict[str, str] = {}
        self.notes: list[str] = []
        self.ipsets: dict[str, tuple[int, list[str]]] = {}
        self._ipset_by_content: dict[tuple[int, tuple[str, ...]], str] = {}
        self._zone_names: dict[str, str] = {}
        self._noted: set[str] = set()

    # names ----------------------------------------------------------------------------------------

    def zone_for(self, interface: str) -> str:
        """pw-IFACE, cut to firewalld's 17 characters and kept unique."""
        if interface not in self._zone_names:
            self._zone_names[interface] = self._unique(
                "pw-" + _ident(interface.rstrip("*")), ZONE_NAME_MAX, set(self._zone_names.values())
            )
        return self._zone_names[interface]

    @staticmethod
    def _unique(name: str, limit: int, taken: set[str]) -> str:
        candidate, number = name[:limit], 2
        while candidate in taken:
            suffix = f"-{number}"
            candidate, number = name[: limit - len(suffix)] + suffix, number + 1
        return candidate

    def ipset(self, base: str, family: int, cidrs: Sequence[str]) -> str:
        """A hash:net ipset with these entries (shared when the content repeats)."""
        key = (family, tuple(cidrs))
        if key not in self._ipset_by_content:
            suffix = f"-v{family}"
            name = self._unique(f"pw-{_ident(base)}"[: IPSET_NAME_MAX - len(suffix)] + suffix, IPSET_NAME_MAX,
                                set(self.ipsets))
            self.ipsets[name] = (family, list(cidrs))
            self._ipset_by_content[key] = name
        return self._ipset_by_content[key]

    def note_once(self, text: str) -> None:
        if text not in self._noted:
            self._noted.add(text)
            self.notes.append(text)

    # rules ----------------------------------------------------------------------------------------

    def _addresses(
        self, section: str, rule: InboundRule | OutboundRule
    ) -> list[tuple[str | None, str | None]] | None:
        """[(family, address-or-ipset)]: [(None, None)] for any; None when only loopback is named."""
        is_any, nets = self.policy.resolve(rule.sources)
        if is_any:
            return [(None, None)]
        nets = tuple(net for net in merge(nets) if not is_loopback(net))
        if not nets:
            return None
        out: list[tuple[str | None, str | None]] = []
        for family in (4, 6):
            cidrs = [_short(cidr) for net in nets if net.family == family for cidr in to_cidrs(net)]
            if len(cidrs) > INLINE_SOURCES:
                out.append((FAMILIES[family], "ipset:" + self.ipset(_set_base(self.policy, section, rule), family,
                                                                     cidrs)))
            else:
                out.extend((FAMILIES[family], cidr) for cidr in cidrs)
        return out

    def traffic(
        self, section: str, index: int, rule: InboundRule | OutboundRule, later: Sequence[InboundRule | OutboundRule],
        body: Body,
    ) -> None:
        """Add one policy rule to a zone's or policy's body, at its place in policy order."""
        addresses = self._addresses(section, rule)
        if addresses is None:
            self.note_once(f"{section} {rule.name!r}: only localhost, which firewalld always admits")
            return
        ports = _ports(rule.ports)
        if rule.action == "accept" and addresses == [(None, None)] and rule.rate is None:
            # a port no later rule drops or rejects can be a plain <port>: order no longer matters for it
            plain = [port for port in ports if port and not any(
                other.action != "accept" and _overlaps(port, other) for other in later)]
            body.ports.extend(port for port in plain if port is not None)
            ports = [port for port in ports if port not in plain]
        priority = PRIO_RULES + 2 * index
        limit = self._limit(section, rule)
        for family, address in addresses:
            families = [family] if family or rule.action != "reject" else ["ipv4", "ipv6"]
            for rule_family in families:
                for port in ports:
                    base = Rich(
                        priority, rule.action, family=rule_family, port=port,
                        source=address if section == "inbound" else None,
                        destination=address if section == "outbound" else None,
                    )
                    if rule.action == "reject":
                        assert rule_family is not None
                        reject = "tcp-reset" if port and port.proto == "tcp" else PORT_UNREACHABLE[rule_family]
                        body.rules.append(replace(base, reject_type=reject))
                        continue
                    body.rules.append(replace(base, limit=limit))
                    if limit:  # the excess is dropped here, as nft's meter does, not handed to later rules
                        body.rules.append(replace(base, priority=priority + 1, action="drop"))

    def _limit(self, section: str, rule: InboundRule | OutboundRule) -> str | None:
        if rule.rate is None or rule.action != "accept":
            return None
        count, unit, burst = rate_parts(rule.rate)
        value = f"{count}/{unit[0]}"
        if value == "1/d":  # firewalld refuses it ("too slow", an old iptables limit): the nearest it takes
            value = "2/d"
        self.note_once(
            f"{section} {rule.name!r}: rate {rule.rate} becomes firewalld's `limit value=\"{value}\"`, one bucket "
            "shared by every source (nft meters each source); the excess is dropped"
            + (f"; firewalld has no burst, {burst} is dropped" if burst != count else "")
        )
        return value

    def icmp(self, body: Body, ping: bool, limit: str | None) -> None:
        """What portward admits whatever the policy says: essential ICMP, and echo when ping = true."""
        for name in ESSENTIAL_ICMP:
            body.rules.append(Rich(PRIO_ICMP, "accept", icmp_type=name))
        if ping:
            body.rules.append(Rich(PRIO_ICMP, "accept", icmp_type="echo-request", limit=limit))

    @staticmethod
    def reject_tail(body: Body) -> None:
        """A reject default as nft says it: TCP reset, the rest ICMP port-unreachable."""
        for family in ("ipv4", "ipv6"):
            body.rules.append(Rich(PRIO_TAIL, "reject", family=family, protocol="tcp", reject_type="tcp-reset"))
            body.rules.append(Rich(PRIO_TAIL, "reject", family=family, reject_type=PORT_UNREACHABLE[family]))

    def body(self, section: str, rules: Sequence[InboundRule | OutboundRule], indices: Sequence[int],
             default: str, ping: bool) -> Body:
        body = Body()
        for family in (4, 6):
            # nft drops blocked sources before accepting replies, so nothing to them works either way;
            # firewalld accepts replies before any zone, so the way out is closed by a policy rule instead
            if self.loaded.block[family]:
                where = f"ipset:{self.block_ipset(family)}"
                body.rules.append(Rich(PRIO_BLOCK, "drop", family=FAMILIES[family],
                                       source=where if section == "inbound" else None,
                                       destination=where if section == "outbound" else None))
        if default != "accept":
            self.icmp(body, ping, PING_LIMIT if section == "inbound" else None)
        for position, (index, rule) in enumerate(zip(indices, rules, strict=True)):
            self.traffic(section, index, rule, rules[position + 1 :], body)
        if default == "reject":
            self.reject_tail(body)
        return body

    def block_ipset(self, family: int) -> str:
        name = f"pw-block-v{family}"
        if name not in self.ipsets:
            cidrs = [_short(cidr) for net in self.loaded.block_nets if net.family == family for cidr in to_cidrs(net)]
            self.ipsets[name] = (family, cidrs)
        return name

    # files ----------------------------------------------------------------------------------------

    def render(self) -> Rendered:
        policy = self.policy
        defaults = policy.defaults
        rules: list[InboundRule | OutboundRule] = [*policy.inbound, *policy.outbound]
        patterns = list(dict.fromkeys(rule.interface for rule in rules if rule.interface))
        self.zone(ZONE, None, "inbound for every interface not bound to another portward zone")
        for pattern in patterns:
            self.zone(self.zone_for(pattern), pattern, f"inbound on {pattern}")
        if policy.outbound or defaults.outbound != "accept" or self.loaded.block_nets:
            self.out_policy(OUT_POLICY, None, OUT_PRIORITY, POLICY_TARGETS[defaults.outbound])
            for pattern in dict.fromkeys(rule.interface for rule in policy.outbound if rule.interface):
                name = self._unique("pwo-" + _ident(pattern.rstrip("*")), POLICY_NAME_MAX, set())
                self.out_policy(name, pattern, OUT_IFACE_PRIORITY, "CONTINUE")
        self.forward_policy()
        for name, (family, cidrs) in self.ipsets.items():
            self.files[f"{BASE}/ipsets/{name}.xml"] = _ipset_xml(name, family, cidrs, self.source)
        self._notes(patterns)
        return Rendered(self.files, self.notes)

    def zone(self, name: str, interface: str | None, what: str) -> None:
        defaults = self.policy.defaults
        chosen = [(index, rule) for index, rule in enumerate(self.policy.inbound)
                  if rule.interface is None or (interface is not None and interface_covers(rule.interface, interface))]
        body = self.body("inbound", [rule for _i, rule in chosen], [index for index, _r in chosen],
                         defaults.inbound, defaults.ping)
        root = ET.Element("zone", {"target": ZONE_TARGETS[defaults.inbound]})
        ET.SubElement(root, "short").text = name
        ET.SubElement(root, "description").text = f"portward: {what} (written from {self.source})"
        if interface is not None:
            ET.SubElement(root, "interface", {"name": interface.replace("*", "+")})
        body.fill(root)
        self.files[f"{BASE}/zones/{name}.xml"] = _xml(root)

    def out_policy(self, name: str, interface: str | None, priority: int, target: str) -> None:
        defaults = self.policy.defaults
        chosen = [(index, rule) for index, rule in enumerate(self.policy.outbound)
                  if rule.interface is None or (interface is not None and interface_covers(rule.interface, interface))]
        body = self.body("outbound", [rule for _i, rule in chosen], [index for index, _r in chosen],
                         defaults.outbound if interface is None else "accept", defaults.ping)
        root = ET.Element("policy", {"target": target, "priority": str(priority)})
        ET.SubElement(root, "short").text = name
        where = f"leaving by {interface}" if interface else "leaving this host"
        ET.SubElement(root, "description").text = f"portward: outbound {where} (written from {self.source})"
        ET.SubElement(root, "ingress-zone", {"name": "HOST"})
        ET.SubElement(root, "egress-zone", {"name": self.zone_for(interface) if interface else "ANY"})
        body.fill(root)
        self.files[f"{BASE}/policies/{name}.xml"] = _xml(root)

    def forward_policy(self) -> None:
        forward = self.policy.defaults.forward
        if forward == "keep":
            self.notes.append(
                "defaults.forward = keep: no forward policy written; firewalld itself rejects traffic between "
                "zones unless a zone or policy allows it"
            )
            return
        root = ET.Element("policy", {"target": forward.upper(), "priority": str(FORWARD_PRIORITY)})
        ET.SubElement(root, "short").text = FORWARD_POLICY
        ET.SubElement(root, "description").text = f"portward: forwarded traffic, {forward} (from {self.source})"
        ET.SubElement(root, "ingress-zone", {"name": "ANY"})
        ET.SubElement(root, "egress-zone", {"name": "ANY"})
        self.files[f"{BASE}/policies/{FORWARD_POLICY}.xml"] = _xml(root)

    def _notes(self, patterns: Sequence[str]) -> None:
        policy = self.policy
        self.notes.insert(
            0,
            f"make {ZONE!r} the default zone (interfaces no other zone claims land there): "
            f"`firewall-cmd --permanent --set-default-zone={ZONE} && firewall-cmd --reload` "
            f"(offline: `firewall-offline-cmd --set-default-zone={ZONE}`); portward does not edit firewalld.conf",
        )
        for pattern in patterns:
            self.notes.append(
                f"interface {pattern} is bound to zone {self.zone_for(pattern)!r}; if NetworkManager manages it, "
                f"set the same there: `nmcli connection modify CONNECTION connection.zone {self.zone_for(pattern)}`"
            )
        overlapping = [(a, b) for a in patterns for b in patterns if a != b and interface_covers(a, b)]
        for wide, narrow in overlapping:
            self.notes.append(
                f"interface patterns {wide} and {narrow} overlap: firewalld binds {narrow} to one zone only and "
                f"does not say which binding it checks first; zone {self.zone_for(narrow)!r} holds the rules of "
                "both, but use patterns that do not overlap to be sure"
            )
        for door in policy.knock:
            self.notes.append(f"knock {door.name!r}: not carried over — firewalld has no port knocking; the door "
                              "needs portward's own nft ruleset (`portward apply`)")
        for spa in policy.spa:
            self.notes.append(f"spa {spa.name!r}: not carried over — firewalld cannot open a door on one packet; "
                              "`portward spad` needs portward's own nft ruleset (`portward apply`)")
        if "watch" in policy.model_fields_set and policy.defaults.log_denied:
            self.notes.append("[watch]: scan detection and kernel bans are not carried over — they live in "
                              "portward's nft ruleset")
        if policy.defaults.log_denied:
            self.notes.append(
                "log_denied: firewalld logs refused packets itself with `firewall-cmd --set-log-denied=unicast` "
                "(LogDenied in firewalld.conf) to the kernel log, not to the NFLOG group `portward watch` reads"
            )
        if policy.defaults.inbound != "accept" or policy.defaults.outbound != "accept":
            self.notes.append("ICMPv6 MLD has no firewalld icmptype: multicast listener reports are not admitted")
        for path in self._stale():
            self.notes.append(f"{path} is from an earlier export and no longer written: remove it")

    def _stale(self) -> list[str]:
        stale = []
        for kind in ("zones", "policies", "ipsets"):
            folder = self.root / BASE / kind
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if OWNED_FILE.match(path.name) and f"{BASE}/{kind}/{path.name}" not in self.files:
                    stale.append(str(path))
        return stale


def _overlaps(port: PortRange, other: InboundRule | OutboundRule) -> bool:
    """Could a connection to one of these ports match the other rule? (Its addresses aside.)"""
    if other.ports is None:
        return True
    return any(
        port.proto == theirs.proto and port.first <= theirs.last and theirs.first <= port.last
        for theirs in map(parse_port_spec, other.ports)
    )


def _ports(specs: list[str] | None) -> list[PortRange | None]:
    if specs is None:
        return [None]
    merged = merge_ports(parse_port_spec(spec) for spec in specs)
    return [PortRange(proto, first, last) for proto, spans in merged.items() for first, last in spans]


def _short(cidr: str) -> str:
    """198.18.0.5/32 -> 198.18.0.5, as people write a single address in a rich rule."""
    address, _slash, length = cidr.partition("/")
    return address if length == ("128" if ":" in address else "32") else cidr


def _set_base(policy: Policy, section: str, rule: InboundRule | OutboundRule) -> str:
    """Name an ipset after the rule's zone when that is all it lists (rules then share it), as nft does."""
    named = [source for source in rule.sources if source != "localhost"]
    if len(named) == 1 and named[0] in policy.zones:
        return f"zone-{named[0]}"
    return f"{section[:3]}-{rule.name}"


def _ipset_xml(name: str, family: int, cidrs: Iterable[str], source: str) -> str:
    """Written as text, not through ElementTree: a block list has 100,000 entries and more."""
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<ipset type="hash:net">',
        f"  <short>{name}</short>",
        f"  <description>portward (written from {_escape(source)})</description>",
    ]
    if family == 6:
        lines.append('  <option name="family" value="inet6"/>')
    lines.extend(f"  <entry>{cidr}</entry>" for cidr in cidrs)
    lines.append("</ipset>")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def export(loaded: LoadedPolicy, policy_path: str, root: Path) -> Rendered:
    """`export --format firewalld`: zones, policies and ipsets for /etc/firewalld."""
    return FirewalldWriter(loaded, policy_path, root).render()
