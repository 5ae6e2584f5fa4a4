#!/usr/bin/env python3
"""Benchmark: list 8,000 listening sockets with their processes — portward audit vs ss, lsof and psutil.

Everything runs in the srv namespace of a tests/netlab.py lab, which this script creates and always
removes. One helper process there holds the sockets (TCP listening and bound UDP, IPv4 and IPv6,
wildcard/specific/loopback addresses, v6only and dual-stack). In that namespace, in the same run,
each tool is timed as a whole process (best of N wall times, runs interleaved):

- `portward audit --json` (`python -m portward audit --json`);
- "sockets reader (library)": a `python -c` call of portward.kernel.sockets.list_listeners();
- `ss -tulnp`, `lsof -i -P -n`, and psutil.net_connections(kind="inet") filtered to listeners in a
  fresh interpreter (so its import counts, as portward's does);
- in process: list_listeners() from sock_diag and from /proc/net, with and without processes.

It checks every tool found the same number of listeners, prints the table and the ratios, and exits
non-zero when `portward audit` or the library fails or miscounts.

Usage: bench/audit.py [--sockets N] [--repeat N] [--json] [--smoke]   (root)
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.netlab import SRV_LAN4, SRV_LAN6, Lab  # noqa: E402

# Holds argv[1] TCP listeners and argv[2] bound UDP sockets until stdin closes. Every socket has its
# own port (so no bind conflicts); the addresses cycle through wildcard, specific and loopback ones,
# with IPv6 both v6only and dual-stack.
HOLDER = """
import resource, socket, sys
n_tcp, n_udp, v4, v6 = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
binds = [("0.0.0.0", 1), (v4, 1), ("127.0.0.1", 1), ("::", 1), ("::", 0), (v6, 1), ("::1", 1)]
held = []
for kind, count, first in ((socket.SOCK_STREAM, n_tcp, 10000), (socket.SOCK_DGRAM, n_udp, 30000)):
    for i in range(count):
        host, v6only = binds[i % len(binds)]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, kind)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        s.bind((host, first + i))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        held.append(s)
print("ready", flush=True)
sys.stdin.read()
"""

# Runs inside the namespace: times each command as a whole process, rounds interleaved so that a
# slow moment of the VM hits every tool alike. Prints {name: {"times": [...], "rc": int, "out": str}}.
DRIVER = """
import json, subprocess, sys, time
spec = json.loads(sys.argv[1])
result = {name: {"times": [], "rc": 0, "out": "", "err": ""} for name in spec["commands"]}
for _ in range(spec["repeat"]):
    for name, argv in spec["commands"].items():
        started = time.perf_counter()
        cp = subprocess.run(argv, capture_output=True, text=True, env=spec["env"])
        result[name]["times"].append(time.perf_counter() - started)
        result[name].update(rc=cp.returncode, out=cp.stdout, err=cp.stderr[-2000:])
print(json.dumps(result))
"""

# psutil as a user would call it; prints the number of listening sockets it found.
PSUTIL = """
import socket, psutil
found = {(c.type, c.laddr) for c in psutil.net_connections(kind="inet")
         if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)}
print(len(found))
"""

LIBRARY = "from portward.kernel.sockets import list_listeners; print(len(list_listeners()))"

# In process, after imports: each way of reading, best of N.
INPROC = """
import json, sys, time
from portward.kernel.sockets import list_listeners
repeat = int(sys.argv[1])
out = {}
for source in ("sock_diag", "proc"):
    for resolve in (True, False):
        best, count = float("inf"), 0
        for _ in range(repeat):
            started = time.perf_counter()
            count = len(list_listeners(source=source, resolve_processes=resolve))
            best = min(best, time.perf_counter() - started)
        out[f"{source}{'' if resolve else '_no_processes'}"] = [best, count]
print(json.dumps(out))
"""


def count_ss(text: str) -> int:
    return sum(1 for line in text.splitlines()[1:] if line.strip())  # first line is the header


def count_lsof(text: str) -> int:
    # one line per (process, fd); one holder process here, so that is one per socket
    found = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 9:
            continue
        node, name = fields[7], " ".join(fields[8:])
        if (node == "TCP" and name.endswith("(LISTEN)")) or (node == "UDP" and "->" not in name):
            found.add((node, name))
    return len(found)


def count_audit(text: str) -> int | None:
    """Listeners in `portward audit --json` output: the longest list of objects that have a "port"."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    best: int | None = None
    stack: list[Any] = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            if item and all(isinstance(x, dict) and "port" in x for x in item):
                best = max(best or 0, len(item))
            else:
                stack.extend(item)
    return best


def start_holder(lab: Lab, n_tcp: int, n_udp: int) -> None:
    proc = lab.popen(
        "srv",
        [sys.executable, "-I", "-S", "-c", HOLDER, str(n_tcp), str(n_udp), SRV_LAN4, SRV_LAN6],
        stdin=subprocess.PIPE,  # EOF (our death) ends it
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if readable else b""
    if line.strip() != b"ready":
        raise SystemExit(f"socket holder did not start (rc={proc.poll()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=8000, help="listening sockets (3/4 TCP, 1/4 UDP)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per tool; the best counts")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny, fast run (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.sockets, args.repeat = 200, 1
    n_tcp = args.sockets * 3 // 4
    n_udp = args.sockets - n_tcp
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    commands = {
        "portward audit --json": [sys.executable, "-m", "portward", "audit", "--json"],
        "sockets reader (library)": [sys.executable, "-c", LIBRARY],
        "ss -tulnp": ["ss", "-tulnp"],
        "lsof -i -P -n": ["lsof", "-i", "-P", "-n"],
        "psutil (fresh interpreter)": [sys.executable, "-c", PSUTIL],
    }
    with Lab() as lab:
        start_holder(lab, n_tcp, n_udp)
        spec = {"repeat": args.repeat, "commands": commands, "env": env}
        timeout = 120 + 60 * args.repeat
        cp = lab.run("srv", [sys.executable, "-c", DRIVER, json.dumps(spec)], env=env, timeout=timeout)
        if cp.returncode != 0:
            raise SystemExit(f"driver failed: {cp.stderr.strip()}")
        runs: dict[str, dict[str, Any]] = json.loads(cp.stdout)
        cp = lab.run("srv", [sys.executable, "-c", INPROC, str(max(args.repeat, 3))], env=env, timeout=timeout)
        if cp.returncode != 0:
            raise SystemExit(f"in-process timing failed: {cp.stderr.strip()}")
        inproc: dict[str, list[float]] = json.loads(cp.stdout)

    counters: dict[str, Callable[[str], int | None]] = {
        "portward audit --json": count_audit,
        "sockets reader (library)": lambda out: int(out.strip() or -1),
        "ss -tulnp": count_ss,
        "lsof -i -P -n": count_lsof,
        "psutil (fresh interpreter)": lambda out: int(out.strip() or -1),
    }
    best: dict[str, float] = {}
    counts: dict[str, int | None] = {}
    failures: list[str] = []
    for name, run in runs.items():
        best[name] = min(run["times"])
        if run["rc"] != 0:
            counts[name] = None
            last = (run["err"].strip().splitlines() or [""])[-1]
            failures.append(f"{name} failed (rc={run['rc']}): {last}")
            continue
        try:
            counts[name] = counters[name](run["out"])
        except ValueError:
            counts[name] = None
    for key, (_, found) in inproc.items():
        if found != args.sockets:
            failures.append(f"list_listeners({key}) found {found:.0f} listeners, expected {args.sockets}")
    for name in ("portward audit --json", "sockets reader (library)"):
        if runs[name]["rc"] == 0 and counts[name] is not None and counts[name] != args.sockets:
            failures.append(f"{name} found {counts[name]} listeners, expected {args.sockets}")
    off = [n for n, c in counts.items() if c is not None and abs(c - args.sockets) > max(2, args.sockets // 100)]
    audit_ok = runs["portward audit --json"]["rc"] == 0
    ours = "portward audit --json" if audit_ok else "sockets reader (library)"
    ss, pw = best["ss -tulnp"], best[ours]
    ratios = {
        "portward_over_ss": round(pw / ss, 2),
        "lsof_over_portward": round(best["lsof -i -P -n"] / pw, 2),
        "psutil_over_portward": round(best["psutil (fresh interpreter)"] / pw, 2),
    }
    if args.json:
        print(
            json.dumps(
                {
                    "sockets": args.sockets,
                    "repeat": args.repeat,
                    "seconds": {n: round(t, 4) for n, t in best.items()},
                    "listeners": counts,
                    "in_process_seconds": {k: round(v[0], 4) for k, v in inproc.items()},
                    "ratios_from": ours,
                    **ratios,
                    "miscounted": off,
                    "failures": failures,
                }
            )
        )
    else:
        print(f"audit: {args.sockets} listening sockets ({n_tcp} tcp + {n_udp} udp, v4/v6) held by one process;")
        print(f"       whole processes in the namespace, best of {args.repeat}")
        print(f"  {'tool':<28} {'seconds':>8} {'listeners':>10}")
        for name, seconds in best.items():
            count = counts[name]
            shown = "FAILED" if runs[name]["rc"] != 0 else ("?" if count is None else str(count))
            print(f"  {name:<28} {seconds:8.3f} {shown:>10}")
        ip = {k: v[0] * 1000 for k, v in inproc.items()}
        print(
            f"  in process, list_listeners(): sock_diag {ip['sock_diag']:.1f} ms "
            f"({ip['sock_diag_no_processes']:.1f} ms without processes), /proc/net {ip['proc']:.1f} ms "
            f"({ip['proc_no_processes']:.1f} ms)"
        )
        print(
            f"  ratios ({ours}): portward/ss {ratios['portward_over_ss']:.2f}x   "
            f"lsof/portward {ratios['lsof_over_portward']:.2f}x   "
            f"psutil/portward {ratios['psutil_over_portward']:.2f}x"
        )
        if off:
            print(f"  sanity: listener counts differ from {args.sockets} for {', '.join(off)}")
        else:
            print(f"  sanity: every tool that ran found {args.sockets} listeners (±1%)")
    for failure in failures:
        print(f"audit bench: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
