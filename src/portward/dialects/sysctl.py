"""The sysctl.d dialect: a policy's [sysctl] as a drop-in file (`export --format sysctl`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from portward.dialects import Rendered
from portward.policy.model import Policy
from portward.policy.sysctls import expectations

if TYPE_CHECKING:
    from portward.policy.toml import LoadedPolicy

DROP_IN = "etc/sysctl.d/90-portward.conf"


def render(policy: Policy, source: str = "") -> str:
    lines = [
        f"# written by portward from {source or 'a policy'}; profile {policy.sysctl.profile}",
        "# load with: sysctl --system (or sysctl -p this file)",
    ]
    for item in expectations(policy.sysctl):
        if item.settable:
            lines.append(f"# {item.why}")
            lines.append(f"{item.key} = {item.value}")
    return "\n".join(lines) + "\n"


def export(loaded: LoadedPolicy, policy_path: str, root: Path) -> Rendered:
    """`export --format sysctl`: one sysctl.d file that `sysctl -p FILE` loads."""
    return Rendered({DROP_IN: render(loaded.policy, os.path.abspath(policy_path))}, stream=True)
