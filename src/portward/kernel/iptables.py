"""Read iptables rules as text: iptables-nft tables whose matches `nft -j` shows as opaque `xt`, and
iptables-legacy tables, which live outside nftables altogether (see notes on iptables-nft)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SAVE_TOOLS = {
    ("nft", 4): ("iptables-nft-save", "iptables-save"),
    ("nft", 6): ("ip6tables-nft-save", "ip6tables-save"),
    ("legacy", 4): ("iptables-legacy-save",),
    ("legacy", 6): ("ip6tables-legacy-save",),
}
LEGACY_NAMES = {4: Path("/proc/net/ip_tables_names"), 6: Path("/proc/net/ip6_tables_names")}


def legacy_tables(family: int) -> list[str]:
    """Tables iptables-legacy has set up in this network namespace (the file exists once x_tables is loaded)."""
    try:
        return LEGACY_NAMES[family].read_text().split()
    except OSError:
        return []


def save(variant: str, family: int, table: str | None = None) -> str | None:
    """`iptables-save` output of one variant ("nft" | "legacy"), None when the tool is not installed or fails."""
    for tool in SAVE_TOOLS[(variant, family)]:
        path = shutil.which(tool)
        if path is None:
            continue
        argv = [path] + (["-t", table] if table else [])
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        if done.returncode != 0:
            return None
        if variant == "nft" and tool.endswith("tables-save") and "nf_tables" not in (done.stdout + done.stderr):
            return None  # plain iptables-save that is the legacy one: not what was asked for
        return done.stdout
    return None
