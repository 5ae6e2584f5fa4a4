"""The systemd units we ship load (systemd-analyze verify) and start commands that exist."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pwutil import ROOT

UNITS = sorted((ROOT / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_unit_verifies_and_its_command_exists(unit: Path) -> None:
    path = unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing")
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(path)
    argv = shlex.split(parser["Service"]["ExecStart"])
    assert argv[0] == "/usr/local/bin/portward"
    subcommand = next(word for word in argv[1:] if not word.startswith("-"))
    helped = subprocess.run([sys.executable, "-m", "portward", subcommand, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    options = [word.split("=")[0] for word in argv[1:] if word.startswith("-")]
    assert all(option in helped.stdout for option in options)
