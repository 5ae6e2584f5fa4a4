"""Run the real `portward` CLI inside a lab namespace with a private state dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.netlab import Lab

ROOT = Path(__file__).resolve().parent.parent


class Portward:
    def __init__(self, lab: Lab, state_dir: Path, ns: str = "srv") -> None:
        self.lab, self.state_dir, self.ns = lab, state_dir, ns

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_CONNECTION", "SSH_CLIENT")}
        env["PORTWARD_STATE_DIR"] = str(self.state_dir)
        env["PYTHONPATH"] = str(ROOT / "src")
        env.update(extra)
        return env

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = self.lab.run(self.ns, [sys.executable, "-m", "portward", *args], env=env or self.env())
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def ok(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, env=env)
        assert result.returncode == 0, f"portward {' '.join(args)} -> {result.returncode}\n{result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def table_text(self) -> str:
        result = self.lab.run(self.ns, ["nft", "list", "table", "inet", "portward"])
        return result.stdout if result.returncode == 0 else ""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
