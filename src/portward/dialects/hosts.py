"""The TCP Wrappers dialect (seed 002): hosts.allow / hosts.deny for daemons built with libwrap.

Writer only for now: every inbound rule with a `daemon` becomes `daemon: clients` in hosts.allow, in policy
order because the first matching line wins. v4 networks are written as address/mask, v6 as [prefix]/len,
`any` as ALL; every admitting line also names loopback (127.0.0.1, [::1]) since portward always admits it;
a drop/reject rule gets the `: deny` option. hosts.deny is `ALL: ALL`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from portward.dialects import Rendered
from portward.policy.addresses import Net, format_address, is_loopback, merge, to_cidrs
from portward.policy.model import Policy

if TYPE_CHECKING:
    from portward.policy.toml import LoadedPolicy

ALLOW = "etc/hosts.allow"
DENY = "etc/hosts.deny"


def _client(net: Net) -> list[str]:
    out = []
    for cidr in to_cidrs(net):
        address, _slash, length = cidr.partition("/")
        width = 32 if net.family == 4 else 128
        if int(length) == width:
            out.append(address if net.family == 4 else f"[{address}]")
        elif net.family == 4:
            mask = ((1 << 32) - 1) ^ ((1 << (32 - int(length))) - 1)
            out.append(f"{address}/{format_address(4, mask)}")
        else:
            out.append(f"[{address}]/{length}")
    return out


def clients(policy: Policy, sources: list[str]) -> list[str]:
    is_any, nets = policy.resolve(sources)
    if is_any:
        return ["ALL"]
    out: list[str] = []
    for net in merge(nets):
        if is_loopback(net):  # libwrap matches the client address; loopback clients use 127.0.0.1 or ::1
            out.append("127.0.0.1" if net.family == 4 else "[::1]")
            continue
        out.extend(_client(net))
    return out


def render(policy: Policy, source: str = "") -> tuple[dict[str, str], list[str]]:
    allow = [f"# written by portward from {source or 'a policy'}: first matching line wins", ""]
    notes: list[str] = []
    for rule in policy.inbound:
        if not rule.daemon:
            continue
        names = clients(policy, rule.from_)
        if rule.action == "accept" and names != ["ALL"]:
            # portward always admits loopback; say so where libwrap would otherwise refuse it
            names = ["127.0.0.1", "[::1]"] + [name for name in names if name not in ("127.0.0.1", "[::1]")]
        line = f"{rule.daemon}: {' '.join(names)}"
        if rule.action != "accept":
            line += " : deny"
        allow.append(f"# inbound {rule.name!r}")
        allow.append(line)
    if len(allow) == 2:
        notes.append("no inbound rule names a `daemon`: hosts.allow admits nothing")
    else:
        notes.append("hosts.allow cannot say ports or interfaces: each daemon's line covers all of its ports")
    deny = "# written by portward: whatever hosts.allow does not admit is refused\nALL: ALL\n"
    return {ALLOW: "\n".join(allow) + "\n", DENY: deny}, notes


def export(loaded: LoadedPolicy, policy_path: str, root: Path) -> Rendered:
    """`export --format hosts`: etc/hosts.allow and etc/hosts.deny."""
    files, notes = render(loaded.policy, os.path.abspath(policy_path))
    return Rendered(files, notes)
