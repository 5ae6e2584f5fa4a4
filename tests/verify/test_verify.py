"""init -> apply -> verify from the LAN and the WAN side; verify fails (exit 3) once the firewall is gone."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from tests.netlab import SRV_LAN4, SRV_WAN4, SRV_WAN6, Lab
from tests.pwutil import Portward

LAN = ["--lan", "198.18.0.0/24", "--lan", "2001:db8:0:1::/64"]


def test_init_apply_verify(lab: Lab, tmp_path: Path) -> None:
    lab.listen("srv", ["22/tcp", "8080/tcp", "127.0.0.1:9000/tcp", "5353/udp"])
    srv = Portward(lab, tmp_path / "state")
    policy = tmp_path / "policy.toml"
    srv.ok("init", *LAN, "-o", str(policy))
    text = policy.read_text()
    assert 'from = ["any"]' in text and '"22/tcp"' in text
    assert 'from = ["localhost", "lan"]' in text and '"8080/tcp"' in text and '"5353/udp"' in text
    rules = tomllib.loads(text)["inbound"]
    assert not [r for r in rules if "9000/tcp" in r["ports"]]  # loopback-only: no rule needed
    srv.ok("check", "-p", str(policy))
    assert srv.run("init", *LAN, "-o", str(policy)).returncode == 2  # never overwrites silently

    srv.ok("apply", "-p", str(policy), "--yes")
    assert lab.probe("wan", SRV_WAN4, ["22/tcp", "8080/tcp"]) == {"22/tcp": "open", "8080/tcp": "filtered"}
    assert lab.probe("lan", SRV_LAN4, ["22/tcp", "8080/tcp"]) == {"22/tcp": "open", "8080/tcp": "open"}

    lan, wan = Portward(lab, tmp_path / "lan-state", ns="lan"), Portward(lab, tmp_path / "wan-state", ns="wan")
    from_lan = lan.run("verify", "-p", str(policy), "--target", SRV_LAN4, "--json")
    assert from_lan.returncode == 0, from_lan.stdout + from_lan.stderr
    report = json.loads(from_lan.stdout)
    assert report["ok"] and report["source"] == "198.18.0.2" and report["differences"] == []
    from_wan = wan.run("verify", "-p", str(policy), "--target", SRV_WAN4, "--json", "--udp")
    assert from_wan.returncode == 0, from_wan.stdout + from_wan.stderr
    assert wan.run("verify", "-p", str(policy), "--target", SRV_WAN6).returncode == 0

    lab.flush_ruleset("srv")
    flushed = wan.run("verify", "-p", str(policy), "--target", SRV_WAN4, "--json")
    assert flushed.returncode == 3, flushed.stderr
    differences = {(d["port"], d["proto"]): d for d in json.loads(flushed.stdout)["differences"]}
    assert differences[(8080, "tcp")]["state"] == "open"
    assert differences[(8080, "tcp")]["problem"] == "open but policy says filtered"
    people = wan.run("verify", "-p", str(policy), "--target", SRV_WAN4)
    assert people.returncode == 3 and "8080/tcp: open but policy says filtered" in people.stdout


def test_verify_notes_loopback(lab: Lab, tmp_path: Path) -> None:
    srv = Portward(lab, tmp_path / "state")
    policy = tmp_path / "p.toml"
    policy.write_text('[[inbound]]\nname = "ssh"\nports = ["22/tcp"]\nfrom = ["any"]\n')
    result = srv.run("verify", "-p", str(policy), "--target", "127.0.0.1", "--json")
    assert "loopback" in json.loads(result.stdout)["notes"][0]


def test_scan_json(lab: Lab, tmp_path: Path) -> None:
    lab.listen("srv", ["22/tcp", "5353/udp"])
    lan = Portward(lab, tmp_path / "state", ns="lan")
    document = lan.json("scan", SRV_LAN4, "-p", "20-25", "--udp", "5353,5354")
    states = {(p["port"], p["proto"]): p["state"] for p in document["ports"]}
    assert states[(22, "tcp")] == "open" and states[(23, "tcp")] == "closed"
    assert states[(5353, "udp")] == "open" and states[(5354, "udp")] == "closed"
    assert document["host"] == SRV_LAN4
