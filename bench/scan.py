#!/usr/bin/env python3
"""Benchmark: `portward scan` vs `nmap -sT -T4` over the full TCP range of a default-drop host.

Everything runs in network namespaces this script creates (tests/netlab.py) and removes. The target
(srv) drops all inbound traffic except a few listening ports and a few it rejects with a TCP reset
(established/related accepted); the scanners run in the lan namespace against 198.18.0.1 (or
2001:db8:0:1::1 with --ipv6). In one run it prints the wall time of:

- `portward scan HOST -p - --json`: the whole CLI process (falls back to the library through
  `python -c`, labelled as such, when the CLI has no `scan` command);
- the library alone (`python -c "...scan(...)"`, interpreter start included);
- `nmap -sT -T4 -Pn -n -p- -oX -`;

and the ratio nmap / portward.  The open and closed sets of all of them must be identical (and
equal to what the ruleset and listeners make them): otherwise it exits 1.

Usage: bench/scan.py [--smoke] [--ports SPEC] [--repeat N] [--ipv6] [--json]   (root; nmap)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from portward.verify.scan import format_ports, parse_ports  # noqa: E402
from tests.netlab import SRV_LAN4, SRV_LAN6, Lab  # noqa: E402

OPEN = [22, 443, 1999, 40000]  # admitted, something listens
RESET = [80, 1234, 50000]  # rejected with tcp reset
RULESET = f"""
table inet bench {{
    chain input {{
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iif lo accept
        meta l4proto ipv6-icmp accept
        tcp dport {{ {", ".join(map(str, OPEN))} }} accept
        tcp dport {{ {", ".join(map(str, RESET))} }} reject with tcp reset
    }}
}}
"""

LIBRARY = """
import json, sys
from portward.verify.scan import parse_ports, scan
result = scan(sys.argv[1], parse_ports(sys.argv[2]))
print(json.dumps(result.as_json()))
"""

Sets = tuple[frozenset[int], frozenset[int]]  # (open, closed)


@dataclass
class Row:
    tool: str
    seconds: float  # median wall time
    runs: list[float]
    sets: Sets
    counts: dict[str, int]
    probes: int | None
    stable: bool  # the same sets on every run

    def as_json(self) -> dict[str, object]:
        return {
            "tool": self.tool,
            "seconds": round(self.seconds, 3),
            "runs": [round(t, 3) for t in self.runs],
            "open": sorted(self.sets[0]),
            "closed": sorted(self.sets[1]),
            "counts": self.counts,
            "probes": self.probes,
            "same_every_run": self.stable,
        }


def timed(lab: Lab, argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    cp = lab.run("lan", argv, env=env, timeout=1800)
    seconds = time.perf_counter() - started
    if cp.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} ... failed ({cp.returncode}): {cp.stderr.strip()[-2000:]}")
    return seconds, cp.stdout


def portward_sets(stdout: str) -> tuple[Sets, dict[str, int], int]:
    doc = json.loads(stdout)
    listed = [(p["port"], p["state"]) for p in doc["ports"] if p["proto"] == "tcp"]
    sets = (
        frozenset(p for p, state in listed if state == "open"),
        frozenset(p for p, state in listed if state == "closed"),
    )
    return sets, doc["counts"], int(doc.get("probes_sent", 0))


def nmap_sets(stdout: str) -> tuple[Sets, dict[str, int]]:
    root = ET.fromstring(stdout)
    states: dict[str, set[int]] = {}
    for port in root.iter("port"):
        state = port.find("state")
        if state is not None:
            states.setdefault(state.attrib["state"], set()).add(int(port.attrib["portid"]))
    counts = {state: len(ports) for state, ports in states.items()}
    for extra in root.iter("extraports"):  # the collapsed majority ("filtered", 65,000 of them)
        counts[extra.attrib["state"]] = counts.get(extra.attrib["state"], 0) + int(extra.attrib["count"])
    return (frozenset(states.get("open", ())), frozenset(states.get("closed", ()))), counts


def has_scan_command(lab: Lab, env: dict[str, str]) -> bool:
    cp = lab.run("lan", [sys.executable, "-m", "portward", "scan", "--help"], env=env)
    return cp.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", default="-", help="nmap syntax [-: all 65,535]")
    parser.add_argument("--repeat", type=int, default=3, help="portward runs (median); nmap runs once")
    parser.add_argument("--ipv6", action="store_true", help="scan 2001:db8:0:1::1 instead of 198.18.0.1")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="ports 1-2000, one run each (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.ports, args.repeat = "1-2000", 1
    if shutil.which("nmap") is None:
        print("bench/scan.py: nmap is not installed", file=sys.stderr)
        return 2
    ports = parse_ports(args.ports)
    spec = "-" if len(ports) == 65535 else format_ports(ports)
    target = SRV_LAN6 if args.ipv6 else SRV_LAN4
    wanted = set(ports)
    expected: Sets = (frozenset(wanted & set(OPEN)), frozenset(wanted & set(RESET)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    nmap = ["nmap", "-sT", "-T4", "-Pn", "-n", *(["-6"] if args.ipv6 else []), "-p", spec, "-oX", "-", target]

    rows: list[Row] = []
    with Lab() as lab:
        lab.listen("srv", [f"{port}/tcp" for port in OPEN])
        lab.nft("srv", "-f", "-", stdin=RULESET)
        cli_ok = has_scan_command(lab, env)
        cli = [sys.executable, "-m", "portward", "scan", target, "-p", spec, "--json"]
        library = [sys.executable, "-c", LIBRARY, target, spec]
        runs = [(f"portward scan -p {spec} --json (CLI process)", cli)] if cli_ok else []
        runs.append(("portward library (python -c)" + ("" if cli_ok else ": no `scan` CLI yet"), library))
        for label, argv in runs:
            times, found = [], []
            for _ in range(max(1, args.repeat)):
                seconds, out = timed(lab, argv, env)
                times.append(seconds)
                found.append(portward_sets(out))
            sets, counts, probes = found[-1]
            stable = all(f[0] == sets for f in found)
            rows.append(Row(label, statistics.median(times), times, sets, counts, probes, stable))
        seconds, out = timed(lab, nmap, env)
        sets, counts = nmap_sets(out)
        rows.append(Row(" ".join(nmap[:-1]), seconds, [seconds], sets, counts, None, True))

    identical = all(row.sets == expected and row.stable for row in rows)
    ratio = rows[-1].seconds / rows[0].seconds
    if args.json:
        print(
            json.dumps(
                {
                    "target": target,
                    "ports": len(ports),
                    "expected_open": sorted(expected[0]),
                    "expected_closed": sorted(expected[1]),
                    "rows": [row.as_json() for row in rows],
                    "ratio_nmap_over_portward": round(ratio, 1),
                    "identical_open_closed_sets": identical,
                }
            )
        )
    else:
        print(
            f"scan of {target}, {len(ports)} TCP ports, default drop: {len(expected[0])} open, {len(expected[1])} reset"
        )
        print(f"  {'tool':<58} {'wall s':>8} {'open':>5} {'closed':>6} {'filtered':>9} {'probes':>8}")
        for row in rows:
            sent = "" if row.probes is None else str(row.probes)
            print(
                f"  {row.tool:<58} {row.seconds:8.2f} {len(row.sets[0]):>5} {len(row.sets[1]):>6} "
                f"{row.counts.get('filtered', 0):>9} {sent:>8}"
            )
        print(f"  ratio nmap / {rows[0].tool.split(' (')[0]}: {ratio:.1f}x")
        print(f"  identical open/closed sets (and as configured): {'yes' if identical else 'NO'}")
        if not identical:
            for row in rows:
                opened, closed = sorted(row.sets[0]), sorted(row.sets[1])
                print(f"    {row.tool}: open {opened} closed {closed}, the same every run: {row.stable}")
            print(f"    expected: open {sorted(expected[0])} closed {sorted(expected[1])}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
