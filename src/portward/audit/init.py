"""`portward init`: propose a policy from what listens here.

ssh stays open to the world (so the first apply cannot lock the operator out); every other listener that is
reachable from the network is narrowed to localhost + the LAN zone; loopback-only listeners need no rule.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

from portward.verify.scan import format_ports

if TYPE_CHECKING:
    from portward.kernel.links import Address

Json = dict[str, Any]
SSH_NAMES = ("sshd", "ssh", "dropbear")
NAME_CLEAN = re.compile(r"[^A-Za-z0-9_.-]+")


def private_networks(addresses: list[Address]) -> list[str]:
    """Directly connected networks that are not globally routable (RFC 1918, ULA, 198.18/15, …)."""
    found: list[str] = []
    for item in addresses:
        if item.interface == "lo":
            continue
        network = ipaddress.ip_interface(f"{item.address}/{item.prefixlen}").network
        if network.is_global or network.is_link_local or network.is_loopback or network.is_multicast:
            continue
        if str(network) not in found:
            found.append(str(network))
    return found


def _is_ssh(entry: Json, ssh_ports: set[int]) -> bool:
    unit = entry.get("unit") or ""
    return (
        entry["proto"] == "tcp"
        and (entry["port"] in ssh_ports or entry.get("process") in SSH_NAMES or unit.split("@")[0].split(".")[0]
             in ("ssh", "sshd", "dropbear"))
    )


def _ranges(ports: list[int], proto: str) -> list[str]:
    """[22, 80, 81, 82], "tcp" -> ["22/tcp", "80-82/tcp"]."""
    return [f"{run}/{proto}" for run in format_ports(ports).split(",")]


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(value) for value in values) + "]"


def propose(audit: Json, lan: list[str], *, forwarding: bool = False) -> str:
    ssh_ports = {22}
    connection = os.environ.get("SSH_CONNECTION", "").split()
    if len(connection) == 4 and connection[3].isdigit():
        ssh_ports.add(int(connection[3]))  # the port this very session came in on
    groups: dict[str, list[Json]] = {}
    for entry in audit["sockets"]:
        if entry["scope"] == "loopback":
            continue
        if _is_ssh(entry, ssh_ports):
            key = "ssh"
        else:
            key = NAME_CLEAN.sub("-", entry.get("process") or entry.get("unit") or f"port-{entry['port']}").strip("-")
            key = key.lower() or f"port-{entry['port']}"
        groups.setdefault(key, []).append(entry)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"# portward policy proposed by `portward init` on {audit.get('host', 'this host')} at {when}",
        f"# from {len(audit['sockets'])} listening sockets. Review it, then:",
        "#   portward check -p FILE && portward plan -p FILE && portward apply -p FILE --confirm 60",
        "",
        "[defaults]",
        'inbound = "drop"',
        'outbound = "accept"',
    ]
    if forwarding:
        lines.append('forward = "keep"     # this host forwards packets (router, Docker): leave forwarding as it is')
    else:
        lines.append('forward = "drop"')
    lines += ["log_denied = false", ""]
    if lan:
        lines += ["[zones]", f"lan = {_toml_list(lan)}", ""]
    else:
        lines += ["# no private network is directly connected: the services below are open to localhost only;",
                  "# add [zones] lan = [\"CIDR\", …] and \"lan\" to their `from` to open them to your network", ""]
    if "ssh" not in groups:
        lines += ["# no ssh daemon listens here; this rule keeps port 22 open for when one does (remove it if not)"]
        groups = {"ssh": [], **groups}
    for name in ["ssh", *sorted(key for key in groups if key != "ssh")]:
        entries = groups[name]
        if name == "ssh":
            ports = sorted({e["port"] for e in entries}) or sorted(ssh_ports)
            tcp = _ranges(ports, "tcp")
            sources = ["any"]
            specs = tcp
        else:
            specs = []
            for proto in ("tcp", "udp", "sctp"):
                ports = [e["port"] for e in entries if e["proto"] == proto]
                if ports:
                    specs += _ranges(ports, proto)
            sources = ["localhost", "lan"] if lan else ["localhost"]
        lines.append("[[inbound]]")
        for entry in entries[:3]:
            where = f"[{entry['address']}]" if ":" in entry["address"] else entry["address"]
            lines.append(
                f"# {entry.get('process') or '?'} (pid {entry.get('pid')}, {entry.get('unit') or 'no unit'}) "
                f"listens on {where}:{entry['port']}/{entry['proto']} — now {entry['exposure']}"
            )
        if len(entries) > 3:
            lines.append(f"# … and {len(entries) - 3} more sockets")
        lines.append(f"name = {json.dumps(name)}")
        lines.append(f"ports = {_toml_list(specs)}")
        lines.append(f"from = {_toml_list(sources)}")
        units = sorted({e["unit"] for e in entries if e.get("unit") and e["unit"].endswith((".service", ".socket"))})
        if len(units) == 1:
            lines.append(f"unit = {json.dumps(units[0])}")
        processes = sorted({e["process"] for e in entries if e.get("process")})
        if len(processes) == 1:
            lines.append(f"daemon = {json.dumps(processes[0])}")
        lines.append("")
    return "\n".join(lines)
