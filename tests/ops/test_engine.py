"""plan / apply / confirm / rollback / restore / status against the real kernel, in a lab namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netlab import Lab
from tests.pwutil import ROOT, Portward, write

RICH = """
[defaults]
inbound = "reject"
outbound = "drop"
log_denied = true

[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64"]

[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
rate = "30/minute"

[[inbound]]
name = "web"
ports = ["80/tcp", "443/tcp", "8000-8100/tcp", "53/udp", "5000/sctp"]
from = ["lan", "198.19.5.0/24"]
interface = "eth*"

[[inbound]]
name = "mgmt"
from = ["2001:db8:0:9::/64"]
action = "accept"

[[outbound]]
name = "web-out"
ports = ["22/tcp", "443/tcp", "53/udp"]
interface = "eth-wan"

[block]
from = ["198.19.99.0/24", "2001:db8:dead::/48"]
"""

ONLY_LAN_SSH = """
[zones]
lan = ["198.18.0.0/24"]
[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["lan"]
"""

OPEN_WEB = """
[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
[[inbound]]
name = "web"
ports = ["80/tcp"]
from = ["any"]
"""


@pytest.fixture
def pw(lab: Lab, tmp_path: Path) -> Portward:
    return Portward(lab, tmp_path / "state")


def test_apply_then_plan_is_in_sync(pw: Portward, tmp_path: Path) -> None:
    policy = write(tmp_path / "p.toml", RICH)
    planned = pw.json("plan", "-p", str(policy))
    assert planned["changes"] and planned["changes"][0] == {"action": "add", "object": "table", "name": "inet portward"}
    applied = pw.json("apply", "-p", str(policy), "--yes")
    assert applied["generation"] == 1
    assert pw.json("plan", "-p", str(policy))["changes"] == []
    # also when the recorded snapshot cannot be trusted (another commit happened): listing path
    pw.lab.nft("srv", "add table ip unrelated")
    assert pw.json("plan", "-p", str(policy))["changes"] == []
    text = pw.table_text()
    assert "policy drop" in text and "@block_v4" in text


def test_other_tables_stay_byte_identical(pw: Portward, lab: Lab, tmp_path: Path) -> None:
    lab.run(
        "srv",
        [
            "iptables",
            "-A",
            "INPUT",
            "-s",
            "198.18.0.0/15",
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            "2001,2003",
            "-j",
            "ACCEPT",
        ],
        check=True,
    )
    lab.nft("srv", "add table inet docker_like")
    lab.nft("srv", "add chain inet docker_like fchain { type filter hook forward priority 0; policy accept; }")
    lab.nft("srv", "add rule inet docker_like fchain ip saddr 198.18.0.0/24 counter accept")
    before = lab.run("srv", ["nft", "list", "table", "ip", "filter"]).stdout + lab.nft(
        "srv", "list table inet docker_like"
    )
    policy = write(tmp_path / "p.toml", RICH)
    pw.ok("apply", "-p", str(policy), "--yes")
    write(tmp_path / "p.toml", OPEN_WEB)
    pw.ok("apply", "-p", str(policy), "--yes")
    pw.ok("rollback")
    after = lab.run("srv", ["nft", "list", "table", "ip", "filter"]).stdout + lab.nft(
        "srv", "list table inet docker_like"
    )
    assert after == before


def test_bad_policy_changes_nothing(pw: Portward, tmp_path: Path) -> None:
    good = write(tmp_path / "good.toml", RICH)
    pw.ok("apply", "-p", str(good), "--yes")
    before = pw.table_text()
    bad = write(tmp_path / "bad.toml", RICH.replace('"22/tcp"]\nfrom = ["any"]', '"22/tcp"]\nfrom = ["nowhere"]'))
    result = pw.run("apply", "-p", str(bad), "--yes")
    assert result.returncode == 2
    assert result.stderr.startswith(f"{bad}:"), result.stderr
    assert "unknown zone 'nowhere'" in result.stderr
    assert pw.table_text() == before
    assert pw.json("status")["applied"]["generation"] == 1


def test_element_only_change_is_small_and_exact(pw: Portward, lab: Lab, tmp_path: Path) -> None:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("".join(f"240.0.{i}.0/24\n" for i in range(0, 200, 2)) + "2001:db8:bad::/48\n")
    policy = write(tmp_path / "p.toml", OPEN_WEB + '[block]\nfiles = ["blocklist.txt"]\n')
    pw.ok("apply", "-p", str(policy), "--yes")
    with blocklist.open("a") as handle:
        handle.write("240.0.1.0/24\n")  # joins 240.0.0.0/24 and 240.0.2.0/24 into one range
    changes = pw.json("plan", "-p", str(policy))["changes"]
    assert [(c["action"], c["object"], c["elements"]) for c in changes] == [
        (
            "delete",
            "element",
            "block_v4",
        )
        and ("delete", "element", ["240.0.0.0/24", "240.0.2.0/24"]),
        ("add", "element", ["240.0.0.0-240.0.2.255"]),
    ]
    pw.ok("apply", "-p", str(policy), "--yes")
    listed = json.loads(lab.nft("srv", "-j", "list", "set", "inet", "portward", "block_v4"))
    elements = listed["nftables"][1]["set"]["elem"]
    assert {"range": ["240.0.0.0", "240.0.2.255"]} in elements
    assert len(elements) == 99
    assert pw.json("plan", "-p", str(policy))["changes"] == []


def test_confirm_timeout_rolls_back_by_itself(pw: Portward, tmp_path: Path) -> None:
    first = write(tmp_path / "first.toml", OPEN_WEB)
    pw.ok("apply", "-p", str(first), "--yes")
    before = pw.table_text()
    second = write(tmp_path / "second.toml", ONLY_LAN_SSH)
    started = time.monotonic()
    applied = pw.json("apply", "-p", str(second), "--yes", "--confirm", "5")
    assert time.monotonic() - started < 4, "apply --confirm must return at once"
    assert applied["generation"] == 2 and applied["pending"]["generation"] == 2
    status = pw.json("status")
    assert status["pending"]["generation"] == 2 and 0 < status["pending"]["seconds_left"] <= 5
    assert pw.table_text() != before
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and pw.table_text() != before:
        time.sleep(0.5)
    assert pw.table_text() == before
    status = pw.json("status")
    assert status["pending"] is None and status["applied"]["generation"] == 1
    result = pw.run("confirm", "--generation", "2")
    assert result.returncode == 2 and "not pending" in result.stderr


def test_confirm_keeps_exactly_that_generation(pw: Portward, tmp_path: Path) -> None:
    pw.ok("apply", "-p", str(write(tmp_path / "a.toml", OPEN_WEB)), "--yes")
    pw.ok("apply", "-p", str(write(tmp_path / "b.toml", ONLY_LAN_SSH)), "--yes", "--confirm", "5")
    after_b = pw.table_text()
    wrong = pw.run("confirm", "--generation", "1")
    assert wrong.returncode == 2
    assert pw.json("confirm", "--generation", "2")["confirmed"] == 2
    time.sleep(6)
    assert pw.table_text() == after_b
    assert pw.json("status")["confirmed"]["generation"] == 2


def test_old_timer_never_rolls_back_a_newer_apply(pw: Portward, tmp_path: Path) -> None:
    pw.ok("apply", "-p", str(write(tmp_path / "a.toml", OPEN_WEB)), "--yes", "--confirm", "5")
    newest = write(tmp_path / "b.toml", ONLY_LAN_SSH)
    pw.ok("apply", "-p", str(newest), "--yes")  # supersedes and confirms generation 2
    after = pw.table_text()
    time.sleep(6.5)
    assert pw.table_text() == after
    status = pw.json("status")
    assert status["applied"]["generation"] == 2 and status["pending"] is None


def test_lockout_guard(pw: Portward, tmp_path: Path) -> None:
    policy = write(tmp_path / "p.toml", ONLY_LAN_SSH)
    env = pw.env(SSH_CONNECTION="198.19.0.2 50022 198.19.0.1 22")
    refused = pw.run("apply", "-p", str(policy), "--yes", env=env)
    assert refused.returncode == 2
    assert "lock out your ssh session" in refused.stderr and "--confirm" in refused.stderr
    assert pw.table_text() == ""
    from_lan = pw.env(SSH_CONNECTION="198.18.0.2 50022 198.18.0.1 22")
    pw.ok("apply", "-p", str(policy), "--yes", env=from_lan)
    pw.ok("apply", "-p", str(policy), "--yes", "--confirm", "60", env=env)  # allowed: it rolls back by itself
    assert pw.json("status")["pending"]["generation"] == 2
    pw.ok("rollback")


def test_rollback_steps_back_and_restore_reapplies(pw: Portward, lab: Lab, tmp_path: Path) -> None:
    pw.ok("apply", "-p", str(write(tmp_path / "a.toml", OPEN_WEB)), "--yes")
    text_a = pw.table_text()
    pw.ok("apply", "-p", str(write(tmp_path / "b.toml", ONLY_LAN_SSH)), "--yes")
    pw.ok("rollback")
    assert pw.table_text() == text_a
    assert pw.json("status")["applied"]["generation"] == 1
    pw.ok("rollback")
    assert pw.table_text() == ""
    # restore re-applies the last confirmed generation without its policy file
    (tmp_path / "b.toml").unlink()
    restored = pw.json("restore")
    assert restored["generation"] == 2
    assert "198.18.0.0/24" in pw.table_text()
    lab.nft("srv", "delete table inet portward")
    pw.ok("restore")
    assert "198.18.0.0/24" in pw.table_text()


def test_concurrent_applies_are_serialised(pw: Portward, lab: Lab, tmp_path: Path) -> None:
    policies = [write(tmp_path / f"p{i}.toml", OPEN_WEB if i % 2 else RICH) for i in range(4)]
    procs = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.netns("srv"),
                sys.executable,
                "-m",
                "portward",
                "apply",
                "-p",
                str(p),
                "--yes",
                "--json",
            ],
            env=pw.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in policies
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    generations = sorted(json.loads(out)["generation"] for out, _ in outputs)
    assert generations == [1, 2, 3, 4]


def test_cli_basics() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "portward", "--help"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and "apply" in result.stdout
    assert time.monotonic() - started < 5
    version = subprocess.run([sys.executable, "-m", "portward", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("portward, version ")
