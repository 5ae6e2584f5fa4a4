#!/usr/bin/env python3
"""Benchmark: a 100,000-CIDR block list, portward vs raw `nft -f` vs linear iptables rules.

Everything runs in network namespaces this script creates (tests/netlab.py) and removes. The CIDRs are
/24s drawn from 240.0.0.0/4 (reserved: no traffic ever goes there). In one run it prints:

- apply time: `portward apply` (whole CLI process, fresh table) vs `nft -f` of the same set and rule;
- re-apply time after changing one element of the list (whole CLI process);
- TCP connections/s from a client namespace: no rules, portward with the list, and the same list as
  100k linear iptables rules (iptables-legacy when present: the classic linear evaluator);
- the ratios.

Usage: bench/blocklist.py [--cidrs N] [--seconds S] [--json] [--smoke]   (root)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.netlab import Lab  # noqa: E402

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.1", 9000)); s.listen(4096); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""

# The client resets instead of closing (SO_LINGER 0): no TIME_WAIT, so the rate measures the
# firewall, not the exhaustion of ephemeral ports after a few seconds.
CLIENT = """
import socket, struct, sys, time
seconds = float(sys.argv[1]); count = 0; failed = 0
linger = struct.pack("ii", 1, 0)
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    s = socket.socket(); s.settimeout(1.0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    try:
        s.connect(("198.18.0.1", 9000)); count += 1
    except OSError:
        failed += 1
    finally:
        s.close()
print(count / seconds, failed)
"""


def cidrs(count: int, seed: int = 4) -> list[str]:
    rng = random.Random(seed)
    picked = rng.sample(range(1 << 20), count)  # /24s inside 240.0.0.0/4
    return [f"{240 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}.0/24" for n in picked]


def timed(argv: list[str], **kw: object) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - started


def conn_rate(lab: Lab, seconds: float) -> tuple[float, int]:
    out = lab.run("lan", [sys.executable, "-c", CLIENT, str(seconds)], timeout=seconds + 60, check=True).stdout.split()
    return float(out[0]), int(out[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cidrs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny, fast run (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.cidrs, args.seconds, args.repeat = 2000, 0.5, 1
    work = Path(tempfile.mkdtemp(prefix="pw-bench-"))
    nets = cidrs(args.cidrs)
    (work / "blocklist.txt").write_text("\n".join(nets) + "\n")
    (work / "policy.toml").write_text(
        '[defaults]\ninbound = "drop"\n[[inbound]]\nname = "bench"\nports = ["9000/tcp"]\nfrom = ["any"]\n'
        '[block]\nfiles = ["blocklist.txt"]\n'
    )
    (work / "raw.nft").write_text(
        "table inet rawbench {\n\tset block_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { "
        + ", ".join(nets)
        + " }\n\t}\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n"
        "\t\tip saddr @block_v4 drop\n\t}\n}\n"
    )
    legacy = shutil.which("iptables-legacy-restore")
    restore = legacy or "iptables-restore"
    (work / "linear.rules").write_text(
        "*filter\n:INPUT ACCEPT [0:0]\n" + "".join(f"-A INPUT -s {net} -j DROP\n" for net in nets) + "COMMIT\n"
    )
    portward = [
        sys.executable,
        "-m",
        "portward",
        "--state-dir",
        str(work / "state"),
        "apply",
        "-p",
        str(work / "policy.toml"),
        "--yes",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    results: dict[str, float | int | str] = {"cidrs": args.cidrs}
    with Lab() as lab:
        ns = ["ip", "netns", "exec", lab.netns("srv")]
        lab.popen("srv", [sys.executable, "-u", "-c", SERVER], stdout=subprocess.PIPE)
        time.sleep(0.3)
        rate_none, _ = conn_rate(lab, args.seconds)
        # the same policy without the list: what stateful filtering (conntrack) costs by itself
        (work / "nolist.toml").write_text(
            (work / "policy.toml").read_text().replace('files = ["blocklist.txt"]', "files = []")
        )
        nolist = [*portward[:-3], "-p", str(work / "nolist.toml"), "--yes"]
        subprocess.run([*ns, *nolist], check=True, env=env, stdout=subprocess.DEVNULL)
        rate_rules, _ = conn_rate(lab, args.seconds)
        subprocess.run([*ns, "nft", "delete", "table", "inet", "portward"], check=True)
        shutil.rmtree(work / "state")
        rate_none = (rate_none + conn_rate(lab, args.seconds)[0]) / 2  # measured on both sides of it

        raw_times, pw_times = [], []
        for _ in range(args.repeat):
            raw_times.append(timed([*ns, "nft", "-f", str(work / "raw.nft")]))
            subprocess.run([*ns, "nft", "delete", "table", "inet", "rawbench"], check=True)
            pw_times.append(timed([*ns, *portward], env=env))
            subprocess.run([*ns, "nft", "delete", "table", "inet", "portward"], check=True)
            shutil.rmtree(work / "state")
        pw_times.append(timed([*ns, *portward], env=env))  # leave it applied
        rate_portward, failed_portward = conn_rate(lab, args.seconds)

        with (work / "blocklist.txt").open("a") as handle:
            handle.write("241.255.255.0/24\n" if "241.255.255.0/24" not in nets else "239.255.255.0/24\n")
        reapply = [timed([*ns, *portward], env=env)]
        with (work / "blocklist.txt").open("a") as handle:
            handle.write("239.255.254.0/24\n")
        reapply.append(timed([*ns, *portward], env=env))
        subprocess.run([*ns, "nft", "delete", "table", "inet", "portward"], check=True)

        load_linear = timed([*ns, restore, str(work / "linear.rules")])
        rate_linear, failed_linear = conn_rate(lab, max(args.seconds, 3.0))
        subprocess.run([*ns, restore.replace("-restore", ""), "-F", "INPUT"], check=True)

    shutil.rmtree(work, ignore_errors=True)
    raw, apply_time = statistics.median(raw_times), statistics.median(pw_times)
    results.update(
        {
            "nft_f_seconds": round(raw, 3),
            "portward_apply_seconds": round(apply_time, 3),
            "apply_ratio_vs_nft_f": round(apply_time / raw, 2),
            "reapply_one_element_seconds": round(statistics.median(reapply), 3),
            "conn_per_s_no_rules": round(rate_none),
            "conn_per_s_portward": round(rate_portward),
            "conn_per_s_portward_without_list": round(rate_rules),
            "conn_ratio_list_vs_same_rules_without": round(rate_portward / rate_rules, 3),
            "conn_per_s_linear_iptables": round(rate_linear),
            "linear_tool": Path(restore).name,
            "linear_load_seconds": round(load_linear, 2),
            "conn_ratio_portward_vs_none": round(rate_portward / rate_none, 3),
            "conn_ratio_linear_vs_none": round(rate_linear / rate_none, 4),
            "failed_connects": failed_portward + failed_linear,
        }
    )
    if args.json:
        print(json.dumps(results))
    else:
        print(f"block list: {args.cidrs} /24s in 240.0.0.0/4")
        print(f"  apply      portward {apply_time:7.3f} s   nft -f {raw:7.3f} s   ratio {apply_time / raw:5.2f}x")
        print(f"  re-apply   one element changed: {statistics.median(reapply):.3f} s (whole CLI process)")
        print(
            f"  conn/s     no rules {rate_none:8.0f}   portward {rate_portward:8.0f} "
            f"({rate_portward / rate_none:6.1%})   {Path(restore).name} linear {rate_linear:8.1f} "
            f"({rate_linear / rate_none:6.2%}, loaded in {load_linear:.1f} s)"
        )
        print(
            f"  conn/s     same portward policy without the list {rate_rules:8.0f}: "
            f"with the list / without = {rate_portward / rate_rules:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
