"""The systemd dialect (seed 000): per-unit IP access lists as drop-ins.

For every inbound rule with a `unit`: `etc/systemd/system/UNIT.d/50-portward.conf` with `IPAddressDeny=any` and
`IPAddressAllow=` the rule's sources, in `[Service]` for a service and `[Socket]` for a socket (a socket's
service gets the same list: once accepted, its traffic is the service's).  `listen` pins a `.socket` to one
address (`ListenStream=` reset, then ADDRESS:PORT, `FreeBind=yes` so it starts before the address exists).

systemd enforces these with cgroup-BPF programs: on a host without cgroup v2 + BPF they do nothing, which the
export says.  They apply to every port of the unit: a rule's `ports` are not expressible here (noted).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from portward.dialects import Rendered
from portward.policy.addresses import is_loopback, merge, parse_port_spec, to_cidrs
from portward.policy.model import InboundRule, Policy

if TYPE_CHECKING:
    from portward.policy.toml import LoadedPolicy

DROP_IN = "50-portward.conf"
UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")


def _unit_file(root: Path, unit: str) -> Path | None:
    for folder in UNIT_DIRS:
        path = root / folder / unit
        if path.is_file():
            return path
    return None


def _socket_settings(root: Path, unit: str) -> dict[str, str]:
    """`Service=` and `Accept=` of a .socket unit (drop-ins included), read from the unit files under root."""
    settings: dict[str, str] = {}
    paths = []
    found = _unit_file(root, unit)
    if found:
        paths.append(found)
    for folder in UNIT_DIRS:
        paths += sorted((root / folder / f"{unit}.d").glob("*.conf"))
    for path in paths:
        section = ""
        for raw in path.read_text(errors="replace").splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Socket]" and "=" in line:
                key, _sep, value = line.partition("=")
                if key.strip() in ("Service", "Accept"):
                    settings[key.strip()] = value.strip()
    return settings


def activated_service(root: Path, socket_unit: str) -> str:
    settings = _socket_settings(root, socket_unit)
    if settings.get("Service"):
        return settings["Service"]
    stem = socket_unit.removesuffix(".socket")
    if settings.get("Accept", "no").lower() in ("yes", "true", "1", "on"):
        return f"{stem}@.service"  # one instance per connection, all from this template
    return f"{stem}.service"


def allowed_sources(policy: Policy, rule: InboundRule) -> list[str] | None:
    """IPAddressAllow= values; None for `any` (no restriction)."""
    is_any, nets = policy.resolve(rule.from_)
    if is_any:
        return None
    values: list[str] = []
    if "localhost" in rule.from_:
        values.append("localhost")
    for net in merge(nets):
        if is_loopback(net):
            continue  # said by "localhost"
        values.extend(to_cidrs(net))
    return values


def cgroup_bpf_available(sys_root: Path = Path("/sys/fs/cgroup")) -> bool:
    return (sys_root / "cgroup.controllers").exists()


def render(policy: Policy, root: Path) -> tuple[dict[str, str], list[str]]:
    """-> ({relative path: file text}, notes)."""
    files: dict[str, str] = {}
    notes: list[str] = []
    ported: list[str] = []
    for rule in policy.inbound:
        if not rule.unit:
            continue
        allowed = allowed_sources(policy, rule)
        is_socket = rule.unit.endswith(".socket")
        if allowed is None and not (rule.listen and is_socket):
            notes.append(f"inbound {rule.name!r}: from any — {rule.unit} needs no drop-in")
            continue
        if rule.listen and not is_socket:
            notes.append(f"inbound {rule.name!r}: `listen` only applies to .socket units, not {rule.unit}")
        if rule.ports is not None:
            ported.append(rule.unit)
        units = [rule.unit]
        if rule.unit.endswith(".socket"):
            units.append(activated_service(root, rule.unit))
        for unit in units:
            section = "[Socket]" if unit.endswith(".socket") else "[Service]"
            lines = [f"# written by portward for inbound rule {rule.name!r}", section]
            if allowed is None:
                lines.append("# from = any: no address restriction")
            else:
                lines += ["IPAddressDeny=any", f"IPAddressAllow={' '.join(allowed)}"]
            if rule.listen and unit.endswith(".socket"):
                host = f"[{rule.listen}]" if ":" in rule.listen else rule.listen
                lines.append("ListenStream=")
                lines.append("ListenDatagram=")
                for spec in map(parse_port_spec, rule.ports or []):
                    key = "ListenStream" if spec.proto == "tcp" else "ListenDatagram"
                    if spec.proto == "sctp":
                        key = "ListenSequentialPacket"
                    for port in range(spec.first, min(spec.last, spec.first + 63) + 1):
                        lines.append(f"{key}={host}:{port}")
                lines.append("FreeBind=yes")
            files[f"etc/systemd/system/{unit}.d/{DROP_IN}"] = "\n".join(lines) + "\n"
    if ported:
        notes.append(
            f"IPAddressAllow= covers every port of a unit: {', '.join(ported)} — the nftables policy keeps the "
            "port limits"
        )
    if files and not cgroup_bpf_available():
        notes.append(
            "this host has no cgroup v2 (cgroup-BPF): systemd accepts IPAddressAllow=/IPAddressDeny= but enforces "
            "nothing — keep the nftables policy applied"
        )
    if not files:
        notes.append("no inbound rule names a `unit`: nothing to write")
    return files, notes


def export(loaded: LoadedPolicy, policy_path: str, root: Path) -> Rendered:
    """`export --format systemd`: one drop-in per unit named by a rule."""
    files, notes = render(loaded.policy, root)
    return Rendered(files, notes)
