"""Kernel knock doors: open only for the knocker, close by themselves, ignore wrong orders and sweeps, work
with no portward process running (v4 and v6)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netlab import SRV_LAN4, SRV_LAN6, SRV_WAN4, Lab
from tests.pwutil import ROOT, Portward, write

POLICY = """
[[knock]]
name = "ssh"
sequence = ["7000/tcp", "9000/tcp", "8000/udp"]
seq_timeout = 3
open = ["22/tcp"]
open_for = 2
"""

ASCENDING = """
[[knock]]
name = "sweepable"
sequence = ["7000/tcp", "8000/tcp", "9000/tcp"]
seq_timeout = 10
open = ["22/tcp"]
open_for = 30
"""


def knock(lab: Lab, ns: str, host: str, *ports: str, delay_ms: int = 0) -> None:
    done = lab.run(ns, [sys.executable, "-m", "portward", "knock", "-d", str(delay_ms), host, *ports],
                   env={"PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr


def ssh(lab: Lab, ns: str, host: str) -> str:
    return lab.probe(ns, host, ["22/tcp"], timeout=0.3)["22/tcp"]


@pytest.fixture
def door(lab: Lab, tmp_path: Path) -> Lab:
    lab.listen("srv", ["22/tcp"])
    Portward(lab, tmp_path / "state").ok("apply", "-p", str(write(tmp_path / "p.toml", POLICY)), "--yes")
    return lab


def test_door_opens_for_the_knocker_only_and_closes_by_itself(door: Lab) -> None:
    lab = door
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"
    assert not subprocess.run(["pgrep", "-f", "portward"], capture_output=True).stdout  # no daemon at all
    knock(lab, "lan", SRV_LAN4, "7000", "9000", "8000:udp")
    assert ssh(lab, "lan", SRV_LAN4) == "open"
    assert ssh(lab, "wan", SRV_WAN4) == "filtered"  # another source: still shut
    assert ssh(lab, "lan", SRV_LAN6) == "filtered"  # the same host over IPv6 did not knock
    elements = lab.nft("srv", "list", "set", "inet", "portward", "knock_ssh_open_v4")
    assert "198.18.0.2" in elements and "expires" in elements
    time.sleep(2.5)
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"  # open_for = 2 s, closed by the kernel


def test_ipv6_and_repeated_knocks(door: Lab) -> None:
    lab = door
    knock(lab, "lan", SRV_LAN6, "7000", "7000", "9000", "9000", "8000:udp")  # retransmissions are tolerated
    assert ssh(lab, "lan", SRV_LAN6) == "open"


def test_wrong_order_and_interleaved_wrong_knock_open_nothing(door: Lab) -> None:
    lab = door
    knock(lab, "lan", SRV_LAN4, "9000", "7000", "8000:udp")
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"
    knock(lab, "lan", SRV_LAN4, "7000", "9000", "1234", "8000:udp")
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"
    knock(lab, "lan", SRV_LAN4, "7000", "9000", "8000:udp")  # the right one still works afterwards
    assert ssh(lab, "lan", SRV_LAN4) == "open"


def test_sequence_must_fit_in_seq_timeout(door: Lab) -> None:
    lab = door
    knock(lab, "lan", SRV_LAN4, "7000", "9000")
    time.sleep(3.3)
    knock(lab, "lan", SRV_LAN4, "8000:udp")
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"


def test_sequential_sweep_opens_nothing(lab: Lab, tmp_path: Path) -> None:
    """knockd opens on `nmap -r` over an ascending sequence; here every port between two knocks resets."""
    lab.listen("srv", ["22/tcp"])
    pw = Portward(lab, tmp_path / "state")
    applied = pw.run("apply", "-p", str(write(tmp_path / "p.toml", ASCENDING)), "--yes")
    assert applied.returncode == 0 and "ascending" in applied.stdout  # warned, not refused
    sweep = lab.run("lan", ["nmap", "-n", "-Pn", "-sS", "-r", "--max-retries", "0", "-T5", "-p", "6990-9010",
                            SRV_LAN4])
    assert sweep.returncode == 0, sweep.stderr
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"
    knock(lab, "lan", SRV_LAN4, "7000", "8000", "9000")
    assert ssh(lab, "lan", SRV_LAN4) == "open"


def test_status_lists_grants_and_a_reapply_keeps_them(lab: Lab, tmp_path: Path) -> None:
    lab.listen("srv", ["22/tcp"])
    pw = Portward(lab, tmp_path / "state")
    policy = write(tmp_path / "p.toml", POLICY.replace("open_for = 2", "open_for = 60"))
    pw.ok("apply", "-p", str(policy), "--yes")
    knock(lab, "lan", SRV_LAN4, "7000", "9000", "8000:udp")
    grants = pw.json("status")["grants"]
    assert [(g["kind"], g["door"], g["source"]) for g in grants] == [("knock", "ssh", "198.18.0.2")]
    assert 50 < grants[0]["expires_in"] <= 60
    # a structural change elsewhere in the policy must not close an open door
    policy.write_text(policy.read_text() + '\n[[inbound]]\nname = "web"\nports = ["80/tcp"]\nfrom = ["any"]\n')
    pw.ok("apply", "-p", str(policy), "--yes")
    assert ssh(lab, "lan", SRV_LAN4) == "open"
    assert pw.json("status")["grants"][0]["source"] == "198.18.0.2"
