"""The rollback timer: `python -m portward.ops.timer --state-dir D --generation G --deadline T`.

Started detached by `apply --confirm N`. At the deadline it rolls back generation G if, and only if,
G is still the pending one: a timer left by an older apply never touches a newer generation.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portward-timer")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--generation", type=int, required=True)
    parser.add_argument("--deadline", type=float, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # outlive the terminal that started us
    while (left := args.deadline - time.time()) > 0:
        time.sleep(min(left, 1.0))
    from portward.errors import PortwardError
    from portward.ops.engine import rollback

    try:
        result = rollback(Path(args.state_dir), only_generation=args.generation, reason="timer")
    except PortwardError as error:
        print(f"{time.strftime('%FT%TZ', time.gmtime())} timer for generation {args.generation}: {error}", flush=True)
        return 1
    for line in result.lines:
        print(f"{time.strftime('%FT%TZ', time.gmtime())} {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
