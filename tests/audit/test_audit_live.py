"""`portward audit` in a lab namespace: process, scope and exposure under no ruleset, a portward policy, a
foreign iptables-nft rule and an iptables-legacy rule; `-p` says where the live ruleset disagrees."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import Lab
from tests.pwutil import Portward, write

POLICY = """
[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64"]

[[inbound]]
name = "ssh"
ports = ["2222/tcp"]
from = ["any"]

[[inbound]]
name = "app"
ports = ["2224/tcp"]
from = ["lan"]
"""


def by_key(document: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(s["proto"], s["address"], s["port"]): s for s in document["sockets"]}


def test_audit_follows_the_live_ruleset(lab: Lab, tmp_path: Path) -> None:
    listener = lab.listen("srv", ["2222/tcp", "127.0.0.1:2223/tcp", "198.18.0.1:2224/tcp", "5353/udp"])
    pw = Portward(lab, tmp_path / "state")
    policy = write(tmp_path / "policy.toml", POLICY)

    sockets = by_key(pw.json("audit"))
    ssh4, ssh6 = sockets[("tcp", "0.0.0.0", 2222)], sockets[("tcp", "::", 2222)]
    assert ssh4["pid"] == listener.pid and ssh4["process"] and ssh4["process"].startswith("python")
    assert (ssh4["scope"], ssh4["exposure"], ssh4["allowed_from"]) == ("any", "world", ["any"])
    assert (ssh6["scope"], ssh6["exposure"]) == ("any", "world")
    loopback = sockets[("tcp", "127.0.0.1", 2223)]
    assert (loopback["scope"], loopback["exposure"]) == ("loopback", "local")
    assert sockets[("tcp", "198.18.0.1", 2224)]["scope"] == "address"
    assert sockets[("udp", "0.0.0.0", 5353)]["exposure"] == "world"

    pw.ok("apply", "-p", str(policy), "--yes")
    document = pw.json("audit", "-p", str(policy))
    sockets = by_key(document)
    assert sockets[("tcp", "0.0.0.0", 2222)]["exposure"] == "world"
    app = sockets[("tcp", "198.18.0.1", 2224)]
    assert (app["exposure"], app["allowed_from"]) == ("restricted", ["198.18.0.0/24"])
    assert sockets[("udp", "0.0.0.0", 5353)]["exposure"] == "blocked"
    assert sockets[("udp", "::", 5353)]["exposure"] == "blocked"
    assert all(s["matches_policy"] for s in document["sockets"]), document["sockets"]

    # a foreign iptables-nft rule with matches nft -j only shows as opaque xt (multiport)
    lab.run("srv", ["iptables", "-I", "INPUT", "-s", "198.19.0.0/16", "-p", "tcp", "-m", "multiport",
                    "--dports", "2222,2225", "-j", "DROP"], check=True)
    document = pw.json("audit", "-p", str(policy))
    ssh4 = by_key(document)[("tcp", "0.0.0.0", 2222)]
    assert ssh4["exposure"] == "restricted", ssh4
    assert ssh4["allowed_from"] == ["0.0.0.0/0"] and ssh4["denied_from"] == ["198.19.0.0/16"]
    assert ssh4["matches_policy"] is False
    assert "198.19.0.0/16 on eth-wan" in ssh4["difference"]["policy_only"]
    assert by_key(document)[("tcp", "::", 2222)]["matches_policy"] is True  # an ip table never sees IPv6
    assert any(f["name"] == "iptables" for f in document["firewalls"])


@pytest.mark.skipif(shutil.which("iptables-legacy") is None, reason="iptables-legacy not installed")
def test_iptables_legacy_rules_count(lab: Lab, tmp_path: Path) -> None:
    lab.listen("srv", ["198.18.0.1:2224/tcp", "2226/tcp"])
    pw = Portward(lab, tmp_path / "state")
    lab.run("srv", ["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "2224", "-j", "DROP"], check=True)
    lab.run("srv", ["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "2226", "-i", "eth-wan", "-j",
                    "REJECT"], check=True)
    document = pw.json("audit")
    sockets = by_key(document)
    assert sockets[("tcp", "198.18.0.1", 2224)]["exposure"] == "blocked"
    wan_closed = sockets[("tcp", "0.0.0.0", 2226)]
    assert wan_closed["exposure"] == "restricted" and wan_closed["via"] == ["eth-lan"]
    assert wan_closed["allowed_from"] == ["any"]
    assert any(f["name"] == "iptables-legacy" for f in document["firewalls"])
    assert sockets[("tcp", "::", 2226)]["exposure"] == "world"  # ip6tables-legacy has no rule


def test_unknown_names_the_rule(lab: Lab, tmp_path: Path) -> None:
    lab.listen("srv", ["2222/tcp"])
    lab.run("srv", ["iptables", "-A", "INPUT", "-p", "tcp", "-m", "recent", "--name", "x", "--rcheck", "-j",
                    "DROP"], check=True)
    document = Portward(lab, tmp_path / "state").json("audit")
    ssh4 = by_key(document)[("tcp", "0.0.0.0", 2222)]
    assert ssh4["exposure"] == "unknown" and "recent" in ssh4["unknown"][0]


def test_sysctl_and_legacy_configs(lab: Lab, tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_tree = {
        "etc/hosts.allow": "# comment\nsshd: 198.18.0.0/255.255.255.0\n",
        "etc/hosts.deny": "ALL: ALL\n",
        "etc/knockd.conf": "[options]\n  UseSyslog\n",
        "etc/systemd/system/nginx.service.d/ip.conf": "[Service]\nIPAddressDeny=any\nIPAddressAllow=198.18.0.0/24\n",
        "etc/ufw/ufw.conf": "ENABLED=yes\n",
    }
    for relative, text in write_tree.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    lab.run("srv", ["sysctl", "-q", "-w", "net.ipv4.conf.all.accept_redirects=1", "net.ipv4.tcp_syncookies=1"])
    document = Portward(lab, tmp_path / "state").json("audit", "--root", str(root))
    sysctls = {item["key"]: item for item in document["sysctl"]}
    assert sysctls["net.ipv4.conf.all.accept_redirects"] == {
        "key": "net.ipv4.conf.all.accept_redirects", "value": "1", "expected": "0", "ok": False,
        "why": sysctls["net.ipv4.conf.all.accept_redirects"]["why"],
    }
    assert sysctls["net.ipv4.tcp_syncookies"]["ok"] is True
    assert sysctls["net.ipv4.ip_forward"]["expected"] == "0"  # host profile by default
    kinds = {(item["path"], item["kind"]) for item in document["legacy"]}
    assert {("/etc/hosts.allow", "hosts"), ("/etc/hosts.deny", "hosts"), ("/etc/knockd.conf", "knockd"),
            ("/etc/systemd/system/nginx.service.d/ip.conf", "systemd")} <= kinds
    assert {"name": "ufw", "tables": [], "config": "/etc/ufw/ufw.conf", "active": False} in document["firewalls"]
    router = Portward(lab, tmp_path / "state").json("audit", "--root", str(root), "--profile", "router")
    assert {i["key"]: i for i in router["sysctl"]}["net.ipv4.ip_forward"]["expected"] == "1"
