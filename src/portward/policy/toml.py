"""The TOML frontend: read a policy file, validate it, and place every problem at FILE:LINE: key.

tomllib gives no positions, so `locate_keys` makes one pass over the text that records the line of
every table header, key and (multi-line) array element, keyed by the same path pydantic reports.
"""

from __future__ import annotations

import bisect
import difflib
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portward.errors import PolicyError, Problem
from portward.policy.addresses import Net, merge_spans, parse_span

if TYPE_CHECKING:
    from portward.policy.model import Policy

Loc = tuple[str | int, ...]


@dataclass
class LoadedPolicy:
    """A validated policy plus what was read beside it."""

    policy: Policy
    path: str
    text: str
    # [block] from + files, merged, per family: sorted (first, last) ranges. Plain tuples, not Net
    # objects: a block list has 100,000 entries and more.
    block: dict[int, list[tuple[int, int]]] = field(default_factory=lambda: {4: [], 6: []})
    warnings: list[str] = field(default_factory=list)

    @property
    def block_nets(self) -> tuple[Net, ...]:
        return tuple(Net(family, a, b) for family in (4, 6) for a, b in self.block[family])

    def blocked(self, family: int, address: int) -> tuple[int, int] | None:
        """The block range that holds this address, if any (binary search)."""
        spans = self.block[family]
        index = bisect.bisect_right(spans, (address, 1 << 129)) - 1
        if index >= 0 and spans[index][0] <= address <= spans[index][1]:
            return spans[index]
        return None


# --------------------------------------------------------------------------------------------- lines

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _read_key(text: str, pos: int) -> tuple[list[str], int]:
    """Read a (dotted, maybe quoted) key starting at pos; return parts and the position after it."""
    parts: list[str] = []
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] in "\"'":
            quote = text[pos]
            end = pos + 1
            while end < len(text) and text[end] != quote:
                end += 2 if text[end] == "\\" and quote == '"' else 1
            parts.append(text[pos + 1 : end])
            pos = end + 1
        else:
            match = _BARE_KEY.match(text, pos)
            if not match:
                return parts, pos
            parts.append(match.group())
            pos = match.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


def _skip_string(text: str, pos: int) -> int:
    """pos is at a quote; return the position after the string (basic, literal, multi-line)."""
    quote = text[pos]
    if text.startswith(quote * 3, pos):
        end = text.find(quote * 3, pos + 3)
        while quote == '"' and end > 0 and text[end - 1] == "\\":
            end = text.find(quote * 3, end + 1)
        return len(text) if end < 0 else end + 3
    end = pos + 1
    while end < len(text) and text[end] not in (quote, "\n"):
        end += 2 if text[end] == "\\" and quote == '"' else 1
    return end + 1


def locate_keys(text: str) -> dict[Loc, int]:
    """Map paths like ('inbound', 0, 'from', 1) to 1-based line numbers."""
    lines: dict[Loc, int] = {}
    table: Loc = ()
    array_counts: dict[Loc, int] = {}
    pos = 0
    line = 1
    length = len(text)

    def line_at(position: int) -> int:
        return line + text.count("\n", pos, position)

    while pos < length:
        char = text[pos]
        if char == "\n":
            line += 1
            pos += 1
        elif char in " \t\r":
            pos += 1
        elif char == "#":
            end = text.find("\n", pos)
            pos = length if end < 0 else end
        elif char == "[":
            is_array = text.startswith("[[", pos)
            parts, end = _read_key(text, pos + (2 if is_array else 1))
            key: Loc = tuple(parts)
            if is_array:
                index = array_counts.get(key, -1) + 1
                array_counts[key] = index
                table = (*key, index)
            else:
                table = key
            lines.setdefault(table, line)
            if is_array:
                lines.setdefault(key, line)
            end = text.find("\n", end)
            pos = length if end < 0 else end
        else:
            parts, end = _read_key(text, pos)
            if not parts:  # not a key: let tomllib report it; skip the line
                end = text.find("\n", pos)
                pos = length if end < 0 else end
                continue
            path: Loc = (*table, *parts)
            lines.setdefault(path, line)
            while end < length and text[end] in " \t=":
                end += 1
            pos = end
            pos, line = _scan_value(text, pos, line, path, lines)
    return lines


def _scan_value(text: str, pos: int, line: int, path: Loc, lines: dict[Loc, int]) -> tuple[int, int]:
    """Skip one value, recording array elements' lines; return (position, line) after it."""
    length = len(text)
    if pos < length and text[pos] == "[":
        pos += 1
        index = 0
        expecting = True
        while pos < length:
            char = text[pos]
            if char == "\n":
                line += 1
                pos += 1
            elif char in " \t\r":
                pos += 1
            elif char == "#":
                end = text.find("\n", pos)
                pos = length if end < 0 else end
            elif char == "]":
                return pos + 1, line
            elif char == ",":
                index += 1
                expecting = True
                pos += 1
            else:
                if expecting:
                    lines.setdefault((*path, index), line)
                    expecting = False
                start = pos
                pos, line = _scan_value(text, pos, line, (*path, index), lines)
                if pos == start:
                    pos += 1
        return pos, line
    if pos < length and text[pos] in "\"'":
        end = _skip_string(text, pos)
        return end, line + text.count("\n", pos, end)
    if pos < length and text[pos] == "{":
        depth = 0
        while pos < length:
            if text[pos] in "\"'":
                pos = _skip_string(text, pos)
                continue
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    return pos + 1, line
            elif text[pos] == "\n":
                line += 1
            pos += 1
        return pos, line
    while pos < length and text[pos] not in ",]\n#":
        pos += 1
    return pos, line


def line_for(lines: dict[Loc, int], loc: Loc) -> int:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return 1


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


# ------------------------------------------------------------------------------------ pydantic errors

_TYPE_HINTS = {
    "string_type": 'write it in quotes, e.g. "22/tcp"',
    "list_type": 'write a list in brackets, e.g. ["22/tcp"]',
    "int_type": "write a whole number without quotes",
    "bool_type": "write true or false without quotes",
    "dict_type": "write a table",
    "model_type": "write a table",
}


def _message(error: dict[str, Any], data: Any) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    if kind == "extra_forbidden":
        known = _known_keys(data, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        return f"unknown key — remove it or fix its spelling ({hint})"
    if kind == "missing":
        return "required key is missing — add it"
    if kind == "value_error":
        text = str(error["ctx"]["error"]) if "ctx" in error else str(error["msg"])
        return text if " — " in text else f"{text} — fix the value"
    if kind in _TYPE_HINTS:
        got = type(error.get("input")).__name__
        return f"{error['msg'].lower()} (got {got}) — {_TYPE_HINTS[kind]}"
    if kind == "literal_error":
        return f"got {error.get('input')!r} — use {error['msg'].removeprefix('Input should be ')}"
    if kind in ("too_short", "too_long"):
        return f"{error['msg'].lower()} — list at least one entry or remove the key"
    return f"{error['msg']} — fix the value"


def _known_keys(data: Any, loc: Loc) -> list[str]:
    from portward.policy import model

    section_models: dict[str, type[Any]] = {
        "defaults": model.Defaults,
        "inbound": model.InboundRule,
        "outbound": model.OutboundRule,
        "block": model.Block,
        "knock": model.KnockDoor,
        "spa": model.SpaDoor,
        "watch": model.Watch,
        "sysctl": model.Sysctl,
    }
    target = model.Policy if len(loc) <= 1 else section_models.get(str(loc[0]), model.Policy)
    return sorted((info.alias or name) for name, info in target.model_fields.items())


# --------------------------------------------------------------------------------------------- load


def load_policy(path: str | os.PathLike[str], *, read_files: bool = True) -> LoadedPolicy:
    """Read, validate and resolve a policy; raise PolicyError listing every problem found."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([Problem(source, 0, "", "file not found — give the policy path with -p FILE")]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(
            [Problem(source, 0, "", f"cannot read it ({error}) — check the path and permissions")]
        ) from None
    return load_policy_text(text, source, read_files=read_files)


def load_policy_text(text: str, source: str = "<policy>", *, read_files: bool = True) -> LoadedPolicy:
    from pydantic import ValidationError

    from portward.policy.model import Policy

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line = int(match.group(1)) if match else 0
        detail = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        column = f" at column {match.group(2)}" if match else ""
        raise PolicyError(
            [Problem(source, line, "syntax", f"{detail}{column} — fix the TOML syntax on this line")]
        ) from None
    lines = locate_keys(text)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            where = tuple(item["loc"])
            problems.append(Problem(source, line_for(lines, where), format_loc(where), _message(dict(item), data)))
        raise PolicyError(_dedupe(problems)) from None
    problems = [Problem(source, line_for(lines, loc), format_loc(loc), message) for loc, message in policy.problems()]
    loaded = LoadedPolicy(policy, source, text)
    base = Path(source).parent
    spans: list[tuple[int, int, int]] = []
    _any, from_nets = policy.resolve(list(policy.block.from_))
    spans.extend((net.family, net.first, net.last) for net in from_nets)
    if read_files:
        for index, name in enumerate(policy.block.files):
            file_path = base / name
            loc: Loc = ("block", "files", index)
            try:
                spans.extend(read_address_file(file_path, problems))
            except FileNotFoundError:
                problems.append(
                    Problem(
                        source,
                        line_for(lines, loc),
                        format_loc(loc),
                        f"{file_path} does not exist — create it (one address or CIDR a line) or remove it",
                    )
                )
            except OSError as error:
                problems.append(
                    Problem(source, line_for(lines, loc), format_loc(loc), f"cannot read {file_path}: {error}")
                )
        for index, door in enumerate(policy.spa):
            for key in ("key_file", "hmac_key_file"):
                name = getattr(door, key)
                if name is not None and not (base / name).is_file():
                    loc = ("spa", index, key)
                    problems.append(
                        Problem(
                            source,
                            line_for(lines, loc),
                            format_loc(loc),
                            f"{base / name} does not exist — create it or fix the path",
                        )
                    )
    if problems:
        raise PolicyError(problems)
    loaded.block = {family: merge_spans([(a, b) for f, a, b in spans if f == family]) for family in (4, 6)}
    loaded.warnings = policy_warnings(policy)
    return loaded


def read_address_file(path: Path, problems: list[Problem]) -> list[tuple[int, int, int]]:
    """One address or CIDR a line, '#' comments; bad lines become problems at their own line."""
    nets: list[tuple[int, int, int]] = []
    append = nets.append
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            entry = raw.split("#", 1)[0].strip() if "#" in raw else raw.strip()
            if not entry:
                continue
            try:
                append(parse_span(entry))
            except ValueError as error:
                problems.append(Problem(str(path), number, "address", f"{error} — fix or remove the line"))
    return nets


def policy_warnings(policy: Policy) -> list[str]:
    warnings = []
    for door in policy.knock:
        ports = [spec.split("/")[0].split("-")[0] for spec in door.sequence]
        numbers = [int(port) for port in ports]
        if len(numbers) < 3:
            warnings.append(f"knock {door.name!r}: a sequence shorter than 3 knocks is easy to hit by chance")
        elif numbers == sorted(numbers):
            warnings.append(f"knock {door.name!r}: an ascending sequence opens on a sequential port sweep — shuffle it")
    return warnings


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen = set()
    out = []
    for problem in problems:
        key = (problem.line, problem.key, problem.message)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out
