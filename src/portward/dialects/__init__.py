"""One small module per dialect, each with its reader and/or writer (sqlglot-style).

The CLI finds them here: `EXPORTERS` maps `export --format F` to a writer, `IMPORTERS` maps
`import --from S` to a reader.  Modules are imported only when used, so `portward check` does not pay
for firewalld's XML or the hosts_access evaluator.

A writer is `render(loaded, policy_path, root) -> Rendered`; a reader is `read(paths) -> Converted`
whose `text` is a policy TOML that passes `portward check` (the CLI checks it again before writing).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from portward.policy.toml import LoadedPolicy


@dataclass
class Rendered:
    """Files relative to a root (`etc/hosts.allow`), plus notes on what the dialect cannot say."""

    files: dict[str, str]
    notes: list[str] = field(default_factory=list)
    # True when the files are one stream a tool reads on stdin (`iptables-restore < out`, `sh out`):
    # without --root, print it bare instead of with `# --- /path` headers.
    stream: bool = False


@dataclass
class Converted:
    """A policy TOML made from another tool's files, and notes on what did not carry over."""

    text: str
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # extra counts for --json (rules, doors, …)


class Writer(Protocol):
    def __call__(self, loaded: LoadedPolicy, policy_path: str, root: Path) -> Rendered: ...


class Reader(Protocol):
    def __call__(self, paths: list[str]) -> Converted: ...


# format/source -> "module:function"
EXPORTERS: dict[str, str] = {
    "nft": "portward.dialects.nft:export",
    "iptables": "portward.dialects.iptables_out:export_v4",
    "ip6tables": "portward.dialects.iptables_out:export_v6",
    "firewalld": "portward.dialects.firewalld:export",
    "ufw": "portward.dialects.ufw:export",
    "systemd": "portward.dialects.systemd:export",
    "hosts": "portward.dialects.hosts:export",
    "sysctl": "portward.dialects.sysctl:export",
}

IMPORTERS: dict[str, str] = {
    "iptables-save": "portward.dialects.from_rules:read_iptables_save",
    "knockd": "portward.dialects.knockd:read_policy",
    "hosts": "portward.dialects.hosts:read_policy",
    "fwknop": "portward.dialects.fwknop:read_policy",
}


def read_input(name: str) -> str:
    """A file a reader was given, or InputError (exit 2) saying what to do."""
    from portward.errors import InputError

    try:
        return Path(name).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise InputError(f"{name}: cannot read it: {error.strerror} — check the path") from None


def comment_safe(text: str) -> str:
    """Text safe inside a TOML comment: control characters and undecodable bytes become '?'."""
    return "".join(char if char.isprintable() else "?" for char in text)


def toml_lines(values: dict[str, Any]) -> list[str]:
    """`key = value` lines (values as JSON, which TOML reads the same for strings, numbers, lists, booleans)."""
    import json

    return [f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in values.items()]


def doors_policy_text(tool: str, config: str, paths: list[str], notes: list[str], blocks: list[list[str]]) -> str:
    """The policy an importer of door daemons' configs (knockd, fwknop) writes: notes, a drop default, doors."""
    lines = [f"# imported by portward from {tool} config {', '.join(map(comment_safe, paths))}",
             "# review it, then: portward check -p FILE", ""]
    lines += [f"# NOTE {comment_safe(note)}" for note in notes]
    if notes:
        lines.append("")
    lines += [
        "[defaults]",
        f"# {config} says nothing about what else may connect: add [[inbound]] rules (ssh from your LAN, …)",
        'inbound = "drop"',
        "",
    ]
    for block in blocks:
        lines += [*block, ""]
    return "\n".join(lines)


def _resolve(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def writer(fmt: str) -> Writer:
    """The writer for `export --format fmt`."""
    found: Writer = _resolve(EXPORTERS[fmt])
    return found


def reader(source: str) -> Reader:
    """The reader for `import --from source`."""
    found: Reader = _resolve(IMPORTERS[source])
    return found
