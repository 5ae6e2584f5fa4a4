"""export --format iptables / ip6tables: files iptables-restore takes (nft and legacy), that answer every probe
as the nft ruleset of `portward apply` does.

The differential tests load the nft compile in srv, probe a grid of ports from the LAN, the WAN and srv itself
(TCP, UDP and ping, v4 and v6), then load the export with iptables-restore / ip6tables-restore instead and probe
the same grid: every probe must agree.  Conntrack is flushed between the two, so no flow admitted by one
ruleset is carried into the other as `established`.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from portward.dialects.iptables_out import (
    CHAIN_CHARS,
    HASHLIMIT_CHARS,
    MULTIPORT_SLOTS,
    address_matches,
    export_v4,
    export_v6,
    port_matches,
    render,
)
from portward.dialects.nft import compile_policy, render_text
from portward.policy.addresses import parse_net
from portward.policy.toml import LoadedPolicy, load_policy, load_policy_text
from tests.netlab import LAN4, LAN6, SRV_LAN4, SRV_LAN6, SRV_WAN4, SRV_WAN6, WAN4, WAN6, Lab
from tests.pwutil import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))

# every feature the export has: knock doors (multi-stage, single-knock, restricted), an SPA door, log_denied,
# block lists with ranges, rates (clamped ones too), multiport splitting, wildcards, reject, outbound
EVERYTHING = """
[defaults]
inbound = "reject"
outbound = "reject"
log_denied = true
ping = false
forward = "keep"
[zones]
v6only = ["2001:db8:5::/48", "2001:db8:6::1"]
mixed = ["198.18.3.0/24", "198.18.4.0/23", "2001:db8:7::/64", "198.18.9.1", "198.18.9.2"]
adjacent = [{adjacent}]
[[inbound]]
name = "all-from-mgmt"
from = ["v6only"]
[[inbound]]
name = "deny-telnet"
ports = ["23/tcp"]
from = ["any"]
action = "drop"
[[inbound]]
name = "range"
ports = ["1000-2000/udp", "1500/tcp", "3000/sctp", "3001-3005/sctp"]
from = ["mixed", "198.18.9.9"]
rate = "100/second burst 200"
interface = "eth-lan"
[[inbound]]
name = "many-ports-with-a-very-long-name-indeed"
ports = [{many}, "40-50/tcp"]
from = ["any"]
interface = "wg*"
rate = "1/day burst 5"
[[inbound]]
name = "many-ports-with-a-very-long-name-too"
ports = ["60/udp"]
from = ["any"]
rate = "99999999/second"
[[inbound]]
name = "lo-only"
ports = ["631/tcp"]
from = ["localhost"]
[[inbound]]
name = "rej"
from = ["adjacent"]
action = "reject"
[[outbound]]
name = "dns"
ports = ["53/udp", "53/tcp"]
to = ["198.18.0.53", "2001:db8::53"]
rate = "5/second"
[[outbound]]
name = "drop-rest-wan"
interface = "eth-wan"
action = "drop"
[block]
from = ["203.0.113.0/24", "2001:db8:bad::/48"]
files = ["blocklist.txt"]
[[knock]]
name = "ssh-door-with-a-name-longer-than-a-chain-may-be"
sequence = ["7000/tcp", "9000/udp", "8000/tcp", "6000/sctp"]
seq_timeout = 5
open = ["22/tcp", "2222/tcp", "60000-60010/udp"]
open_for = 30
[[knock]]
name = "one"
sequence = ["7777/udp"]
open = ["23/tcp"]
from = ["mixed"]
interface = "eth*"
[watch]
scan_ports = 5
[[spa]]
name = "s1"
open = ["22/tcp"]
key_base64 = "aGVsbG8="
hmac_key_base64 = "aGVsbG8="
""".format(
    adjacent=", ".join(f'"198.18.0.{i}"' for i in range(1, 15)),
    many=", ".join(f'"{port}/tcp"' for port in range(1, 36, 2)),
)
BLOCKLIST = "198.51.100.1\n198.51.100.3\n198.51.100.4/30\n198.51.100.8/29\n198.51.100.16/28\n2001:db8:bad:1::1\n"

# ------------------------------------------------------------------------------------------ helpers


def load(text: str, folder: Path | None = None) -> LoadedPolicy:
    if folder is None:
        return load_policy_text(text, "p.toml")
    (folder / "blocklist.txt").write_text(BLOCKLIST)
    return load_policy_text(text, str(folder / "p.toml"))


def v4(loaded: LoadedPolicy) -> str:
    return render(loaded, 4)[0]


def v6(loaded: LoadedPolicy) -> str:
    return render(loaded, 6)[0]


def rules(text: str, chain: str = "INPUT") -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"-A {chain} ")]


@functools.cache
def legacy_works() -> bool:
    """iptables-legacy needs the ip_tables modules; some kernels have only nf_tables."""
    if shutil.which("iptables-legacy-restore") is None or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-n", "iptables-legacy-restore"],
        input="*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n",
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.returncode == 0


VARIANTS = ["nft", pytest.param("legacy", marks=pytest.mark.skipif(not legacy_works(), reason="no legacy iptables"))]
TOOLS = {("nft", 4): "iptables-restore", ("nft", 6): "ip6tables-restore"}
TOOLS |= {("legacy", 4): "iptables-legacy-restore", ("legacy", 6): "ip6tables-legacy-restore"}
EMPTY_FILTER = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

# -------------------------------------------------------------------------- 1. the real tools accept it


@pytest.mark.parametrize("variant", VARIANTS)
def test_restore_accepts_every_policy(lab_module: Lab, tmp_path: Path, variant: str) -> None:
    policies = {path.name: load_policy(path) for path in EXAMPLES}
    policies["everything"] = load(EVERYTHING, tmp_path)
    policies["empty"] = load("")
    policies |= {name: load(text) for name, text in DIFFERENTIAL.items()}
    policies["knock"] = load(KNOCK)
    assert "server.toml" in policies
    for name, loaded in policies.items():
        for family in (4, 6):
            text = render(loaded, family)[0]
            checked = lab_module.run("srv", [TOOLS[(variant, family)], "--test"], input=text)
            assert checked.returncode == 0, f"{name} v{family}: {checked.stderr}\n{text}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_takes_every_rule(lab_module: Lab, tmp_path: Path, variant: str) -> None:
    """Loaded for real (hashlimit and recent settings are checked by the kernel, not by --test)."""
    loaded = load(EVERYTHING, tmp_path)
    try:
        for family in (4, 6):
            text = render(loaded, family)[0]
            done = lab_module.run("srv", [TOOLS[(variant, family)]], input=text)
            assert done.returncode == 0, done.stderr
            save = "iptables-save" if family == 4 else "ip6tables-save"
            if variant == "legacy":
                save = save.replace("tables-save", "tables-legacy-save")
            listed = lab_module.run("srv", [save, "-t", "filter"]).stdout
            # iptables splits `-s a,b,c` into one rule per address; nothing else is dropped or added
            written = sum(len(_sources(line)) for line in text.splitlines() if line.startswith("-A "))
            assert sum(1 for line in listed.splitlines() if line.startswith("-A ")) == written
    finally:
        _reset(lab_module)


def _sources(line: str) -> list[str]:
    words = line.split()
    for flag in ("-s", "-d"):
        if flag in words:
            return words[words.index(flag) + 1].split(",")
    return [""]


def _reset(lab: Lab) -> None:
    """No ruleset at all in srv: nft tables (iptables-nft's included) and iptables-legacy's filter tables."""
    lab.flush_ruleset("srv")
    if legacy_works():
        for family in (4, 6):
            lab.run("srv", [TOOLS[("legacy", family)]], input=EMPTY_FILTER, check=True)


# ------------------------------------------------------------------------- 2. differential, in a lab

TCP_GRID = [22, 23, 80, 443, 1500, 3128, 8080, 9090, 5001, 5002, 5029, 5035, 5036]
UDP_GRID = [53, 161, 1000, 1500, 2000, 2001, 5353, 8080]
OUT_TCP = [22, 53, 80, 443, 8080]
OUT_UDP = [53, 123]
ZONES = '[zones]\nlan = ["198.18.0.0/24", "2001:db8:0:1::/64"]\nwan = ["198.19.0.0/24", "2001:db8:0:2::/64"]\n'
MANY = ", ".join(f'"{port}/tcp"' for port in range(5001, 5036, 2))  # 18 ports: two multiport matches

DIFFERENTIAL = {
    "lan-wan-sources": ZONES
    + """
[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
[[inbound]]
name = "web"
ports = ["80/tcp", "443/tcp"]
from = ["any"]
[[inbound]]
name = "cockpit"
ports = ["9090/tcp"]
from = ["localhost", "lan"]
[[inbound]]
name = "udp-range"
ports = ["1000-2000/udp"]
from = ["lan"]
interface = "eth-lan"
[[inbound]]
name = "no-8080-from-wan"
ports = ["8080/tcp", "8080/udp"]
from = ["wan"]
action = "reject"
[[inbound]]
name = "8080"
ports = ["8080/tcp", "8080/udp"]
from = ["any"]
[[inbound]]
name = "proxy-v6-wan"
ports = ["3128/tcp"]
from = ["2001:db8:0:2::/64"]
[[inbound]]
name = "dns-hosts"
ports = ["53/udp"]
from = ["198.18.0.2", "198.19.0.0/25", "2001:db8:0:1::2"]
""",
    "reject-block-noping": """
[defaults]
inbound = "reject"
ping = false
log_denied = true
[block]
from = ["2001:db8:0:2::2", "203.0.113.0/24"]
[[inbound]]
name = "telnet-drop"
ports = ["23/tcp"]
from = ["any"]
action = "drop"
[[inbound]]
name = "many"
ports = [{many}]
from = ["any"]
[[inbound]]
name = "wan-side-only"
ports = ["9090/tcp"]
from = ["any"]
interface = "eth-wan"
[[inbound]]
name = "snmp"
ports = ["161/udp"]
from = ["198.18.0.0/24", "198.19.0.0/24"]
[[inbound]]
name = "all-from-lan6"
from = ["2001:db8:0:1::2"]
""".replace("{many}", MANY),
    "outbound-restricted": ZONES
    + """
[defaults]
inbound = "accept"
outbound = "drop"
forward = "keep"
[[inbound]]
name = "no-ssh-from-wan"
ports = ["22/tcp"]
from = ["wan"]
action = "drop"
[[inbound]]
name = "reject-web-lan4"
ports = ["80/tcp", "5353/udp"]
from = ["198.18.0.0/24"]
action = "reject"
[[outbound]]
name = "ssh-web-lan"
ports = ["22/tcp", "80/tcp"]
to = ["lan"]
[[outbound]]
name = "dns"
ports = ["53/udp", "53/tcp"]
to = ["any"]
[[outbound]]
name = "https-wan6"
ports = ["443/tcp"]
to = ["2001:db8:0:2::/64"]
[[outbound]]
name = "no-8080"
ports = ["8080/tcp"]
to = ["any"]
action = "reject"
""",
    "interfaces-outbound-reject": """
[defaults]
inbound = "drop"
outbound = "reject"
[[inbound]]
name = "reject-some-on-lan"
ports = ["80/tcp", "1000-2000/udp"]
from = ["any"]
interface = "eth-lan"
action = "reject"
[[inbound]]
name = "wan-side"
from = ["any"]
interface = "eth-w*"
[[outbound]]
name = "lan-side"
to = ["any"]
interface = "eth-l*"
[[outbound]]
name = "dns-v4-wan"
ports = ["53/udp"]
to = ["198.19.0.2"]
""",
}

PING = r"""
import json, os, select, socket, struct, sys, time

def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

result = {}
for target in sys.argv[1:]:
    v6 = ":" in target
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    sock = socket.socket(family, socket.SOCK_RAW, proto)
    ident = os.getpid() & 0xFFFF
    packet = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, 1) + b"portward"
    if not v6:  # the kernel sums ICMPv6 itself, not ICMP
        packet = packet[:2] + struct.pack("!H", checksum(packet)) + packet[4:]
    try:
        sock.sendto(packet, (target, 0))
    except OSError:  # dropped on the way out
        result[target] = "filtered"
        continue
    state, deadline = "filtered", time.monotonic() + 0.5
    while (left := deadline - time.monotonic()) > 0 and select.select([sock], [], [], left)[0]:
        data = sock.recv(2048)
        data = data if v6 else data[(data[0] & 15) * 4 :]
        if data[0] == (129 if v6 else 0) and struct.unpack_from("!H", data, 4)[0] == ident:
            state = "open"
            break
    result[target] = state
print(json.dumps(result))
"""

FLUSH_CONNTRACK = r"""
import socket, struct
# IPCTNL_MSG_CT_DELETE of NFNL_SUBSYS_CTNETLINK with no tuple deletes every entry (conntrack -F)
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
sock.send(struct.pack("=IHHII", 16 + len(body), (1 << 8) | 2, 0x1 | 0x4, 1, 0) + body)
reply = sock.recv(4096)
kind = struct.unpack_from("=H", reply, 4)[0]
error = struct.unpack_from("=i", reply, 16)[0] if kind == 2 else 0
raise SystemExit(0 if error in (0, -2) else f"conntrack flush failed: {error}")
"""

Grid = dict[str, str]


@pytest.fixture(scope="module")
def grid_lab(lab_module: Lab) -> Iterator[Lab]:
    lab = lab_module
    lab.listen("srv", [f"{port}/tcp" for port in TCP_GRID] + [f"{port}/udp" for port in UDP_GRID])
    for side in ("lan", "wan"):
        lab.listen(side, [f"{port}/tcp" for port in OUT_TCP] + [f"{port}/udp" for port in OUT_UDP])
    yield lab
    _reset(lab)


def _ping(lab: Lab, ns: str, targets: list[str]) -> dict[str, str]:
    done = lab.run(ns, [sys.executable, "-I", "-S", "-c", PING, *targets])
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result


def probe_grid(lab: Lab) -> Grid:
    """Every probe of the grid at once (lan, wan and srv in parallel): {"lan>198.18.0.1 22/tcp": state}."""
    inbound = [f"{port}/tcp" for port in TCP_GRID] + [f"{port}/udp" for port in UDP_GRID]
    outbound = [f"{port}/tcp" for port in OUT_TCP] + [f"{port}/udp" for port in OUT_UDP]
    jobs: dict[str, Callable[[], dict[str, dict[str, str]]]] = {
        "lan": lambda: lab.probe_many("lan", [SRV_LAN4, SRV_LAN6], inbound),
        "wan": lambda: lab.probe_many("wan", [SRV_WAN4, SRV_WAN6], inbound),
        "srv": lambda: lab.probe_many("srv", [LAN4, LAN6, WAN4, WAN6], outbound),
        "ping-lan": lambda: {t: {"ping": s} for t, s in _ping(lab, "lan", [SRV_LAN4, SRV_LAN6]).items()},
        "ping-wan": lambda: {t: {"ping": s} for t, s in _ping(lab, "wan", [SRV_WAN4, SRV_WAN6]).items()},
        "ping-srv": lambda: {t: {"ping": s} for t, s in _ping(lab, "srv", [LAN4, WAN6]).items()},
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        results = {name: future.result() for name, future in futures.items()}
    return {
        f"{name.removeprefix('ping-')}>{target} {port}": state
        for name, by_target in results.items()
        for target, by_port in by_target.items()
        for port, state in by_port.items()
    }


def flush_conntrack(lab: Lab) -> None:
    done = lab.run("srv", [sys.executable, "-I", "-S", "-c", FLUSH_CONNTRACK])
    assert done.returncode == 0, done.stderr


def load_nft(lab: Lab, loaded: LoadedPolicy, variant: str = "nft") -> None:
    _reset(lab)
    flush_conntrack(lab)
    lab.nft("srv", "-f", "-", stdin=render_text(compile_policy(loaded)))


def load_iptables(lab: Lab, loaded: LoadedPolicy, variant: str = "nft") -> None:
    _reset(lab)
    flush_conntrack(lab)
    for family in (4, 6):
        done = lab.run("srv", [TOOLS[(variant, family)]], input=render(loaded, family)[0])
        assert done.returncode == 0, done.stderr


PROBES_COMPARED: list[int] = []


@pytest.mark.parametrize("name", sorted(DIFFERENTIAL))
def test_same_verdicts_as_nft(grid_lab: Lab, name: str) -> None:
    loaded = load(DIFFERENTIAL[name])
    load_nft(grid_lab, loaded)
    by_nft = probe_grid(grid_lab)
    load_iptables(grid_lab, loaded)
    by_iptables = probe_grid(grid_lab)
    assert by_nft.keys() == by_iptables.keys()
    differing = {key: (by_nft[key], by_iptables[key]) for key in by_nft if by_nft[key] != by_iptables[key]}
    assert not differing, f"nft vs iptables: {differing}"
    PROBES_COMPARED.append(len(by_nft))
    # the grid is not all one answer: each policy admits, refuses and rejects something
    assert {"open", "closed", "filtered"} <= set(by_nft.values())
    print(f"{name}: {len(by_nft)} probes agree; {sum(PROBES_COMPARED)} so far")


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_same_verdicts_with_legacy_iptables(grid_lab: Lab, variant: str) -> None:
    loaded = load(DIFFERENTIAL["reject-block-noping"])
    load_nft(grid_lab, loaded, variant)
    by_nft = probe_grid(grid_lab)
    load_iptables(grid_lab, loaded, variant)
    by_legacy = probe_grid(grid_lab)
    differing = {key: (by_nft[key], by_legacy[key]) for key in by_nft if by_nft[key] != by_legacy[key]}
    assert not differing, f"nft vs iptables-legacy: {differing}"
    PROBES_COMPARED.append(len(by_nft))


def test_differential_grid_means_something(grid_lab: Lab) -> None:
    """Spot checks, so that a grid where both rulesets fail the same way cannot pass."""
    loaded = load(DIFFERENTIAL["lan-wan-sources"])
    load_iptables(grid_lab, loaded)
    seen = probe_grid(grid_lab)
    assert seen[f"lan>{SRV_LAN4} 9090/tcp"] == "open" and seen[f"wan>{SRV_WAN4} 9090/tcp"] == "filtered"
    assert seen[f"wan>{SRV_WAN4} 8080/tcp"] == "closed" and seen[f"lan>{SRV_LAN6} 8080/tcp"] == "open"
    assert seen[f"wan>{SRV_WAN6} 3128/tcp"] == "open" and seen[f"wan>{SRV_WAN4} 3128/tcp"] == "filtered"
    assert seen[f"lan>{SRV_LAN4} 1500/udp"] == "open" and seen[f"wan>{SRV_WAN4} 1500/udp"] == "filtered"
    assert seen[f"lan>{SRV_LAN4} ping"] == "open"
    loaded = load(DIFFERENTIAL["outbound-restricted"])
    load_iptables(grid_lab, loaded)
    seen = probe_grid(grid_lab)
    assert seen[f"srv>{LAN4} 22/tcp"] == "open" and seen[f"srv>{WAN4} 22/tcp"] == "filtered"
    assert seen[f"srv>{WAN6} 443/tcp"] == "open" and seen[f"srv>{WAN4} 443/tcp"] == "filtered"
    assert seen[f"srv>{LAN6} 8080/tcp"] == "closed"


# rate: the hashlimit rule admits the first burst per source and family, then drops, like nft's meter

RATE = '[[inbound]]\nname = "ssh"\nports = ["22/tcp"]\nfrom = ["any"]\nrate = "3/minute burst 4"\n'
CONNECTS = r"""
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
admitted = 0
for _ in range(count):
    try:
        socket.create_connection((host, port), timeout=0.25).close()
        admitted += 1
    except OSError:
        pass
print(admitted)
"""


def _admitted(lab: Lab, ns: str, host: str, count: int = 7) -> int:
    done = lab.run(ns, [sys.executable, "-I", "-S", "-c", CONNECTS, host, "22", str(count)])
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_rate_limit_like_nft(grid_lab: Lab) -> None:
    loaded = load(RATE)
    counts: dict[str, list[int]] = {}
    # each source and family has its own bucket, also when two sources connect to the same address
    sources = [("lan", SRV_LAN4), ("lan", SRV_LAN6), ("wan", SRV_LAN4)]
    for name, loader in (("nft", load_nft), ("iptables", load_iptables)):
        loader(grid_lab, loaded)
        with ThreadPoolExecutor(len(sources)) as pool:
            counts[name] = list(pool.map(lambda source: _admitted(grid_lab, *source), sources))
    assert counts["iptables"] == counts["nft"], counts
    assert all(4 <= count <= 5 for count in counts["nft"]), counts  # the burst, not all 7 and not 0


# knock doors: the same door opens and closes the same way under both

KNOCK = """
[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64"]
[[knock]]
name = "ssh"
sequence = ["7000/tcp", "9000/udp", "8000/tcp"]
seq_timeout = 2
open = ["22/tcp"]
open_for = 2
from = ["lan"]
"""


KNOCKER = r"""
import socket, sys, time
host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
for spec in sys.argv[2:]:
    port, _, proto = spec.partition(":")
    if proto == "udp":
        socket.socket(family, socket.SOCK_DGRAM).sendto(b"knock", (host, int(port)))
    else:  # one SYN from a fresh port, as knockd's `knock` sends
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((host, int(port)))
        time.sleep(0.01)
        sock.close()
    time.sleep(0.02)
"""


def _knock(lab: Lab, ns: str, host: str, *ports: str) -> None:
    done = lab.run(ns, [sys.executable, "-I", "-S", "-c", KNOCKER, host, *ports])
    assert done.returncode == 0, done.stderr


def _door_story(lab: Lab) -> list[str]:
    def ssh(*sources: tuple[str, str]) -> list[str]:
        """Port 22 as each (namespace, address) sees it, all at once."""
        with ThreadPoolExecutor(len(sources)) as pool:
            found = pool.map(lambda source: lab.probe(source[0], source[1], ["22/tcp"], 0.3)["22/tcp"], sources)
            return list(found)

    lan4, lan6, wan4 = ("lan", SRV_LAN4), ("lan", SRV_LAN6), ("wan", SRV_WAN4)
    _knock(lab, "lan", SRV_LAN4, "7000", "8000", "9000:udp")  # wrong order
    _knock(lab, "lan", SRV_LAN6, "7000", "9000:udp", "1234", "8000")  # a wrong knock in between
    _knock(lab, "wan", SRV_WAN4, "7000", "9000:udp", "8000")  # right, but not in the door's `from`
    story = ssh(lan4, lan6, wan4)
    _knock(lab, "lan", SRV_LAN4, "7000", "7000", "9000:udp", "8000")  # a repeat is tolerated
    story += ssh(lan4, lan6)  # v6 did not knock
    _knock(lab, "lan", SRV_LAN6, "7000", "9000:udp", "8000")
    story += ssh(lan6)
    _knock(lab, "lan", SRV_LAN4, "7000", "9000:udp")  # too slow: the last knock comes after seq_timeout
    time.sleep(2.3)  # seq_timeout = 2 and open_for = 2: both grants have run out too
    _knock(lab, "lan", SRV_LAN4, "8000")
    return story + ssh(lan4, lan6)


def test_knock_door_like_nft(grid_lab: Lab) -> None:
    loaded = load(KNOCK)
    load_nft(grid_lab, loaded)
    by_nft = _door_story(grid_lab)
    load_iptables(grid_lab, loaded)
    by_iptables = _door_story(grid_lab)
    assert by_nft == ["filtered"] * 3 + ["open", "filtered"] + ["open"] + ["filtered"] * 2
    assert by_iptables == by_nft


# ------------------------------------------------------------------------------- 3. rendering edge cases


def test_multiport_splits_at_fifteen_slots() -> None:
    fifteen = tuple((port, port) for port in range(1, 30, 2))
    assert port_matches("tcp", fifteen) == [
        ["-p", "tcp", "-m", "multiport", "--dports", "1,3,5,7,9,11,13,15,17,19,21,23,25,27,29"]
    ]
    sixteen = (*fifteen, (40, 40))
    assert [match[-1] for match in port_matches("tcp", sixteen)] == ["1,3,5,7,9,11,13,15,17,19,21,23,25,27,29", "40"]
    # a range takes two slots: seven ranges and one port fill a match, eight ranges do not
    ranges = tuple((port, port + 1) for port in range(100, 116, 2))
    assert len(port_matches("udp", (*ranges[:7], (200, 200)))) == 1
    split = port_matches("udp", ranges)
    assert [match[-1] for match in split] == ["100:101,102:103,104:105,106:107,108:109,110:111,112:113", "114:115"]
    assert split[1] == ["-p", "udp", "--dport", "114:115"]
    for match in split:
        ports = match[-1].split(",")
        assert sum(2 if ":" in port else 1 for port in ports) <= MULTIPORT_SLOTS


def test_multiport_in_a_rendered_rule() -> None:
    text = v4(load(DIFFERENTIAL["reject-block-noping"]))
    many = [line for line in rules(text) if '"inbound many"' in line]
    assert len(many) == 2
    assert "--dports 5001,5003,5005,5007,5009,5011,5013,5015,5017,5019,5021,5023,5025,5027,5029 " in many[0]
    assert "--dports 5031,5033,5035 " in many[1]


def test_addresses_cidrs_ranges_and_lists() -> None:
    nets = [parse_net("198.18.0.0/24"), parse_net("198.18.2.1")]
    assert address_matches(nets, 4, "src") == [["-s", "198.18.0.0/24,198.18.2.1"]]
    assert address_matches(nets, 6, "src") == []
    # 198.18.1.1-198.18.1.14 is six CIDRs: one iprange match instead
    from portward.policy.addresses import Net

    odd = Net(4, parse_net("198.18.1.1").first, parse_net("198.18.1.14").first)
    assert address_matches([odd], 4, "dst") == [["-m", "iprange", "--dst-range", "198.18.1.1-198.18.1.14"]]
    few = Net(4, parse_net("198.18.3.0").first, parse_net("198.18.5.255").first)  # two CIDRs
    assert address_matches([few], 4, "src") == [["-s", "198.18.3.0/24,198.18.4.0/23"]]
    pair = Net(6, parse_net("2001:db8::1").first, parse_net("2001:db8::2").first)
    assert address_matches([pair], 6, "src") == [["-s", "2001:db8::1,2001:db8::2"]]
    # long lists are cut so that no line outgrows iptables-restore's buffer
    many = [parse_net(f"198.18.{i >> 8}.{i & 255}") for i in range(0, 4000, 2)]
    matches = address_matches(many, 4, "src")
    assert len(matches) > 1 and all(len(match[1]) <= 1000 for match in matches)
    assert sum(len(match[1].split(",")) for match in matches) == 2000


def test_families_are_separate() -> None:
    loaded = load(EVERYTHING.replace("blocklist.txt", str(ROOT / "examples" / "blocklist.txt")))
    text4, text6 = v4(loaded), v6(loaded)
    assert "all-from-mgmt" not in text4 and "-s 2001:db8:5::/48,2001:db8:6::1" in text6
    assert "2001:db8" not in "\n".join(line for line in text4.splitlines() if not line.startswith("#"))
    assert "198.18." not in text6 and "203.0.113" not in text6 and "-s 203.0.113.0/24" in text4
    assert "--icmp-type" in text4 and "ipv6-icmp" not in text4 and "icmp6-port-unreachable" not in text4
    assert "--icmpv6-type neighbour-solicitation" in text6 and "--icmpv6-type 143" in text6
    assert "--icmp-type" not in text6 and "icmp-port-unreachable" not in text6.replace("icmp6-port", "")
    assert "knock_one_open_v4" in text4 and "knock_one_open_v6" in text6 and "_v6" not in text4


def test_empty_policy() -> None:
    text = v4(load(""))
    assert ":INPUT DROP [0:0]" in text and ":FORWARD DROP [0:0]" in text and ":OUTPUT ACCEPT [0:0]" in text
    assert [line.split(" --comment ")[1].split(" -j")[0] for line in rules(text)] == [
        "loopback", "established", "invalid", *['"icmp essential"'] * 3, '"icmp echo"'
    ]  # fmt: skip
    assert not rules(text, "OUTPUT") and text.rstrip().endswith("COMMIT")
    assert len(rules(v6(load("")))) == 3 + 11 + 1
    accept = v4(load('[defaults]\ninbound = "accept"\nforward = "accept"\n'))
    assert ":INPUT ACCEPT" in accept and ":FORWARD ACCEPT" in accept and "REJECT" not in accept


def test_rules_follow_the_nft_order() -> None:
    """The same rules in the same order under the same comments as the nft compile, family by family."""

    def collapsed(comments: list[str]) -> list[str]:
        return [c for i, c in enumerate(comments) if i == 0 or comments[i - 1] != c]

    for name in ("lan-wan-sources", "reject-block-noping"):
        loaded = load(DIFFERENTIAL[name])
        for family, other in ((4, ("ip6", "icmpv6")), (6, ("ip", "icmp"))):
            nft_rules = compile_policy(loaded).rules_of("input")
            mine = [
                str(rule.comment)
                for rule in nft_rules
                if not any(f'"protocol": "{proto}"' in json.dumps(rule.expr) for proto in other)
            ]
            text = render(loaded, family)[0]
            written = [line.split("--comment ")[1].split(" -j ")[0].strip('"') for line in rules(text)]
            if "block log" in mine:  # one chain logs and drops for every blocked source: one limit, as in nft
                mine.remove("block log")
                assert [line.split("--comment ")[1] for line in rules(text, "portward-block")] == [
                    '"block log" -j NFLOG --nflog-group 7601 --nflog-prefix "portward denied "',
                    "block -j DROP",
                ]
            assert collapsed(written) == collapsed(mine), (name, family)


def test_names_fit_iptables_limits() -> None:
    loaded = load(EVERYTHING.replace("blocklist.txt", str(ROOT / "examples" / "blocklist.txt")))
    text = v4(loaded)
    chains = [line[1:].split()[0] for line in text.splitlines() if line.startswith(":")]
    assert len(chains) == len(set(chains)) and all(len(chain) <= CHAIN_CHARS for chain in chains)
    words = text.split()
    tables = {words[i + 1] for i, word in enumerate(words) if word == "--hashlimit-name"}
    assert len(tables) == 4 and all(len(table) <= HASHLIMIT_CHARS for table in tables)
    # another rate for the same rule is another table: the kernel would keep the old one's settings
    other = v4(
        load(
            EVERYTHING.replace('"5/second"', '"6/second"').replace(
                "blocklist.txt", str(ROOT / "examples/blocklist.txt")
            )
        )
    )
    words = other.split()
    assert {words[i + 1] for i, word in enumerate(words) if word == "--hashlimit-name"} != tables


def test_notes_say_what_does_not_carry_over(tmp_path: Path) -> None:
    loaded = load(EVERYTHING, tmp_path)
    text, notes = render(loaded, 4)
    joined = "\n".join(notes)
    assert "spa 's1'" in joined and "portward spad" in joined
    assert "'lo-only': only localhost" in joined
    assert "forward = keep" in joined
    assert "xt_recent" in joined
    assert "[watch]" in joined and "not banned" in joined
    assert "'1/day burst 5'" in joined and "burst 1 instead" in joined and "--hashlimit-burst 1 " in text
    assert "faster than hashlimit" in joined and "--hashlimit-above 1000000/second" in text
    assert all(f"# note: {note}" in text for note in notes)
    assert '-p udp --dport 62201 -m comment --comment "spa s1 silent" -j DROP' in text
    assert not render(load(DIFFERENTIAL["lan-wan-sources"]), 4)[1]


def test_large_block_list_works_with_a_note(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("".join(f"198.19.{i >> 8}.{i & 255}\n" for i in range(0, 6000, 2)))
    loaded = load_policy_text('[block]\nfiles = ["big.txt"]\n', str(tmp_path / "p.toml"))
    text, notes = render(loaded, 4)
    assert any("3000 rules" in note and "nft" in note for note in notes)
    assert sum(len(line.split()[3].split(",")) for line in rules(text) if "--comment block" in line) == 3000
    assert not render(loaded, 6)[1]
    zone = ", ".join(f'"198.19.{i >> 8}.{i & 255}"' for i in range(0, 3000, 2))
    web = f'[zones]\nmany = [{zone}]\n[[inbound]]\nname = "web"\nports = ["80/tcp", "53/udp"]\nfrom = ["many"]\n'
    assert any("inbound 'web' becomes 3000 rules" in note for note in render(load(web), 4)[1])


def test_quoting_and_interface_wildcards() -> None:
    text = v4(load(DIFFERENTIAL["interfaces-outbound-reject"]))
    assert '-A INPUT -i eth-w+ -m comment --comment "inbound wan-side" -j ACCEPT' in text
    assert '-A OUTPUT -o eth-l+ -m comment --comment "outbound lan-side" -j ACCEPT' in text
    assert (
        '-p tcp --dport 80 -m comment --comment "inbound reject-some-on-lan" -j REJECT --reject-with tcp-reset' in text
    )
    log = v4(load(DIFFERENTIAL["reject-block-noping"]))
    assert '--nflog-group 7601 --nflog-prefix "portward denied "' in log


def test_export_writers_and_cli(tmp_path: Path) -> None:
    loaded = load(DIFFERENTIAL["lan-wan-sources"])
    four, six = export_v4(loaded, "p.toml", tmp_path), export_v6(loaded, "p.toml", tmp_path)
    assert list(four.files) == ["etc/iptables/rules.v4"] and list(six.files) == ["etc/iptables/rules.v6"]
    assert four.stream and six.stream
    policy = tmp_path / "p.toml"
    policy.write_text(DIFFERENTIAL["lan-wan-sources"])
    for fmt, name in (("iptables", "rules.v4"), ("ip6tables", "rules.v6")):
        done = subprocess.run(
            [sys.executable, "-m", "portward", "export", "--format", fmt, "-p", str(policy), "--root", str(tmp_path)],
            capture_output=True,
            text=True,
            check=False,
            env={"PYTHONPATH": str(ROOT / "src")},
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "etc/iptables" / name).read_text().splitlines()[-1] == "COMMIT"
