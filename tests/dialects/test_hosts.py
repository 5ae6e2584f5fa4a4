"""export --format hosts answers like the policy, as tcpdmatch (the real libwrap evaluator) sees it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from portward.policy.evaluate import inbound_decision
from portward.policy.toml import load_policy

POLICY = """
[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64"]
office = ["198.19.4.0/22"]

[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["localhost", "lan", "office"]
daemon = "sshd"

[[inbound]]
name = "ftp-bad"
ports = ["21/tcp"]
from = ["198.18.0.66"]
daemon = "vsftpd"
action = "drop"

[[inbound]]
name = "ftp"
ports = ["21/tcp"]
from = ["lan"]
daemon = "vsftpd"

[[inbound]]
name = "finger"
ports = ["79/tcp"]
from = ["any"]
daemon = "in.fingerd"
"""

CLIENTS = ["198.18.0.5", "198.18.0.66", "198.19.5.9", "198.19.8.1", "2001:db8:0:1::5", "2001:db8:0:2::5",
           "127.0.0.1", "::1"]
DAEMONS = {"sshd": 22, "vsftpd": 21, "in.fingerd": 79}


@pytest.mark.skipif(shutil.which("tcpdmatch") is None, reason="tcpdmatch (package tcpd) not installed")
def test_tcpdmatch_agrees_with_the_policy_on_a_grid(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    done = subprocess.run([sys.executable, "-m", "portward", "export", "--format", "hosts", "-p", str(policy),
                           "--root", str(tmp_path / "root")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    work = tmp_path / "cwd"  # tcpdmatch -d reads ./hosts.allow and ./hosts.deny
    work.mkdir()
    for name in ("hosts.allow", "hosts.deny"):
        (work / name).write_text((tmp_path / "root/etc" / name).read_text())
    loaded = load_policy(str(policy))
    for daemon, port in DAEMONS.items():
        for client in CLIENTS:
            answer = subprocess.run(["tcpdmatch", "-d", daemon, client], capture_output=True, text=True, cwd=work)
            granted = "access:   granted" in answer.stdout
            assert "access:" in answer.stdout, answer.stdout + answer.stderr
            expected = inbound_decision(loaded, client, port, "tcp").admitted
            assert granted == expected, (daemon, client, answer.stdout)
    check = subprocess.run(["tcpdchk", "-d"], capture_output=True, text=True, cwd=work)
    assert "error" not in (check.stdout + check.stderr).lower(), check.stdout + check.stderr
