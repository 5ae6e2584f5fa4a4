#!/usr/bin/env python3
"""Benchmark: knock -> open latency and CPU under a SYN flood, kernel doors vs `portward knockd` vs knockd 0.8.

Everything runs in the namespaces of a tests/netlab.py lab, which this script creates and always removes.
The door is the same everywhere: TCP SYNs to 7000, 9000, 8000 open 22/tcp for the knocker.

- kernel doors: `portward apply` of a policy with a `[[knock]]` door (no process at all);
- portward knockd: `python -m portward.daemons.knockd -c knockd.conf`, start_command
  `nft add element inet t allowed { %IP% }` on a test table whose input chain admits @allowed to 22/tcp;
- knockd: the real knockd (foreground, `-i eth-lan`) with the same knockd.conf.

Latency: a client in lan sends the three SYNs (10 ms apart, like `knock -d 10`), then retries a connect to
22/tcp every ~1 ms; a trial is the time from its last knock packet to the first connect that succeeds. Median
over the trials (the door is closed again between trials by flushing the set).

CPU: utime+stime of each daemon process (/proc/PID/stat) while a raw socket in wan sends TCP SYNs to random
ports of srv as fast as it can (knockd then listens on eth-wan, the flooded interface). The kernel doors have
no process; their cost is in the flooder's softirq time, as the capture's is.

Usage: bench/knock.py [--trials N] [--seconds S] [--json] [--smoke]   (root; needs knockd installed)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.netlab import SRV_LAN4, SRV_WAN4, WAN4, Lab  # noqa: E402

SEQUENCE = (7000, 9000, 8000)
# The random-port flood comes from another (spoofed) wan address than the knocker's: its hits on knock ports
# would otherwise be the knocker's own wrong knocks (knockd then ignores the real knock that follows).
FLOOD_SOURCE = "198.19.0.77"  # not ascending: portward warns about sweepable doors

POLICY = """
[[knock]]
name = "bench"
sequence = ["7000/tcp", "9000/tcp", "8000/tcp"]
seq_timeout = 5
open = ["22/tcp"]
open_for = 600
"""

TABLE = """
table inet t {
    set allowed { type ipv4_addr; }
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iif lo accept
        tcp dport 22 ip saddr @allowed accept
    }
}
"""

KNOCKD_CONF = """
[options]
    LogFile = {log}

[bench]
    sequence      = 7000,9000,8000
    seq_timeout   = 5
    tcpflags      = syn
    start_command = nft add element inet t allowed {{ %IP% }}
"""

# One trial, in lan: check the door is shut, knock, then connect every ~1 ms. Prints the latency in seconds.
CLIENT = """
import errno, select, socket, struct, sys, time
host, ports, delay = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], float(sys.argv[3])
LINGER = struct.pack("ii", 1, 0)

def attempt(wait):
    s = socket.socket(); s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER)
    try:
        s.connect_ex((host, 22))
        _, writable, _ = select.select([], [s], [], wait)
        return bool(writable) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    finally:
        s.close()

if attempt(0.05):
    print("open-before"); sys.exit(0)
for index, port in enumerate(ports):
    if index:
        time.sleep(delay)
    s = socket.socket(); s.setblocking(False)
    s.connect_ex((host, port)); s.close()  # the SYN is out when connect returns
    last = time.perf_counter()
while time.perf_counter() - last < 5:
    if attempt(0.001):
        print(time.perf_counter() - last); sys.exit(0)
print("timeout")
"""

# Raw TCP SYNs to argv[1] for argv[2] seconds, then prints the number sent. argv[3] "ports": to random ports
# from argv[4]; "door": to the first knock port argv[5] from random sources of 198.19.0.0/16, at most argv[6]/s.
FLOOD = """
import random, socket, struct, sys, time
dst, seconds, mode, src = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
door, rate = (int(sys.argv[5]), float(sys.argv[6])) if mode == "door" else (0, 0.0)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
daddr = socket.inet_aton(dst)
rand = random.getrandbits
FLAGS, WINDOW = (5 << 12) | 0x02, 65535  # data offset + SYN

def syn(saddr, sport, dport, seq):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, saddr, daddr)  # the kernel fills id, checksum
    total = sum(struct.unpack("!6H", saddr + daddr + b"\\x00\\x06\\x00\\x14"))
    total += FLAGS + WINDOW + sport + dport + (seq >> 16) + (seq & 0xFFFF)
    total = (total & 0xFFFF) + (total >> 16); total = (total & 0xFFFF) + (total >> 16)
    return ip + struct.pack("!HHIIHHHH", sport, dport, seq, 0, FLAGS, WINDOW, ~total & 0xFFFF, 0)

sent = 0
start = time.perf_counter()
end = start + seconds
fixed_source = socket.inet_aton(src)
while time.perf_counter() < end:
    for _ in range(64):
        if mode == "door":
            packet = syn(bytes([198, 19, 1 + rand(8) % 255, 1 + rand(8) % 254]), 1024 + rand(15), door, rand(32))
        else:
            packet = syn(fixed_source, 1024 + rand(15), 1 + rand(16) % 65535, rand(32))
        try:
            s.sendto(packet, (dst, 0))
            sent += 1
        except OSError:
            pass
    if rate:
        ahead = sent / rate - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
print(sent)
"""


def wait_for(path: Path, text: str, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            shown = path.read_text()[-2000:] if path.exists() else "(no log)"
            raise SystemExit(f"daemon did not start (rc={proc.poll()}): {shown}")
        time.sleep(0.02)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime + stime, time on CPU from schedstat) of the process and all its threads, in seconds.

    utime+stime come in clock ticks (10 ms here); schedstat counts nanoseconds, for the small figures."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    nanoseconds = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that just ended
            nanoseconds += int((task / "schedstat").read_text().split()[0])
    return ticks, nanoseconds / 1e9


def trial(lab: Lab, reset: list[str], ns: str = "lan", host: str = SRV_LAN4) -> float | None:
    """One knock from ``ns``: seconds from its last knock to the first connect, None when it never opened.
    ``reset`` (an nft command in srv) shuts the door first."""
    lab.nft("srv", *reset)
    time.sleep(0.15)  # daemons forget the previous (completed) attempt; no knock in flight
    ports = ",".join(map(str, SEQUENCE))
    out = lab.run(ns, [sys.executable, "-I", "-S", "-c", CLIENT, host, ports, "0.01"], timeout=60)
    text = out.stdout.strip()
    if out.returncode != 0 or text == "open-before":
        raise SystemExit(f"knock trial failed: {text or out.stderr.strip()}")
    return None if text == "timeout" else float(text)


def trials(lab: Lab, count: int, reset: list[str]) -> list[float]:
    found = []
    for _ in range(count):
        latency = trial(lab, reset)
        if latency is None:
            raise SystemExit("a knock did not open the door within 5 s")
        found.append(latency)
    return found


def door_flood(lab: Lab, seconds: float, rate: float, reset: list[str], pid: int | None) -> dict[str, Any]:
    """SYNs to the first knock port from random sources at ``rate``/s; halfway, a real knock from wan.
    Returns the knock's latency (None: never opened), the daemon's CPU and the packets sent."""
    before = cpu_seconds(pid) if pid else (0.0, 0.0)
    argv = [sys.executable, "-I", "-S", "-c", FLOOD, SRV_WAN4, str(seconds), "door", WAN4, str(SEQUENCE[0]), str(rate)]
    flood = lab.popen("wan", argv, stdout=subprocess.PIPE, text=True)
    time.sleep(max(0.0, seconds / 2 - 0.2))
    latency = trial(lab, reset, "wan", SRV_WAN4)
    output, _ = flood.communicate(timeout=seconds + 60)
    after = cpu_seconds(pid) if pid else (0.0, 0.0)
    return {
        "knock_ms": None if latency is None else round(latency * 1000, 2),
        "cpu_seconds": round(after[0] - before[0], 3),
        "cpu_seconds_schedstat": round(after[1] - before[1], 4),
        "packets_per_s": round(int(output.strip() or 0) / seconds),
    }


def flood_cpu(lab: Lab, pid: int, seconds: float, *door: str) -> tuple[float, float, int]:
    """(CPU seconds by utime+stime, by schedstat, packets sent) of ``pid`` during one flood from wan."""
    ticks, exact = cpu_seconds(pid)
    mode = ["door", WAN4, *door] if door else ["ports", FLOOD_SOURCE]
    argv = [sys.executable, "-I", "-S", "-c", FLOOD, SRV_WAN4, str(seconds), *mode]
    out = lab.run("wan", argv, timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"flood failed: {out.stderr.strip()}")
    ticks_after, exact_after = cpu_seconds(pid)
    return ticks_after - ticks, exact_after - exact, int(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15, help="knock trials per door kind (median)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each SYN flood")
    parser.add_argument("--door-rate", type=float, default=5000.0, help="SYNs/s of the flood at the first knock port")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny, fast run (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.seconds = 3, 1.0
    knockd = shutil.which("knockd")
    if knockd is None:
        raise SystemExit("knockd is not installed (apt-get install knockd)")
    work = Path(tempfile.mkdtemp(prefix="pw-bench-knock-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    latency: dict[str, list[float]] = {}
    flood: dict[str, dict[str, Any]] = {}
    under_door_flood: dict[str, dict[str, Any]] = {}
    try:
        with Lab() as lab:
            lab.listen("srv", ["22/tcp"])

            # (a) kernel doors
            (work / "policy.toml").write_text(POLICY)
            apply = [sys.executable, "-m", "portward", "--state-dir", str(work / "state"), "apply", "-p",
                     str(work / "policy.toml"), "--yes"]  # fmt: skip
            done = lab.run("srv", apply, env=env, timeout=120)
            if done.returncode != 0:
                raise SystemExit(f"portward apply failed: {done.stderr.strip()}")
            reset = ["flush", "set", "inet", "portward", "knock_bench_open_v4"]
            latency["kernel"] = trials(lab, args.trials, reset)
            under_door_flood["kernel"] = door_flood(lab, args.seconds, args.door_rate, reset, None)
            lab.flush_ruleset("srv")

            # (b) portward knockd, (c) knockd: the same knockd.conf and test table
            reset = ["flush", "set", "inet", "t", "allowed"]
            for name in ("portward_knockd", "knockd"):
                lab.nft("srv", "-f", "-", stdin=TABLE)
                (work / f"{name}.conf").write_text(KNOCKD_CONF.format(log=work / f"{name}.log"))
                out = work / f"{name}.out"
                for phase, interface in (("latency", "eth-lan"), ("flood", "eth-wan")):
                    log = work / f"{name}.log"
                    log.unlink(missing_ok=True)
                    if name == "knockd":  # one interface at a time: the knocks', then the flooded one
                        # no -v: verbose mode prints every packet, which our daemon does not do either
                        argv = [knockd, "-c", str(work / f"{name}.conf"), "-i", interface]
                        ready = "starting up, listening on"
                    else:
                        argv = [sys.executable, "-m", "portward.daemons.knockd", "-c", str(work / f"{name}.conf")]
                        ready = "ready"
                    with out.open("w") as handle:
                        proc = lab.popen("srv", argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
                    wait_for(log, ready, proc)
                    time.sleep(0.2)
                    if phase == "latency":
                        latency[name] = trials(lab, args.trials, reset)
                    else:
                        ticks, exact, sent = flood_cpu(lab, proc.pid, args.seconds)
                        flood[name] = {
                            "cpu_seconds": round(ticks, 3),
                            "cpu_seconds_schedstat": round(exact, 4),
                            "packets_per_s": round(sent / args.seconds),
                        }
                        under_door_flood[name] = door_flood(lab, args.seconds, args.door_rate, reset, proc.pid)
                    lab.stop(proc)
                lab.flush_ruleset("srv")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in latency.items()}
    ratio = median["knockd"] / median["portward_knockd"]
    ours, theirs = flood["portward_knockd"]["cpu_seconds_schedstat"], flood["knockd"]["cpu_seconds_schedstat"]
    cpu_ratio = theirs / ours if ours > 0 else None
    ours_door = under_door_flood["portward_knockd"]["cpu_seconds_schedstat"]
    door_ratio = under_door_flood["knockd"]["cpu_seconds_schedstat"] / ours_door if ours_door > 0 else None
    results = {
        "trials": args.trials,
        "latency_ms_median": {name: round(value * 1000, 3) for name, value in median.items()},
        "latency_ms_all": {name: [round(v * 1000, 3) for v in values] for name, values in latency.items()},
        "latency_ratio_knockd_over_portward_knockd": round(ratio, 2),
        "latency_ratio_knockd_over_kernel": round(median["knockd"] / median["kernel"], 1),
        "flood_seconds": args.seconds,
        "random_port_flood": flood,
        "cpu_ratio_knockd_over_portward_knockd": None if cpu_ratio is None else round(cpu_ratio, 2),
        "door_port_flood_rate": args.door_rate,
        "door_port_flood": under_door_flood,
        "door_flood_cpu_ratio_knockd_over_portward_knockd": None if door_ratio is None else round(door_ratio, 2),
    }
    if args.json:
        print(json.dumps(results))
        return 0
    labels = {"kernel": "kernel doors (portward apply)", "portward_knockd": "portward knockd", "knockd": "knockd 0.8"}
    print(f"knock -> open: from the last knock packet to the first connect, median of {args.trials} (ms)")
    print(f"  {'door':<32} {'median':>8} {'min':>8} {'max':>8}")
    for name in ("kernel", "portward_knockd", "knockd"):
        values = [v * 1000 for v in latency[name]]
        print(f"  {labels[name]:<32} {median[name] * 1000:8.2f} {min(values):8.2f} {max(values):8.2f}")
    kernel_ratio = median["knockd"] / median["kernel"]
    print(f"  ratio knockd / portward knockd {ratio:6.1f}x   knockd / kernel doors {kernel_ratio:6.1f}x")
    print(f"CPU during a {args.seconds:g} s random-port SYN flood from wan (utime+stime; schedstat)")
    for name in ("portward_knockd", "knockd"):
        row = flood[name]
        share = row["cpu_seconds_schedstat"] / args.seconds
        print(f"  {labels[name]:<32} {row['cpu_seconds']:6.2f} s; {row['cpu_seconds_schedstat']:7.4f} s "
              f"({share:5.2%} of a core)   flood {row['packets_per_s']:7d}/s")  # fmt: skip
    print("  kernel doors                     no process")
    shown = "n/a" if cpu_ratio is None else f"{cpu_ratio:.2f}x"
    print(f"  ratio knockd / portward knockd (schedstat) {shown}")
    print(f"{args.seconds:g} s flood at the first knock port from random sources ({args.door_rate:g}/s), "
          "one real knock from wan halfway")  # fmt: skip
    for name in ("kernel", "portward_knockd", "knockd"):
        row = under_door_flood[name]
        knock_text = "never opened" if row["knock_ms"] is None else f"opened in {row['knock_ms']:.1f} ms"
        cpu_text = "no process" if name == "kernel" else (
            f"CPU {row['cpu_seconds']:5.2f} s ({row['cpu_seconds_schedstat'] / args.seconds:5.1%} of a core)"
        )  # fmt: skip
        print(f"  {labels[name]:<32} {knock_text:<22} {cpu_text}   flood {row['packets_per_s']:6d}/s")
    shown = "n/a" if door_ratio is None else f"{door_ratio:.2f}x"
    print(f"  ratio knockd / portward knockd (schedstat) {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
