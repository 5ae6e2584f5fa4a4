"""export --format firewalld, judged by firewalld itself.

Offline: firewall-offline-cmd reads the exported tree (bind-mounted on /etc/firewalld in a private mount
namespace, so the host's /etc is never touched), must accept every file without a warning, and its
`--list-all` of every zone and policy, evaluated with firewalld's ordering rules (rich rules by priority,
negative ones before ports, positive ones after, then the target), must answer like the policy on a grid of
sources x ports x interfaces.

Live: the real firewalld daemon (private D-Bus, private /run, the lab's srv namespace) loads the export; the
lab probes it from lan and wan, in and out, and the same grid is probed again with portward's own nft ruleset:
both must agree with what the policy says.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from portward.dialects.firewalld import interface_covers
from portward.dialects.nft import compile_policy, render_text
from portward.policy.addresses import parse_address, parse_net, parse_port_spec
from portward.policy.evaluate import inbound_decision, interface_matches
from portward.policy.toml import LoadedPolicy, load_policy
from tests.netlab import LAN4, LAN6, SRV_LAN4, SRV_LAN6, SRV_WAN4, SRV_WAN6, WAN4, WAN6, Lab
from tests.pwutil import ROOT

OFFLINE = shutil.which("firewall-offline-cmd")
needs_offline = pytest.mark.skipif(OFFLINE is None, reason="firewall-offline-cmd (package firewalld) not installed")
needs_daemon = pytest.mark.skipif(
    shutil.which("firewalld") is None or shutil.which("dbus-daemon") is None,
    reason="firewalld or dbus-daemon (packages firewalld, dbus) not installed",
)

FEATURES = """
[defaults]
inbound = "reject"
outbound = "drop"
forward = "accept"
log_denied = true

[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64"]
many = ["198.18.1.0/24", "198.18.3.0/24", "198.18.5.0/24", "198.18.7.0/24", "198.18.9.0/24", "198.18.11.0/24"]

[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
rate = "20/minute burst 40"

[[inbound]]
name = "bad"
ports = ["80/tcp", "53/udp"]
from = ["198.19.0.66", "2001:db8:0:2::66"]
action = "reject"

[[inbound]]
name = "web"
ports = ["80/tcp", "443/tcp"]
from = ["any"]

[[inbound]]
name = "dns"
ports = ["53/udp", "53/tcp"]
from = ["lan", "many"]

[[inbound]]
name = "admin"
ports = ["9090/tcp"]
from = ["lan"]
interface = "eth-lan"

[[inbound]]
name = "wan-only"
ports = ["8443/tcp"]
from = ["any"]
interface = "wg*"

[[inbound]]
name = "no-telnet-wan"
ports = ["23/tcp"]
from = ["any"]
interface = "eth-wan"
action = "drop"

[[inbound]]
name = "all-from-mgmt"
from = ["2001:db8:5::/48"]

[[inbound]]
name = "local"
ports = ["631/tcp"]
from = ["localhost"]

[[inbound]]
name = "mixed"
ports = ["3868/sctp", "44321-44323/tcp", "5000-5010/udp"]
from = ["any"]

[[inbound]]
name = "late-deny"
ports = ["443/tcp"]
from = ["198.18.0.0/24"]
action = "drop"

[[outbound]]
name = "web-out"
ports = ["22/tcp", "443/tcp"]
interface = "eth-wan"

[[outbound]]
name = "dns-out"
ports = ["53/udp", "53/tcp"]
to = ["lan"]

[[outbound]]
name = "no-smtp"
ports = ["25/tcp"]
action = "reject"

[block]
from = ["198.19.0.99", "2001:db8:0:2::99", "198.18.0.77"]

[[knock]]
name = "k"
sequence = ["7000/tcp", "8000/tcp"]
open = ["2222/tcp"]
"""

POLICIES = {
    "server": (ROOT / "examples" / "server.toml").read_text().replace(
        "blocklist.txt", str(ROOT / "examples" / "blocklist.txt")
    ),
    "features": FEATURES,
    "accept-keep": '[defaults]\ninbound = "accept"\nforward = "keep"\n[[inbound]]\nname = "no-smb"\n'
    'ports = ["445/tcp"]\nfrom = ["any"]\naction = "drop"\n',
}

# ----------------------------------------------------------------------------------- firewalld's view

RICH_TOKEN = re.compile(r'([a-z-]+)(?:="([^"]*)")?')


@dataclass
class Rich:
    """One rich rule as firewall-offline-cmd lists it."""

    priority: int = 0
    family: str | None = None
    source: tuple[str, str] | None = None  # ("address"|"ipset", value)
    destination: tuple[str, str] | None = None
    port: tuple[str, str] | None = None  # (port, protocol)
    protocol: str | None = None
    icmp_type: str | None = None
    action: str = ""
    reject_type: str | None = None


def parse_rich(text: str) -> Rich:
    rule = Rich()
    tokens = RICH_TOKEN.findall(text)
    index = 0
    while index < len(tokens):
        key, value = tokens[index]
        if key == "priority":
            rule.priority = int(value)
        elif key == "family":
            rule.family = value
        elif key in ("source", "destination"):
            kind, what = tokens[index + 1]
            setattr(rule, key, (kind, what))
            index += 1
        elif key == "port" and not value:
            (_p, port), (_q, proto) = tokens[index + 1], tokens[index + 2]
            rule.port = (port, proto)
            index += 2
        elif key == "protocol":
            rule.protocol = value or tokens[index + 1][1]
            index += 0 if value else 1
        elif key == "icmp-type":
            rule.icmp_type = tokens[index + 1][1]
            index += 1
        elif key in ("accept", "drop", "reject"):
            rule.action = key
        elif key == "type":
            rule.reject_type = value
        index += 1
    assert rule.action, text
    return rule


@dataclass
class Listing:
    """`--list-all` of one zone or policy."""

    target: str = ""
    priority: int = 0
    interfaces: list[str] = field(default_factory=list)
    ports: list[tuple[str, str]] = field(default_factory=list)
    ingress: list[str] = field(default_factory=list)
    egress: list[str] = field(default_factory=list)
    rich: list[Rich] = field(default_factory=list)


def parse_listing(text: str) -> Listing:
    listing = Listing()
    in_rich = False
    for line in text.splitlines():
        if in_rich and line.startswith("\t"):
            listing.rich.append(parse_rich(line.strip()))
            continue
        key, _sep, value = line.strip().partition(": ")
        key = key.rstrip(":")
        in_rich = key == "rich rules"
        words = value.split()
        if key == "target":
            listing.target = value.strip()
        elif key == "priority":
            listing.priority = int(value)
        elif key == "interfaces":
            listing.interfaces = words
        elif key == "ports":
            listing.ports = [tuple(word.split("/")) for word in words]  # type: ignore[misc]
        elif key == "ingress-zones":
            listing.ingress = words
        elif key == "egress-zones":
            listing.egress = words
    return listing


def offline(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """firewall-offline-cmd with root/etc/firewalld as /etc/firewalld, in a private mount namespace."""
    script = 'mount --make-rprivate / && mount --bind "$1/etc/firewalld" /etc/firewalld && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(root), "firewall-offline-cmd", *args],
        capture_output=True, text=True, timeout=120,
    )


def export_tree(tmp_path: Path, text: str) -> tuple[Path, LoadedPolicy, list[str]]:
    """The host's firewalld config (untouched) copied under a temp root, then the export written over it."""
    root = tmp_path / "root"
    shutil.copytree("/etc/firewalld", root / "etc/firewalld")
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "portward", "--json", "export", "--format", "firewalld", "-p", str(policy),
         "--root", str(root)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    import json

    notes: list[str] = json.loads(done.stdout)["notes"]
    return root, load_policy(str(policy)), notes


@dataclass
class Firewalld:
    """Everything firewall-offline-cmd says about the exported tree."""

    default_zone: str
    zones: dict[str, Listing]
    policies: dict[str, Listing]
    ipsets: dict[str, list[str]]


def read_back(root: Path) -> tuple[Firewalld, str]:
    """Check the tree, make portward the default zone (as the notes say to), list everything.

    One shell for all the calls (each firewall-offline-cmd start costs a second); returns the view and the
    output of --check-config.
    """
    names = {kind: sorted(path.stem for path in (root / "etc/firewalld" / kind).glob("*.xml"))
             for kind in ("zones", "policies", "ipsets")}
    calls = ["--check-config", "--set-default-zone=portward", "--get-default-zone"]
    calls += [f"--zone={name} --list-all" for name in names["zones"]]
    calls += [f"--policy={name} --list-all" for name in names["policies"]]
    calls += [f"--ipset={name} --get-entries" for name in names["ipsets"]]
    body = " && ".join(f"echo '@@ {call}' && firewall-offline-cmd {call} 2>&1" for call in calls)
    script = f'mount --make-rprivate / && mount --bind "$1/etc/firewalld" /etc/firewalld && {body}'
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(root)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    sections = dict(re.findall(r"^@@ (.*)\n((?:(?!@@ ).*\n?)*)", done.stdout, re.M))
    for call, output in sections.items():  # firewalld drops a rule it cannot read with only a warning
        assert "WARNING" not in output and "ERROR" not in output, (call, output)
    view = Firewalld(
        default_zone=sections["--get-default-zone"].strip(),
        zones={name: parse_listing(sections[f"--zone={name} --list-all"]) for name in names["zones"]},
        policies={name: parse_listing(sections[f"--policy={name} --list-all"]) for name in names["policies"]},
        ipsets={name: sections[f"--ipset={name} --get-entries"].split() for name in names["ipsets"]},
    )
    return view, sections["--check-config"]


@dataclass
class Exported:
    root: Path
    loaded: LoadedPolicy
    notes: list[str]
    firewalld: Firewalld
    check: str


_exported: dict[str, Exported] = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Exported]:
    """Export a named policy once per module and read it back through firewall-offline-cmd."""

    def get(name: str) -> Exported:
        if name not in _exported:
            root, loaded, notes = export_tree(tmp_path_factory.mktemp(name), POLICIES[name])
            view, check = read_back(root)
            _exported[name] = Exported(root, loaded, notes, view, check)
        return _exported[name]

    return get


# ------------------------------------------------------------ firewalld's evaluation order, as documented


def _rich_matches(rule: Rich, fw: Firewalld, key: str, address: str, port: int, proto: str) -> bool:
    family, value = parse_address(address)
    if rule.family and rule.family != f"ipv{family}":
        return False
    if rule.icmp_type is not None:
        return False  # the grid is TCP and UDP
    where = getattr(rule, key)
    if where is not None:
        kind, what = where
        entries = fw.ipsets[what] if kind == "ipset" else [what]
        if not any(parse_net(entry).contains(family, value) for entry in entries):
            return False
    if rule.port is not None:
        first, _dash, last = rule.port[0].partition("-")
        if rule.port[1] != proto or not int(first) <= port <= int(last or first):
            return False
    return rule.protocol is None or rule.protocol == proto


def _outcome(rule: Rich, proto: str) -> str:
    """What the prober would see: accept → open, drop → filtered, a reset/port-unreachable → closed."""
    if rule.action == "accept":
        return "open"
    if rule.action == "drop":
        return "filtered"
    assert rule.reject_type in ("tcp-reset", "icmp-port-unreachable", "icmp6-port-unreachable"), rule
    assert rule.reject_type != "tcp-reset" or proto == "tcp"
    return "closed"


def evaluate(listing: Listing, fw: Firewalld, key: str, address: str, port: int, proto: str) -> str | None:
    """firewalld's order: rich rules < 0 by priority, ports, rich rules = 0 (deny before allow), > 0, target."""
    ordered = sorted(listing.rich, key=lambda rule: rule.priority)
    early = [rule for rule in ordered if rule.priority < 0]
    middle = sorted((rule for rule in ordered if rule.priority == 0), key=lambda rule: rule.action == "accept")
    late = [rule for rule in ordered if rule.priority > 0]
    for rule in early:
        if _rich_matches(rule, fw, key, address, port, proto):
            return _outcome(rule, proto)
    if any(p_proto == proto and _in_port(p_port, port) for p_port, p_proto in listing.ports):
        return "open"
    for rule in [*middle, *late]:
        if _rich_matches(rule, fw, key, address, port, proto):
            return _outcome(rule, proto)
    return {"ACCEPT": "open", "DROP": "filtered", "%%REJECT%%": "admin-prohibited", "REJECT": "admin-prohibited",
            "CONTINUE": None}[listing.target]


def _in_port(text: str, port: int) -> bool:
    first, _dash, last = text.partition("-")
    return int(first) <= port <= int(last or first)


def zone_of(fw: Firewalld, interface: str) -> str:
    for name, zone in fw.zones.items():
        if any(interface_covers(bound.replace("+", "*"), interface) for bound in zone.interfaces):
            return name
    return fw.default_zone


def firewalld_inbound(fw: Firewalld, source: str, port: int, proto: str, interface: str) -> str:
    answer = evaluate(fw.zones[zone_of(fw, interface)], fw, "source", source, port, proto)
    assert answer is not None
    return answer


def firewalld_outbound(fw: Firewalld, destination: str, port: int, proto: str, interface: str) -> str:
    egress = zone_of(fw, interface)
    for listing in sorted(fw.policies.values(), key=lambda policy: policy.priority):
        if listing.ingress == ["HOST"] and (listing.egress == ["ANY"] or listing.egress == [egress]):
            answer = evaluate(listing, fw, "destination", destination, port, proto)
            if answer is not None:
                return answer
    return "open"  # firewalld accepts what no policy decides on the way out


# ------------------------------------------------------------------------------------ the policy's view

STATES = {"accept": "open", "reject": "closed", "drop": "filtered"}


def policy_inbound(loaded: LoadedPolicy, source: str, port: int, proto: str, interface: str) -> str:
    decision = inbound_decision(loaded, source, port, proto, interface)
    return "open" if decision.admitted else STATES[decision.action]


def policy_outbound(loaded: LoadedPolicy, destination: str, port: int, proto: str, interface: str) -> str:
    """First matching [[outbound]] rule, else defaults.outbound (as nft's output chain).

    A [block]ed address never answers: nft drops everything from it before accepting replies."""
    policy = loaded.policy
    family, address = parse_address(destination)
    if loaded.blocked(family, address):
        return "filtered"
    for rule in policy.outbound:
        if rule.ports is not None and not any(
            spec.proto == proto and spec.first <= port <= spec.last for spec in map(parse_port_spec, rule.ports)
        ):
            continue
        is_any, nets = policy.resolve(rule.to)
        if (is_any or any(net.contains(family, address) for net in nets)) and interface_matches(
            rule.interface, interface
        ):
            return STATES[rule.action]
    return STATES[policy.defaults.outbound]


# ---------------------------------------------------------------------------------------------- offline

GRID_SOURCES = ["198.18.0.5", "198.18.0.77", "198.18.1.9", "198.18.11.200", "198.19.0.66", "198.19.0.99",
                "198.19.7.7", "2001:db8:0:1::5", "2001:db8:0:2::66", "2001:db8:0:2::99", "2001:db8:5::1",
                "2001:db8:9::9"]
GRID_INTERFACES = ["eth-lan", "eth-wan", "wg0", "other0"]


def grid_ports(loaded: LoadedPolicy) -> list[tuple[int, str]]:
    """Every port the policy names (each end of a range), plus neighbours nobody names."""
    ports = {(1, "tcp"), (65535, "udp"), (8080, "tcp"), (5353, "udp")}
    named = [rule.ports or [] for rule in loaded.policy.inbound] + [rule.ports or [] for rule in loaded.policy.outbound]
    for specs in named:
        for spec in map(parse_port_spec, specs):
            if spec.proto in ("tcp", "udp"):
                ports |= {(spec.first, spec.proto), (spec.last, spec.proto), (spec.last + 1, spec.proto)}
    return sorted(ports)


@needs_offline
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_firewalld_reads_it_as_the_policy_says(exported: Callable[[str], Exported], name: str) -> None:
    tree = exported(name)
    fw, loaded = tree.firewalld, tree.loaded
    assert tree.check.strip() == ""  # --check-config: silent when every file is valid
    # the one step the notes leave to the operator, done by read_back as they say
    assert any("--set-default-zone=portward" in note for note in tree.notes)
    assert fw.default_zone == "portward"
    # every rich rule written reached firewalld
    for path in (tree.root / "etc/firewalld/zones").glob("*.xml"):
        if path.stem.startswith(("portward", "pw-")):
            assert path.read_text().count("<rule ") == len(fw.zones[path.stem].rich), path.stem
    differences = []
    for port, proto in grid_ports(loaded):
        for source in GRID_SOURCES:
            for interface in GRID_INTERFACES:
                want = policy_inbound(loaded, source, port, proto, interface)
                got = firewalld_inbound(fw, source, port, proto, interface)
                if got == "admin-prohibited":  # firewalld's own reject target, never reached when ours is reject
                    got = "unexpected admin-prohibited"
                if want != got:
                    differences.append(("in", source, port, proto, interface, want, got))
                want = policy_outbound(loaded, source, port, proto, interface)
                got = firewalld_outbound(fw, source, port, proto, interface)
                if want != got:
                    differences.append(("out", source, port, proto, interface, want, got))
    assert differences == []


@needs_offline
def test_features_become_firewalld_terms(exported: Callable[[str], Exported]) -> None:
    tree = exported("features")
    fw, root, notes = tree.firewalld, tree.root, tree.notes
    zone = fw.zones["portward"]
    # open to any without a later deny: a plain port; 443 has a later drop, so it stays a rich rule in order
    assert set(zone.ports) == {("80", "tcp"), ("44321-44323", "tcp"), ("3868", "sctp"), ("5000-5010", "udp")}
    assert any(rule.port == ("443", "tcp") and rule.action == "accept" for rule in zone.rich)
    # the zone list of 6 networks is an ipset, the blocks are ipsets, both per family
    assert fw.ipsets["pw-block-v4"] == ["198.18.0.77", "198.19.0.99"]
    assert fw.ipsets["pw-block-v6"] == ["2001:db8:0:2::99"]
    dns = [rule for rule in zone.rich if rule.port == ("53", "udp") and rule.action == "accept"]
    assert {rule.source for rule in dns} == {("ipset", "pw-inb-dns-v4"), ("address", "2001:db8:0:1::/64")}
    # the rate: a limited accept, then the excess dropped at the next priority
    ssh = sorted((rule for rule in zone.rich if rule.port == ("22", "tcp")), key=lambda rule: rule.priority)
    assert [rule.action for rule in ssh] == ["accept", "drop"] and ssh[1].priority == ssh[0].priority + 1
    assert 'limit value="20/m"' in (root / "etc/firewalld/zones/portward.xml").read_text()
    # each interface a rule names gets a zone bound to it (wg* is firewalld's wg+) with its rules only
    assert fw.zones["pw-eth-lan"].interfaces == ["eth-lan"]
    assert fw.zones["pw-wg"].interfaces == ["wg+"]
    assert ("8443", "tcp") in fw.zones["pw-wg"].ports
    assert all(("8443", "tcp") not in fw.zones[name].ports for name in ("portward", "pw-eth-lan", "pw-eth-wan"))
    # outbound: HOST → ANY with the default, HOST → eth-wan's zone first and CONTINUE
    out, wan = fw.policies["portward-out"], fw.policies["pwo-eth-wan"]
    assert (out.target, out.ingress, out.egress) == ("DROP", ["HOST"], ["ANY"])
    assert (wan.target, wan.egress) == ("CONTINUE", ["pw-eth-wan"]) and wan.priority < out.priority
    assert fw.policies["portward-fwd"].target == "ACCEPT"
    joined = "\n".join(notes)
    for expected in ("knock 'k'", "one bucket shared by every source", "burst", "LogDenied", "'local'"):
        assert expected in joined


def test_stale_files_are_named(tmp_path: Path) -> None:
    from portward.dialects.firewalld import export
    from portward.policy.toml import load_policy_text

    (tmp_path / "etc/firewalld/zones").mkdir(parents=True)
    (tmp_path / "etc/firewalld/zones/pw-eth9.xml").write_text("<zone/>")
    (tmp_path / "etc/firewalld/zones/public.xml").write_text("<zone/>")
    rendered = export(load_policy_text("[defaults]\n", "p.toml"), "p.toml", tmp_path)
    stale = [note for note in rendered.notes if "earlier export" in note]
    assert len(stale) == 1 and "pw-eth9.xml" in stale[0]


def test_long_interface_names_fit_firewalld() -> None:
    from portward.dialects.firewalld import export
    from portward.policy.toml import load_policy_text

    text = "".join(
        f'[[inbound]]\nname = "r{i}"\nports = ["{22 + i}/tcp"]\nfrom = ["any"]\ninterface = "{iface}"\n'
        for i, iface in enumerate(["verylonginterfa", "verylonginterfb", "wg*"])
    )
    rendered = export(load_policy_text(text, "p.toml"), "p.toml", Path("/nonexistent"))
    zones = [Path(name).stem for name in rendered.files if "/zones/" in name]
    assert len(zones) == len(set(zones)) == 4 and all(len(zone) <= 17 for zone in zones)
    assert '<interface name="wg+" />' in "".join(rendered.files.values())


# ------------------------------------------------------------------------------------------------- live

LIVE = {
    "drop": """
[defaults]
inbound = "drop"
outbound = "drop"
[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64"]
[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
rate = "20/minute"
[[inbound]]
name = "web-refused"
ports = ["80/tcp"]
from = ["198.19.0.2"]
action = "reject"
[[inbound]]
name = "web"
ports = ["80/tcp", "443/tcp"]
from = ["any"]
[[inbound]]
name = "dns"
ports = ["53/tcp", "53/udp"]
from = ["lan"]
[[inbound]]
name = "admin"
ports = ["9090/tcp"]
from = ["any"]
interface = "eth-lan"
[[inbound]]
name = "snmp"
ports = ["161/udp"]
from = ["198.19.0.0/24"]
[[inbound]]
name = "mgmt"
from = ["2001:db8:0:2::2"]
[block]
from = ["2001:db8:0:1::2"]
[[outbound]]
name = "dns-out"
ports = ["53/tcp", "53/udp"]
to = ["lan"]
[[outbound]]
name = "web-out"
ports = ["22/tcp", "443/tcp"]
interface = "eth-wan"
""",
    "reject": """
[defaults]
inbound = "reject"
outbound = "accept"
forward = "keep"
[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64"]
[[inbound]]
name = "telnet"
ports = ["23/tcp"]
from = ["any"]
action = "drop"
[[inbound]]
name = "web"
ports = ["80/tcp", "443/tcp"]
from = ["any"]
[[inbound]]
name = "late-deny"
ports = ["443/tcp"]
from = ["lan"]
action = "reject"
[[inbound]]
name = "dns"
ports = ["53/udp"]
from = ["lan"]
[[outbound]]
name = "no-smtp"
ports = ["25/tcp"]
action = "reject"
[[outbound]]
name = "no-8080-wan"
ports = ["8080/tcp", "53/udp"]
interface = "eth-wan"
action = "drop"
""",
}
IN_PORTS = ["22/tcp", "23/tcp", "53/tcp", "80/tcp", "443/tcp", "8080/tcp", "9090/tcp", "53/udp", "161/udp",
            "5000/udp"]
OUT_PORTS = ["22/tcp", "25/tcp", "53/tcp", "80/tcp", "443/tcp", "8080/tcp", "53/udp"]
VANTAGE = {
    "lan": ("eth-lan", [SRV_LAN4, SRV_LAN6], [LAN4, LAN6]),
    "wan": ("eth-wan", [SRV_WAN4, SRV_WAN6], [WAN4, WAN6]),
}
# the dbus system bus and firewalld, inside srv's netns, with private /run and our tree as /etc/firewalld
DAEMONS = """
mount --make-rprivate / && mount --bind "$1/etc/firewalld" /etc/firewalld && mount -t tmpfs tmpfs /run || exit 1
mkdir -p /run/dbus && dbus-daemon --system --nofork --nopidfile &
while [ ! -S /run/dbus/system_bus_socket ]; do sleep 0.05; done
exec firewalld --nofork --nopid --log-target console
"""

Grid = dict[tuple[str, str, str], str]  # (direction + vantage, address, port) -> state


def probe_grid(lab: Lab) -> Grid:
    grid: Grid = {}
    for vantage, (_iface, server_addresses, client_addresses) in VANTAGE.items():
        for address, states in lab.probe_many(vantage, server_addresses, IN_PORTS).items():
            grid.update({(f"in-{vantage}", address, port): state for port, state in states.items()})
        for address, states in lab.probe_many("srv", client_addresses, OUT_PORTS).items():
            grid.update({(f"out-{vantage}", address, port): state for port, state in states.items()})
    return grid


def expected_grid(loaded: LoadedPolicy) -> Grid:
    grid: Grid = {}
    for vantage, (iface, _server, clients) in VANTAGE.items():
        for client in clients:
            for spec in IN_PORTS:
                port, proto = int(spec.split("/")[0]), spec.split("/")[1]
                server = _server_of(vantage, client)
                grid[(f"in-{vantage}", server, spec)] = policy_inbound(loaded, client, port, proto, iface)
            for spec in OUT_PORTS:
                port, proto = int(spec.split("/")[0]), spec.split("/")[1]
                grid[(f"out-{vantage}", client, spec)] = policy_outbound(loaded, client, port, proto, iface)
    return grid


def _server_of(vantage: str, client: str) -> str:
    lan4, lan6, wan4, wan6 = (SRV_LAN4, SRV_LAN6, SRV_WAN4, SRV_WAN6)
    return {LAN4: lan4, LAN6: lan6, WAN4: wan4, WAN6: wan6}[client]


@contextlib.contextmanager
def firewalld_running(lab: Lab, root: Path) -> Iterator[int]:
    """firewalld with its own D-Bus in srv; stopped (it flushes its table on exit) when the block ends."""
    proc = lab.popen("srv", ["unshare", "-m", "sh", "-c", DAEMONS, "sh", str(root)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "-n", "firewall-cmd", "--state"],
                                   capture_output=True, text=True, timeout=30)
            if state.stdout.strip() == "running":
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                lab.stop(proc)
                pytest.fail(f"firewalld did not start: {state.stdout}{state.stderr}")
            time.sleep(0.2)
        yield proc.pid
    finally:
        lab.stop(proc)


def firewall_cmd(pid: int, *args: str) -> str:
    done = subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "firewall-cmd", *args], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def served(lab_module: Lab) -> Iterator[Lab]:
    """Listeners on every grid port in srv (in) and in lan and wan (out)."""
    listeners = [lab_module.listen("srv", IN_PORTS), lab_module.listen("lan", OUT_PORTS),
                 lab_module.listen("wan", OUT_PORTS)]
    try:
        yield lab_module
    finally:
        for proc in listeners:
            lab_module.stop(proc)


@needs_offline
@needs_daemon
@pytest.mark.parametrize("name", sorted(LIVE))
def test_live_firewalld_agrees_with_nft_and_the_policy(served: Lab, tmp_path: Path, name: str) -> None:
    lab = served
    root, loaded, _notes = export_tree(tmp_path, LIVE[name])
    assert offline(root, "--set-default-zone=portward").returncode == 0
    expected = expected_grid(loaded)
    assert {"open", "closed", "filtered"} <= set(expected.values())
    lab.flush_ruleset("srv")
    try:
        with firewalld_running(lab, root) as pid:
            active = firewall_cmd(pid, "--get-active-zones")
            assert "portward" in active or "pw-" in active, active
            assert "portward" in firewall_cmd(pid, "--get-default-zone")
            by_firewalld = probe_grid(lab)
        lab.flush_ruleset("srv")
        lab.nft("srv", "-f", "-", stdin=render_text(compile_policy(loaded)))
        by_nft = probe_grid(lab)
    finally:
        lab.flush_ruleset("srv")
    assert len(expected) == 2 * 2 * (len(IN_PORTS) + len(OUT_PORTS))
    assert {key: by_nft[key] for key in expected} == expected
    assert {key: by_firewalld[key] for key in expected} == expected


@needs_offline
def test_read_back_notices_a_rule_firewalld_drops(tmp_path: Path) -> None:
    """The harness itself: firewalld only warns about a bad rich rule (exit 0), read_back must fail on it."""
    root, _loaded, _notes = export_tree(tmp_path, '[defaults]\ninbound = "reject"\nforward = "keep"\n')
    zone = root / "etc/firewalld/zones/portward.xml"
    zone.write_text(zone.read_text().replace('type="tcp-reset"', 'type="tcp-bogus"', 1))
    with pytest.raises(AssertionError, match="tcp-bogus"):
        read_back(root)


def test_rates_firewalld_refuses_are_adjusted_and_said() -> None:
    from portward.dialects.firewalld import export
    from portward.policy.toml import load_policy_text

    text = '[[inbound]]\nname = "vault"\nports = ["8200/tcp"]\nfrom = ["any"]\nrate = "1/day"\n'
    rendered = export(load_policy_text(text, "p.toml"), "p.toml", Path("/nonexistent"))
    assert '<limit value="2/d" />' in rendered.files["etc/firewalld/zones/portward.xml"]
    assert any('rate 1/day becomes firewalld\'s `limit value="2/d"`' in note for note in rendered.notes)
