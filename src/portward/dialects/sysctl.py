"""The sysctl.d dialect: a policy's [sysctl] as a drop-in file (`export --format sysctl`)."""

from __future__ import annotations

from portward.policy.model import Policy
from portward.policy.sysctls import expectations

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
