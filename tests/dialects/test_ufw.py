"""export --format ufw, run by the real ufw.

The script runs in the lab's srv namespace inside a private mount namespace where temp copies of /etc/ufw and
/etc/default/ufw sit on the real paths (ufw keeps all of its state there), so the host's files and ruleset are
never touched; `ufw --force enable` then loads it into srv's kernel.  The lab probes in and out from lan and wan,
and again with portward's own nft ruleset on the same grid (a differential test): both must answer as the
policy says.  The grid and the policies are test_firewalld's, so the three dialects meet on the same ground.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portward.dialects.nft import compile_policy, render_text
from portward.dialects.ufw import export, port_groups
from portward.policy.toml import load_policy_text
from tests.dialects.test_firewalld import LIVE, expected_grid, probe_grid
from tests.netlab import Lab

pytestmark = pytest.mark.skipif(shutil.which("ufw") is None, reason="ufw (package ufw) not installed")

# ufw keeps everything under these two paths; a private mount namespace puts temp copies there
SANDBOX = (
    'mount --make-rprivate / && mount --bind "$1/ufw" /etc/ufw && '
    'mount --bind "$1/default-ufw" /etc/default/ufw && exec sh -c "$2"'
)


def script_of(policy_text: str, tmp_path: Path) -> Path:
    """export --format ufw through the CLI, written under --root."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text)
    root = tmp_path / "root"
    done = subprocess.run(
        [sys.executable, "-m", "portward", "export", "--format", "ufw", "-p", str(policy), "--root", str(root)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    return root / "etc/portward/ufw.sh"


def sandbox(tmp_path: Path) -> Path:
    box = tmp_path / "ufw-box"
    shutil.copytree("/etc/ufw", box / "ufw")
    shutil.copy("/etc/default/ufw", box / "default-ufw")
    return box


def in_sandbox(lab: Lab, box: Path, command: str) -> subprocess.CompletedProcess[str]:
    done = lab.run("srv", ["unshare", "-m", "sh", "-c", SANDBOX, "sh", str(box), command], timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert "ERROR" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


# ---------------------------------------------------------------------------------------- the script


def test_rules_go_on_top_in_policy_order_and_nothing_is_wiped() -> None:
    text = """
[defaults]
inbound = "reject"
[[inbound]]
name = "first"
ports = ["22/tcp"]
from = ["198.18.0.0/24", "2001:db8:0:1::/64"]
[[inbound]]
name = "second"
ports = ["22/tcp"]
from = ["any"]
action = "drop"
[block]
from = ["198.19.0.99"]
"""
    script = export(load_policy_text(text, "p.toml"), "p.toml", Path("/")).files["etc/portward/ufw.sh"]
    rules = [line for line in script.splitlines() if line.startswith("ufw prepend ")]
    # prepended last first: read bottom-up they are block (in, out), first (v4, v6), second
    names = [re.search(r"'portward: ([^']*)'", line).group(1) for line in reversed(rules)]  # type: ignore[union-attr]
    assert names == ["block", "block", "first", "first", "second"]
    assert all(" comment 'portward: " in line for line in rules)
    assert "ufw default reject incoming" in script and "ufw default deny routed" in script
    commands = "\n".join(line for line in script.splitlines() if not line.startswith("#"))
    for forbidden in ("ufw reset", "ufw enable", "--force enable", "ufw disable"):
        assert forbidden not in commands


def test_what_ufw_cannot_say_is_noted() -> None:
    text = """
[[inbound]]
name = "diameter"
ports = ["3868/sctp", "3869/tcp"]
from = ["any"]
[[inbound]]
name = "api"
ports = ["8443/tcp"]
from = ["any"]
rate = "100/second"
[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
rate = "10/minute"
[[inbound]]
name = "vault"
ports = ["8200/tcp"]
from = ["any"]
rate = "1/day"
[[knock]]
name = "k"
sequence = ["7000/tcp"]
open = ["22/tcp"]
"""
    rendered = export(load_policy_text(text, "p.toml"), "p.toml", Path("/"))
    script, notes = rendered.files["etc/portward/ufw.sh"], "\n".join(rendered.notes)
    assert rendered.stream
    assert "port 3869 proto tcp" in script and "3868" not in script and "no sctp ports" in notes
    assert "ufw prepend allow in from any to any port 8443 proto tcp" in script  # 100/s is far from 6/30 s
    assert "ufw prepend limit in from any to any port 22 proto tcp" in script  # 10/minute is close enough
    assert "knock 'k'" in notes and "# note: knock 'k'" in script
    assert "ufw prepend limit in from any to any port 8200 proto tcp" in script  # far stricter: still limited,
    assert "'vault': rate 1/day becomes `ufw limit`" in notes and "17280 times looser" in notes  # and said so


def test_port_groups_respect_multiport_slots() -> None:
    singles = [(port, port) for port in range(1, 21)]
    assert list(port_groups(singles)) == [",".join(map(str, range(1, 16))), "16,17,18,19,20"]
    assert list(port_groups([(1, 1), (10, 20), (30, 30)])) == ["1,10:20,30"]
    ranges = [(port * 10, port * 10 + 5) for port in range(1, 9)]  # 8 ranges = 16 slots
    assert [group.count(":") for group in port_groups(ranges)] == [7, 1]


# ------------------------------------------------------------------------------------------------- live


@pytest.fixture(scope="module")
def served(lab_module: Lab) -> Iterator[Lab]:
    from tests.dialects.test_firewalld import IN_PORTS, OUT_PORTS

    listeners = [lab_module.listen("srv", IN_PORTS), lab_module.listen("lan", OUT_PORTS),
                 lab_module.listen("wan", OUT_PORTS)]
    try:
        yield lab_module
    finally:
        for proc in listeners:
            lab_module.stop(proc)


@pytest.mark.parametrize("name", sorted(LIVE))
def test_live_ufw_agrees_with_nft_and_the_policy(served: Lab, tmp_path: Path, name: str) -> None:
    lab = served
    loaded = load_policy_text(LIVE[name], str(tmp_path / "policy.toml"))
    script = script_of(LIVE[name], tmp_path)
    box = sandbox(tmp_path)
    expected = expected_grid(loaded)
    assert {"open", "closed", "filtered"} <= set(expected.values())
    lab.flush_ruleset("srv")
    try:
        in_sandbox(lab, box, f"sh -e {script} && ufw --force enable")
        by_ufw = probe_grid(lab)
        lab.flush_ruleset("srv")
        lab.nft("srv", "-f", "-", stdin=render_text(compile_policy(loaded)))
        by_nft = probe_grid(lab)
    finally:
        lab.flush_ruleset("srv")
    assert {key: by_nft[key] for key in expected} == expected
    assert {key: by_ufw[key] for key in expected} == expected


def test_rerun_replaces_only_portward_rules(lab_module: Lab, tmp_path: Path) -> None:
    """The user's own rule survives two exports; the first export's rules are gone after the second."""
    before = script_of('[[inbound]]\nname = "old"\nports = ["8080/tcp"]\nfrom = ["any"]\n', tmp_path / "a")
    after = script_of('[[inbound]]\nname = "new"\nports = ["9090/tcp"]\nfrom = ["198.18.0.0/24"]\n', tmp_path / "b")
    box = sandbox(tmp_path)
    in_sandbox(lab_module, box, f"ufw allow 2222/tcp && sh -e {before} && sh -e {before} && sh -e {after}")
    added = in_sandbox(lab_module, box, "ufw show added").stdout
    rules = [line for line in added.splitlines() if line.startswith("ufw ")]
    assert rules == ["ufw allow from 198.18.0.0/24 to any port 9090 proto tcp comment 'portward: new'",
                     "ufw allow 2222/tcp"]
