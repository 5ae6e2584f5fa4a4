"""The one result object every command returns: `--json` prints `data`, people get `lines`.

Kept apart from the engine so light commands (audit, scan, knock) don't import the policy model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]


@dataclass
class Result:
    data: Json
    lines: list[Any] = field(default_factory=list)  # strings, or rich renderables (tables)
    exit_code: int = 0
