"""Ansible callback for the fleet tests and bench: one JSON line per host and task, with its timing.

ansible-core ships no JSON callback (that one lives in ansible.posix); this records just what the tests assert
on: host, task name, status, the module result, and when the host's task started and ended (monotonic clock),
so bench/fleet.py can tell the per-host cost of one task from another in the same run.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase  # type: ignore[import-untyped]

DOCUMENTATION = """
    name: fleet_record
    type: aggregate
    short_description: write each host's task results as JSON lines to $FLEET_RECORD
    description: For portward's fleet tests; not part of the collection.
"""


class CallbackModule(CallbackBase):  # type: ignore[misc]  # untyped base
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.path = os.environ.get("FLEET_RECORD", "")
        self.started: dict[tuple[str, str], float] = {}

    def _key(self, host: Any, task: Any) -> tuple[str, str]:
        return (host.get_name(), task._uuid)

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        self.started[self._key(host, task)] = time.monotonic()

    def _write(self, result: Any, status: str) -> None:
        if not self.path:
            return
        end = time.monotonic()
        host, task = result._host, result._task
        start = self.started.get(self._key(host, task), end)
        body = getattr(result, "_result", {})
        event = {"host": host.get_name(), "task": task.get_name(), "status": status, "start": start, "end": end,
                 "result": body}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, default=str) + "\n")

    def v2_runner_on_ok(self, result: Any) -> None:
        self._write(result, "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._write(result, "failed")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._write(result, "unreachable")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._write(result, "skipped")
