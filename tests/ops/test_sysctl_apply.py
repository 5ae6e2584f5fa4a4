"""[sysctl] in plan / apply / rollback / restore: values set in the lab's namespace, never the host's."""

from __future__ import annotations

from pathlib import Path

from tests.netlab import Lab
from tests.pwutil import Portward, write

ROUTER = """
[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]

[sysctl]
profile = "router"
"net.ipv4.conf.all.rp_filter" = 2
"""


def sysctl_value(lab: Lab, key: str) -> str:
    return lab.run("srv", ["cat", "/proc/sys/" + key.replace(".", "/")]).stdout.strip()


def test_apply_sets_rollback_restores_restore_reapplies(lab: Lab, tmp_path: Path) -> None:
    host_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    lab.run("srv", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.all.send_redirects=1"])
    pw = Portward(lab, tmp_path / "state")
    policy = write(tmp_path / "policy.toml", ROUTER)

    planned = pw.json("plan", "-p", str(policy))
    keys = {c["key"]: c for c in planned["changes"] if c["object"] == "sysctl"}
    assert keys["net.ipv4.ip_forward"]["to"] == "1" and keys["net.ipv4.ip_forward"]["from"] == "0"
    assert keys["net.ipv4.conf.all.rp_filter"]["to"] == "2"
    assert "net.ipv4.conf.all.send_redirects" not in keys  # the router profile does not demand it
    assert sysctl_value(lab, "net.ipv4.ip_forward") == "0"  # plan changes nothing

    applied = pw.json("apply", "-p", str(policy), "--yes")
    assert any(c.get("key") == "net.ipv4.ip_forward" for c in applied["changes"])
    assert sysctl_value(lab, "net.ipv4.ip_forward") == "1"
    assert sysctl_value(lab, "net.ipv4.conf.all.rp_filter") == "2"
    assert sysctl_value(lab, "net.ipv4.conf.all.accept_redirects") == "0"
    assert (tmp_path / "state" / "sysctl.conf").read_text().count("net.ipv4.ip_forward = 1") == 1
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == host_forward  # the host is untouched
    assert not [c for c in pw.json("plan", "-p", str(policy))["changes"] if c["object"] == "sysctl"]

    pw.ok("rollback")
    assert sysctl_value(lab, "net.ipv4.ip_forward") == "0"
    assert sysctl_value(lab, "net.ipv4.conf.all.rp_filter") == "0"

    pw.ok("apply", "-p", str(policy), "--yes")
    lab.run("srv", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])  # e.g. a reboot
    restored = pw.json("restore")
    assert any(c.get("key") == "net.ipv4.ip_forward" for c in restored["changes"])
    assert sysctl_value(lab, "net.ipv4.ip_forward") == "1"


def test_policy_without_sysctl_leaves_them_alone(lab: Lab, tmp_path: Path) -> None:
    lab.run("srv", ["sysctl", "-q", "-w", "net.ipv4.conf.all.accept_redirects=1"])
    pw = Portward(lab, tmp_path / "state")
    policy = write(tmp_path / "policy.toml", ROUTER.split("[sysctl]")[0])
    result = pw.json("apply", "-p", str(policy), "--yes")
    assert not [c for c in result["changes"] if c["object"] == "sysctl"]
    assert sysctl_value(lab, "net.ipv4.conf.all.accept_redirects") == "1"


def test_export_sysctl(tmp_path: Path) -> None:
    import subprocess
    import sys

    policy = write(tmp_path / "policy.toml", ROUTER)
    done = subprocess.run([sys.executable, "-m", "portward", "export", "--format", "sysctl", "-p", str(policy),
                           "--root", str(tmp_path / "root")], capture_output=True, text=True, check=True)
    text = (tmp_path / "root/etc/sysctl.d/90-portward.conf").read_text()
    assert "net.ipv4.ip_forward = 1" in text and "net.ipv4.conf.all.rp_filter = 2" in text
    assert "mc_forwarding" not in text  # read-only: audited, never written
    assert done.returncode == 0
