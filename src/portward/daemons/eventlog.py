"""One log for the daemons (knockd, spad, watch): human lines or JSON lines, a file or stdout, syslog."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import syslog
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TextIO

from portward.errors import EXIT_OK, EXIT_RUNTIME, PortwardError


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


def run_daemon(name: str, start: Callable[[], Coroutine[Any, Any, None]], *, json_errors: bool = False) -> int:
    """Run a daemon's coroutine to the end; its errors become a message and an exit code, never a traceback.

    ``start`` builds the coroutine (reading the policy or config inside it, so their errors are caught too).
    With ``json_errors`` a PortwardError is also printed on stdout as one JSON object (for `--json` readers)."""
    try:
        asyncio.run(start())
    except PortwardError as error:
        if json_errors:
            print(json.dumps(error.as_json()), flush=True)
        for line in error.lines():
            print(line, file=sys.stderr)
        return error.exit_code
    except OSError as error:  # NFLOG group taken by another process, log or pid file not writable ...
        print(f"portward: {name}: {error}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


def catch_stop_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set ``stop`` (when this is the main thread; otherwise the caller owns signals and
    sets it). Returns the function that puts the handlers back."""
    caught: list[signal.Signals] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(number, stop.set)
            caught.append(number)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread

    def release() -> None:
        for number in caught:
            loop.remove_signal_handler(number)

    return release
