"""`portward watch` in the namespace lab, against the applied ruleset: denied attempts are reported within a
second (v4, v6), a sweep is one scan alert, one spawn and one kernel ban that shuts even allowed ports for the
scanner only, is in force before the next packet with no watch at all, and lifts by itself; a SYN flood leaves
watch alive, its output bounded, its memory flat and no zombie behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import LAN4, LAN6, SRV_LAN4, SRV_LAN6, SRV_WAN4, SRV_WAN6, WAN4, WAN6, Lab
from tests.pwutil import Portward, write

POLICY = """
[defaults]
inbound = "drop"
log_denied = true

[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]

[watch]
scan_ports = 10
scan_window = 5
ban_for = {ban_for}
severity = "alert"
spawn = {spawn}
"""

# From a client: once told to on stdin, a TCP connect to 23 and a UDP datagram to 69 (both denied); prints the
# wall time it sent them, then keeps the TCP attempt alive (its SYN is retransmitted) until stdin closes.
ATTEMPTS = r"""
import socket, sys, time
host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
print("ready", flush=True)
sys.stdin.readline()
sent = time.time()
tcp = socket.socket(family, socket.SOCK_STREAM)
tcp.setblocking(False)
tcp.connect_ex((host, 23))
socket.socket(family, socket.SOCK_DGRAM).sendto(b"attempt", (host, 69))
print(sent, flush=True)
sys.stdin.read()
"""

# Raw TCP SYNs (IPv4, right checksums: conntrack drops bad ones as invalid before any rule counts them) from
# `pool` consecutive source addresses starting at `first`, to random ports of `dst`, `count` of them, at most
# `rate` per second (0: as fast as it can). Prints "sent seconds".
SYN_FLOOD = r"""
import random, socket, struct, sys, time
dst, count, first, pool, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
base = struct.unpack("!I", socket.inet_aton(first))[0]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
daddr = socket.inet_aton(dst)
rand = random.getrandbits
FLAGS, WINDOW = (5 << 12) | 0x02, 65535

def syn(saddr, sport, dport, seq):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, saddr, daddr)  # the kernel fills id, checksum
    total = sum(struct.unpack("!6H", saddr + daddr + b"\x00\x06\x00\x14"))
    total += FLAGS + WINDOW + sport + dport + (seq >> 16) + (seq & 0xFFFF)
    total = (total & 0xFFFF) + (total >> 16); total = (total & 0xFFFF) + (total >> 16)
    return ip + struct.pack("!HHIIHHHH", sport, dport, seq, 0, FLAGS, WINDOW, ~total & 0xFFFF, 0)

sent, start = 0, time.perf_counter()
while sent < count:
    saddr = struct.pack("!I", base + rand(32) % pool)
    try:
        s.sendto(syn(saddr, 1024 + rand(15), 1 + rand(16) % 65535, rand(32)), (dst, 0))
        sent += 1
    except OSError:
        pass
    if rate and sent % 64 == 0:
        ahead = sent / rate - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
print(sent, time.perf_counter() - start)
"""

# From the scanner: 9 denied ports, a connect to an allowed one (must work), the threshold port, and at once
# another connect to the allowed one (must get no answer). Prints JSON: the gap in ms between the two SYNs and
# the wall time the threshold SYN was sent.
THRESHOLD = r"""
import json, select, socket, sys, time
host, allowed, scan_ports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET

def syn(port):
    s = socket.socket(family, socket.SOCK_STREAM); s.setblocking(False)
    s.connect_ex((host, port))  # the SYN is out when connect returns
    return s

def answered(s, wait):
    _, writable, _ = select.select([], [s], [], wait)
    return bool(writable) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0

kept = [syn(port) for port in range(2001, 2000 + scan_ports)]
before = answered(syn(allowed), 1.0)
wall = time.time()
kept.append(syn(2000 + scan_ports))
threshold = time.perf_counter()
probe = syn(allowed)
gap = time.perf_counter() - threshold
print(json.dumps({"before": before, "after": answered(probe, 0.5), "gap_ms": gap * 1000, "sent": wall}))
"""


class Watch:
    """`portward watch --json --log-file F` in srv, with the policy applied first."""

    def __init__(self, lab: Lab, tmp_path: Path, *, ban_for: int = 3, spawn: list[str] | None = None) -> None:
        self.lab, self.tmp_path = lab, tmp_path
        self.log = tmp_path / "watch.log"
        self.portward = Portward(lab, tmp_path / "state")
        text = POLICY.format(ban_for=ban_for, spawn=json.dumps(spawn or ["true"]))
        self.policy = write(tmp_path / "p.toml", text)
        self.portward.ok("apply", "-p", str(self.policy), "--yes")
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "portward", "watch", "-p", str(self.policy), "--json", "--log-file",
                str(self.log)]
        with (self.tmp_path / "stdout").open("a") as out:
            self.proc = self.lab.popen("srv", argv, stdout=out, stderr=subprocess.STDOUT, env=self.portward.env())
        self.wait_for("ready", timeout=20)

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        found = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [item for item in found if event is None or item["event"] == event]

    def wait_for(self, event: str, *, count: int = 1, timeout: float = 5.0, **match: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [item for item in self.events(event) if all(item.get(k) == v for k, v in match.items())]
            if len(found) >= count:
                return found
            assert self.proc is not None and self.proc.poll() is None, (self.tmp_path / "stdout").read_text()
            assert time.monotonic() < deadline, f"no {event!r} {match} (x{count}) in {self.events()}"
            time.sleep(0.005)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def banned(self, family: int = 4) -> list[str]:
        listing = json.loads(self.lab.nft("srv", "-j", "list", "set", "inet", "portward", f"watch_ban_v{family}"))
        found = next(item["set"] for item in listing["nftables"] if "set" in item).get("elem", [])
        return [item["elem"]["val"] for item in found]


def ssh(lab: Lab, ns: str, host: str) -> str:
    return lab.probe(ns, host, ["22/tcp"], timeout=1.0)["22/tcp"]  # an answer within 1 s, even on a busy host


def test_denied_v4_and_v6_attempts_are_reported_within_a_second(lab: Lab, tmp_path: Path) -> None:
    watch = Watch(lab, tmp_path)
    watch.start()
    senders = []
    for source, target in ((LAN4, SRV_LAN4), (LAN6, SRV_LAN6)):
        sender = lab.popen("lan", [sys.executable, "-I", "-S", "-c", ATTEMPTS, target], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
        assert sender.stdin is not None and sender.stdout is not None
        assert sender.stdout.readline().strip() == "ready"
        sender.stdin.write("go\n")
        sender.stdin.flush()
        sent = float(sender.stdout.readline())
        (tcp,) = watch.wait_for("denied", src=source, dport=23, timeout=3.0)
        (udp,) = watch.wait_for("denied", src=source, dport=69, timeout=3.0)
        assert time.time() - sent < 1.0  # both in the log file within a second of leaving the client
        assert tcp == {"time": tcp["time"], "event": "denied", "src": source, "dst": target, "proto": "tcp",
                       "dport": 23, "iface": "eth-lan"}
        assert udp["proto"] == "udp" and tcp["time"].endswith("Z")
        senders.append(sender)
    time.sleep(1.2)  # TCP retransmits the SYNs after 1 s: still one event per (source, port)
    assert len(watch.events("denied")) == 4
    for sender in senders:
        assert sender.stdin is not None
        sender.stdin.close()
        sender.wait(10)
    assert watch.events("scan") == [] and watch.banned(4) == [] and watch.banned(6) == []


def test_a_sweep_is_one_alert_one_spawn_and_a_ban_of_that_source_only_that_lifts_without_watch(
    lab: Lab, tmp_path: Path
) -> None:
    lab.listen("srv", ["22/tcp"])
    watch = Watch(lab, tmp_path, ban_for=6, spawn=["touch", str(tmp_path / "spawned-%e-%a-%n")])
    watch.start()
    assert ssh(lab, "wan", SRV_WAN4) == "open"
    swept = lab.probe("wan", SRV_WAN4, [f"{port}/tcp" for port in range(1000, 1040)], timeout=0.3)
    assert set(swept.values()) == {"filtered"}
    (ban,) = watch.wait_for("ban")
    banned_at = time.monotonic()
    # the ban shuts an allowed port for the scanner, for new connections only, and for nobody else
    assert ssh(lab, "wan", SRV_WAN4) == "filtered"
    assert ssh(lab, "lan", SRV_LAN4) == "open" and ssh(lab, "lan", SRV_LAN6) == "open"
    assert ssh(lab, "wan", SRV_WAN6) == "open"  # another address (bans are per address)
    assert ban == {"time": ban["time"], "event": "ban", "src": WAN4, "for": 6, "severity": "alert"}
    (scan,) = watch.events("scan")
    assert (scan["src"], scan["ports"], scan["severity"]) == (WAN4, 10, "alert")
    assert len(watch.events("denied")) == 10  # the kernel dropped the other 30 ports before logging them
    assert watch.banned(4) == [WAN4]
    (listed,) = watch.portward.json("status")["bans"]
    assert listed["source"] == WAN4 and 0 < listed["expires_in"] <= 6
    assert f"banned: {WAN4}" in watch.portward.ok("status").stdout
    deadline = time.monotonic() + 5
    while not (tmp_path / f"spawned-ban-{WAN4}-10").exists():
        assert time.monotonic() < deadline, sorted(path.name for path in tmp_path.iterdir())
        time.sleep(0.01)
    watch.kill()
    time.sleep(max(0.0, banned_at + 6.3 - time.monotonic()))  # ban_for = 6: the kernel lifts it, nobody else
    assert watch.banned(4) == [] and ssh(lab, "wan", SRV_WAN4) == "open"
    assert len(list(tmp_path.glob("spawned-*"))) == 1 and len(watch.events("scan")) == 1


@pytest.mark.parametrize(("scanner", "target"), [(WAN4, SRV_WAN4), (WAN6, SRV_WAN6)])
def test_the_kernel_bans_on_the_threshold_packet_with_no_watch_running(lab: Lab, tmp_path: Path, scanner: str,
                                                                       target: str) -> None:
    lab.listen("srv", ["22/tcp"])
    watch = Watch(lab, tmp_path, ban_for=60)  # applied, never started
    done = lab.run("wan", [sys.executable, "-c", THRESHOLD, target, "22", "10"])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["before"] is True  # 9 denied ports: not yet a scan
    assert result["after"] is False and result["gap_ms"] < 100  # the very next SYN, well within 100 ms
    family = 6 if ":" in scanner else 4
    assert watch.banned(family) == [scanner]
    assert ssh(lab, "lan", SRV_LAN4) == "open"
    watch.portward.ok("apply", "-p", str(watch.policy), "--yes")  # a re-apply keeps what the kernel banned
    assert watch.banned(family) == [scanner]


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def zombies_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_syn_flood_leaves_watch_alive_bounded_and_flat(lab: Lab, tmp_path: Path) -> None:
    watch = Watch(lab, tmp_path, ban_for=600, spawn=["true", "%a"])
    watch.start()
    assert watch.proc is not None
    pid = watch.proc.pid
    assert b"watch" in Path(f"/proc/{pid}/cmdline").read_bytes()

    def flood(count: int, first: str, pool: int) -> float:
        done = lab.run("wan", [sys.executable, "-c", SYN_FLOOD, SRV_WAN4, str(count), first, str(pool), "0"])
        assert done.returncode == 0, done.stderr
        sent, seconds = done.stdout.split()
        assert int(sent) == count
        return float(seconds)

    flood(3000, "198.19.8.0", 256)  # warm-up: every code path, every table filled once
    time.sleep(1.5)
    before = rss_kib(pid)
    lines_before = len(watch.events())
    started = time.monotonic()
    flood(30000, "198.19.16.0", 4096)  # every source scans (~7 ports each) among 30k denied SYNs
    flood(30000, "198.19.128.0", 32768)  # one or two ports per source: denied noise only
    time.sleep(1.5)
    elapsed = time.monotonic() - started
    assert watch.proc.poll() is None
    written = len(watch.events()) - lines_before
    # the kernel lets 100 + 50/s packets per log rule through; each becomes at most 6 lines (denied, scan,
    # ban, two command lines, drops)
    assert written <= 6 * 2 * (100 + 50 * elapsed), written
    assert watch.events("ban") and watch.events("denied")
    assert rss_kib(pid) - before < 4 * 1024
    deadline = time.monotonic() + 15  # spawned commands finish and are reaped
    while zombies_of(pid) or len(watch.events("command_exit")) < len(watch.events("command")):
        assert time.monotonic() < deadline, (zombies_of(pid), len(watch.events("command")))
        time.sleep(0.05)
    assert zombies_of(pid) == []
    assert len(watch.banned(4)) >= len(watch.events("ban"))  # the kernel banned at least what it reported
    os.kill(pid, signal.SIGTERM)
    assert watch.proc.wait(15) == 0
    assert watch.events("shutdown")
