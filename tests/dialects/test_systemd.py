"""export --format systemd: drop-ins per unit (seed 000), accepted by systemd-analyze verify --root."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

POLICY = """
[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64"]

[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
unit = "ssh.service"

[[inbound]]
name = "cockpit"
ports = ["9090/tcp"]
from = ["localhost", "lan"]
unit = "cockpit.socket"
listen = "198.18.0.1"

[[inbound]]
name = "echo"
ports = ["7/tcp"]
from = ["198.19.0.0/16"]
unit = "echo.socket"
"""

UNITS = {
    "cockpit.socket": "[Unit]\nDescription=cockpit\n[Socket]\nListenStream=9090\n[Install]\nWantedBy=sockets.target\n",
    "cockpit.service": "[Unit]\nDescription=c\nDefaultDependencies=no\n[Service]\nExecStart=/usr/bin/true\n",
    "echo.socket": "[Unit]\nDescription=echo\n[Socket]\nListenStream=7\nAccept=yes\n",
    "echo@.service": "[Unit]\nDescription=e\nDefaultDependencies=no\n[Service]\nExecStart=/usr/bin/true\n",
}


def export(tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path / "root"
    for name, text in UNITS.items():
        path = root / "etc/systemd/system" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    done = subprocess.run([sys.executable, "-m", "portward", "export", "--format", "systemd", "-p", str(policy),
                           "--root", str(root)], capture_output=True, text=True)
    return root, done


def test_drop_ins(tmp_path: Path) -> None:
    root, done = export(tmp_path)
    assert done.returncode == 0, done.stderr
    base = root / "etc/systemd/system"
    socket = (base / "cockpit.socket.d/50-portward.conf").read_text()
    assert "[Socket]\nIPAddressDeny=any\nIPAddressAllow=localhost 198.18.0.0/24 2001:db8:0:1::/64\n" in socket
    assert "ListenStream=\n" in socket and "ListenStream=198.18.0.1:9090\n" in socket and "FreeBind=yes" in socket
    service = (base / "cockpit.service.d/50-portward.conf").read_text()
    assert "[Service]\nIPAddressDeny=any\n" in service and "ListenStream" not in service
    assert (base / "echo@.service.d/50-portward.conf").exists()  # Accept=yes: the template gets the list
    assert not (base / "ssh.service.d").exists()  # from any: nothing to restrict
    assert not list(base.glob("*-socket.d"))  # not the seed's cockpit-socket.d typo


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_them(tmp_path: Path) -> None:
    root, _done = export(tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "cockpit.socket", "cockpit.service",
                             "echo.socket"], capture_output=True, text=True)
    ours = [line for line in verify.stderr.splitlines() if "50-portward.conf" in line]
    assert ours == [], ours  # no unknown key, bad value or wrong section in what we wrote
