"""`portward spad` in the namespace lab: the stock fwknop client and `portward spa` open exactly what they ask
for, for exactly their address; the kernel closes it with no daemon; replays, forgeries and floods open nothing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portward.daemons import fko
from tests.netlab import LAN4, LAN6, SRV_LAN4, SRV_LAN6, SRV_WAN4, WAN4, Lab
from tests.pwutil import ROOT, Portward, write

KEY = os.urandom(32)
HMAC_KEY = os.urandom(64)
K64, H64 = base64.b64encode(KEY).decode(), base64.b64encode(HMAC_KEY).decode()

POLICY = f"""
[defaults]
inbound = "drop"

[[spa]]
name = "ssh"
open = ["22/tcp", "2222/tcp"]
from = ["any"]
key_base64 = "{K64}"
hmac_key_base64 = "{H64}"
open_for = 3
max_open_for = 4
"""

SEND = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
for line in sys.stdin.buffer.read().split(b"\\n"):
    if line:
        s.sendto(line, (sys.argv[1], int(sys.argv[2])))
"""


class Spad:
    def __init__(self, lab: Lab, tmp_path: Path, policy: Path | None = None) -> None:
        self.lab, self.tmp_path = lab, tmp_path
        self.log = tmp_path / "spad.log"
        self.portward = Portward(lab, tmp_path / "state")
        self.policy = policy or write(tmp_path / "p.toml", POLICY)
        self.portward.ok("apply", "-p", str(self.policy), "--yes")
        self.proc: subprocess.Popen[Any] | None = None
        self.start()

    def start(self) -> None:
        argv = [sys.executable, "-m", "portward", "spad", "-p", str(self.policy), "--json-log",
                "--log-file", str(self.log)]
        with (self.tmp_path / "stdout").open("a") as out:
            self.proc = self.lab.popen("srv", argv, stdout=out, stderr=subprocess.STDOUT, env=self.portward.env())
        self.wait_for("ready", count=len(self.events("ready")) + 1, timeout=20)

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        found = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [item for item in found if event is None or item["event"] == event]

    def wait_for(self, event: str, *, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events(event)) < count:
            assert self.proc is not None and self.proc.poll() is None, (self.tmp_path / "stdout").read_text()
            assert time.monotonic() < deadline, f"no {event!r} (x{count}) in {self.events()}"
            time.sleep(0.01)
        return self.events(event)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def grants(self, family: int = 4) -> list[Any]:
        listing = json.loads(self.lab.nft("srv", "-j", "list", "set", "inet", "portward", f"spa_ssh_open_v{family}"))
        found: list[Any] = next(item["set"] for item in listing["nftables"] if "set" in item).get("elem", [])
        return [item["elem"]["val"]["concat"] for item in found]

    def send(self, ns: str, target: str, *payloads: bytes) -> None:
        assert all(b"\n" not in payload for payload in payloads)
        done = self.lab.run(ns, [sys.executable, "-c", SEND, target, "62201"], input=b"\n".join(payloads), text=False)
        assert done.returncode == 0, done.stderr


@pytest.fixture
def spad(lab: Lab, tmp_path: Path) -> Iterator[Spad]:
    lab.listen("srv", ["22/tcp", "2222/tcp"])
    yield Spad(lab, tmp_path)


def stock_fwknop(lab: Lab, ns: str, *args: str) -> None:
    if shutil.which("fwknop") is None:
        pytest.skip("the stock client (apt package fwknop-client) is missing")
    done = lab.run(ns, ["fwknop", "--no-rc-file", "--no-save-args", "--key-base64-rijndael", K64,
                        "--key-base64-hmac", H64, "--use-hmac", *args], env={"HOME": "/nonexistent"})
    assert done.returncode == 0, done.stdout + done.stderr


def ssh(lab: Lab, ns: str, host: str, port: int = 22) -> str:
    return lab.probe(ns, host, [f"{port}/tcp"], timeout=0.3)[f"{port}/tcp"]


def test_the_stock_client_opens_only_for_the_address_in_its_packet(spad: Spad) -> None:
    lab = spad.lab
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"
    stock_fwknop(lab, "lan", "-A", "tcp/22", "-a", LAN4, "-D", SRV_LAN4)
    (granted,) = spad.wait_for("granted")
    assert granted["source"] == LAN4 and granted["door"] == "ssh" and granted["access"] == ["tcp/22"]
    assert spad.grants() == [[LAN4, "tcp", 22]]
    (listed,) = spad.portward.json("status")["grants"]
    assert (listed["kind"], listed["door"], listed["source"], listed["access"]) == ("spa", "ssh", LAN4, "22/tcp")
    assert 0 < listed["expires_in"] <= 3
    spad.portward.ok("apply", "-p", str(spad.policy), "--yes")  # a re-apply keeps what the kernel granted
    assert spad.grants() == [[LAN4, "tcp", 22]]
    assert ssh(lab, "lan", SRV_LAN4) == "open"
    assert ssh(lab, "lan", SRV_LAN4, 2222) == "filtered"  # open lists it, the packet did not ask for it
    assert ssh(lab, "wan", SRV_WAN4) == "filtered"
    # sent from lan on behalf of wan's address: only wan gets in
    stock_fwknop(lab, "lan", "-A", "tcp/2222", "-a", WAN4, "-D", SRV_LAN4)
    spad.wait_for("granted", count=2)
    assert ssh(lab, "wan", SRV_WAN4, 2222) == "open" and ssh(lab, "lan", SRV_LAN4, 2222) == "filtered"
    stock_fwknop(lab, "lan", "-A", "tcp/22", "-a", LAN4, "-D", SRV_LAN4)  # asking again refreshes the grant
    spad.wait_for("granted", count=3)
    assert spad.events("error") == [] and [LAN4, "tcp", 22] in spad.grants()


def test_source_flag_opens_for_the_packets_source_and_the_kernel_closes_it_without_spad(spad: Spad) -> None:
    lab = spad.lab
    stock_fwknop(lab, "wan", "-A", "tcp/22", "-s", "-D", SRV_WAN4)
    spad.wait_for("granted")
    assert spad.grants() == [[WAN4, "tcp", 22]]
    spad.kill()
    assert ssh(lab, "wan", SRV_WAN4) == "open"
    time.sleep(3.3)  # open_for = 3
    assert spad.grants() == [] and ssh(lab, "wan", SRV_WAN4) == "filtered"


def test_portward_spa_over_ipv6_with_a_client_timeout(spad: Spad, tmp_path: Path) -> None:
    lab = spad.lab
    keys = write(tmp_path / "keys", f"KEY_BASE64: {K64}\nHMAC_KEY_BASE64: {H64}\n")
    done = lab.run("lan", [sys.executable, "-m", "portward", "spa", SRV_LAN6, "--open", "22/tcp", "--key-file",
                           str(keys), "--hmac-key-file", str(keys), "--timeout", "60", "--json"],
                   env={"PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["allow"] == LAN6
    (granted,) = spad.wait_for("granted")
    assert granted["allow"] == LAN6 and granted["timeout"] == 4  # asked 60, capped at max_open_for
    assert spad.grants(6) == [[LAN6, "tcp", 22]] and spad.grants(4) == []
    assert ssh(lab, "lan", SRV_LAN6) == "open" and ssh(lab, "lan", SRV_LAN4) == "filtered"


def test_replayed_tampered_stale_and_wrong_packets_open_nothing(spad: Spad) -> None:
    good = fko.encode(fko.new_message(LAN4, [("tcp", 22)]), KEY, HMAC_KEY)
    assert b"\n" not in good
    spad.send("lan", SRV_LAN4, good)
    spad.wait_for("granted")
    spad.lab.nft("srv", "flush", "set", "inet", "portward", "spa_ssh_open_v4")
    tampered = good[:50] + (b"A" if good[50:51] != b"A" else b"B") + good[51:]
    bad = [
        good,  # replay
        tampered,
        fko.encode(fko.new_message(LAN4, [("tcp", 22)], now=time.time() - 300), KEY, HMAC_KEY),  # stale
        fko.encode(fko.new_message(LAN4, [("tcp", 22)]), os.urandom(32), HMAC_KEY),  # wrong key
        fko.encode(fko.new_message(LAN4, [("tcp", 22)]), KEY, os.urandom(64)),  # wrong HMAC key
        fko.encode(fko.new_message(LAN4, [("tcp", 23)]), KEY, HMAC_KEY),  # a port the door does not open
    ]
    spad.send("lan", SRV_LAN4, *bad)
    rejected = spad.wait_for("rejected", count=len(bad))
    assert [item["reason"] for item in rejected][:2] == ["replay", "hmac"]
    assert {"stale", "access"} <= {item["reason"] for item in rejected}
    spad.kill()
    spad.start()
    spad.send("lan", SRV_LAN4, good)  # replay after a restart
    assert spad.wait_for("rejected", count=len(bad) + 1)[-1]["reason"] == "replay"
    assert spad.grants() == [] and len(spad.events("granted")) == 1


def test_the_spa_port_never_answers_and_a_flood_opens_nothing_nor_grows_memory(spad: Spad) -> None:
    lab = spad.lab
    assert lab.probe("lan", SRV_LAN4, ["62201/udp"])["62201/udp"] == "filtered"  # no ICMP, no reply
    assert spad.proc is not None
    pid = int(lab.run("srv", ["pgrep", "-f", "portward spad"]).stdout.split()[0])

    def rss_kib() -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))

    good = fko.encode(fko.new_message(LAN4, [("tcp", 22)]), KEY, HMAC_KEY)
    mutations = []
    for index in range(0, len(good), 3):
        flipped = bytearray(good)
        flipped[index] ^= 0x01 if flipped[index] not in (0x0B,) else 0x02
        mutations.append(bytes(flipped))
    garbage = [os.urandom(140 + (n * 37) % 1300).replace(b"\n", b"x") for n in range(4000)]
    # the kernel lets one sender have 10 packets/s (burst 20) looked at: a one-address flood stays there
    spad.send("lan", SRV_LAN4, *garbage[:2000])
    time.sleep(0.5)
    seen = len(spad.events("rejected")) + sum(item["count"] for item in spad.events("suppressed"))
    assert 20 <= seen <= 60
    # without that limit (as under a flood from many addresses), spad itself must refuse everything
    listing = lab.nft("srv", "-a", "list", "chain", "inet", "portward", "input")
    handles = [line.rsplit("# handle ", 1)[1] for line in listing.splitlines() if 'rate" # handle' in line
               and "spa " in line]
    assert len(handles) == 2  # v4 and v6
    for handle in handles:
        lab.nft("srv", "delete", "rule", "inet", "portward", "input", "handle", handle)
    warmup = [m for m in mutations if b"\n" not in m] + garbage[:200]
    spad.send("lan", SRV_LAN4, *warmup)
    time.sleep(0.5)
    before = rss_kib()
    spad.send("lan", SRV_LAN4, *garbage)
    spad.send("lan", SRV_LAN4, *garbage)
    time.sleep(0.5)
    spad.send("lan", SRV_LAN4, garbage[0])  # a queue overflow shows as a sequence gap at the next packet
    time.sleep(1.5)  # let spad drain and print its per-second summary
    assert spad.grants() == [] and spad.events("granted") == []
    assert rss_kib() - before < 5 * 1024
    refused = len(spad.events("rejected")) + sum(item["count"] for item in spad.events("suppressed"))
    lost = max([item["dropped"] for item in spad.events("drops")], default=0)
    assert refused + lost >= seen + len(warmup) + 2 * len(garbage) + 1  # each refused (or never delivered)
    spad.kill()
    assert lab.probe("lan", SRV_LAN4, ["62201/udp"])["62201/udp"] == "filtered"  # nor without spad


def test_portward_spa_opens_the_real_fwknopds_door(lab: Lab, tmp_path: Path) -> None:
    if shutil.which("fwknopd") is None:
        pytest.skip("the stock server (apt package fwknop-server) is missing")
    from tests.daemons.test_fko import fwknop_rules, start_fwknopd, wait_for

    log = start_fwknopd(lab, tmp_path, K64, H64)
    done = lab.run("lan", [sys.executable, "-m", "portward", "spa", SRV_LAN4, "--open", "22/tcp", "--key-base64", K64,
                           "--hmac-key-base64", H64, "--allow", "198.18.0.9"], env={"PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr
    wait_for(lambda: any("-s 198.18.0.9/32 -p tcp -m tcp --dport 22" in rule for rule in fwknop_rules(lab)),
             what="fwknopd to open 22/tcp for 198.18.0.9", log=log)


def test_a_stock_access_conf_imports_and_works(lab: Lab, tmp_path: Path) -> None:
    """fwknopd's own access.conf, imported, applied and served: the stock client gets in, for open_for."""
    lab.listen("srv", ["22/tcp"])
    access = write(tmp_path / "access.conf", f"""# fwknopd access.conf
SOURCE                      ANY
OPEN_PORTS                  tcp/22
KEY_BASE64                  {K64}
HMAC_KEY_BASE64             {H64}
FW_ACCESS_TIMEOUT           3
REQUIRE_SOURCE_ADDRESS      Y
""")
    policy = tmp_path / "imported.toml"
    Portward(lab, tmp_path / "state").ok("import", "--from", "fwknop", str(access), "-o", str(policy))
    spad = Spad(lab, tmp_path, policy)
    stock_fwknop(lab, "lan", "-A", "tcp/22", "-s", "-D", SRV_LAN4)  # -s: refused, the door requires an address
    assert spad.wait_for("rejected")[0]["reason"] == "source"
    stock_fwknop(lab, "lan", "-A", "tcp/22", "-a", LAN4, "-D", SRV_LAN4)
    (granted,) = spad.wait_for("granted")
    assert granted["timeout"] == 3 and ssh(lab, "lan", SRV_LAN4) == "open"
    spad.kill()
    time.sleep(3.3)
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"
