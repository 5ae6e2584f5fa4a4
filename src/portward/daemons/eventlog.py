"""One log for the daemons (knockd, spad, watch): human lines or JSON lines, a file or stdout, syslog."""

from __future__ import annotations

import json
import sys
import syslog
import time
from datetime import datetime
from typing import Any, TextIO

from portward.errors import PortwardError


class EventLog:
    """knockd-style lines (`[2024-05-01 12:00] 198.18.0.2: ssh: Stage 1`) or one JSON object per line, to
    ``log_file`` (else stdout), and to syslog under ``ident`` when ``use_syslog`` is set.

    `portward knockd` logs as ident "knockd" so existing syslog filters (and fail2ban's knockd filter) match."""

    def __init__(
        self,
        *,
        json_lines: bool,
        log_file: str | None = None,
        use_syslog: bool = False,
        ident: str = "portward",
        stream: TextIO | None = None,
    ) -> None:
        self.json_lines = json_lines
        self.stdout = stream or sys.stdout
        self._file: TextIO | None = None
        if log_file:
            try:
                self._file = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            except OSError as error:
                raise PortwardError(f"cannot open log file {log_file}: {error.strerror} — fix the path") from None
        self.use_syslog = use_syslog
        if self.use_syslog:
            syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_USER)

    def write(self, event: str, message: str, **fields: Any) -> None:
        if self.json_lines:
            now = datetime.now().astimezone().isoformat(timespec="milliseconds")
            record = {"time": now, "event": event, "message": message}
            record.update({key: value for key, value in fields.items() if value not in (None, "")})
            line = json.dumps(record)
        else:
            line = f"[{time.strftime('%Y-%m-%d %H:%M')}] {message}"
        out = self._file or self.stdout
        try:
            out.write(line + "\n")
            out.flush()
            if event == "ready" and out is not self.stdout:  # whoever started us waits for it on stdout
                self.stdout.write(line + "\n")
                self.stdout.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must not stop the doors
        if self.use_syslog:
            syslog.syslog(syslog.LOG_NOTICE, message)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.use_syslog:
            syslog.closelog()
