#!/usr/bin/env python3
"""Benchmark: one portward policy rolled out with Ansible to N namespace hosts, against a bare command task.

A tests/fleet/fleetlab.py fleet (controller + N hosts, each with its own sshd in its own netns and mount
namespace) runs one playbook with forks=N (ssh pipelining on, ControlPersist as Ansible sets it):

    warm-up   ansible.builtin.command: "true"   (opens the ssh masters; its cost is not counted)
    bare      ansible.builtin.command: "true"
    policy    portward.fleet.policy             (plan + apply --confirm, reset the connection, confirm)
    bare-2    ansible.builtin.command: "true"
    policy-2  portward.fleet.policy             (the same policy again: plan only, changed=0)

Per-host cost of a task = from the strategy queueing it for the host to its result (tests/fleet's callback);
the table gives the median and max over hosts, the task's wall time (first start to last result), and the
ratio policy / bare of the medians (goal: <= 3x). Every host must end with the policy confirmed.

Usage: bench/fleet.py [--hosts N] [--forks F] [--json] [--smoke]   (root; ansible-core and openssh-server)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.fleet.fleetlab import FLEET_POLICY, FleetLab, Run, available  # noqa: E402

PLAYBOOK = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: warm-up
      ansible.builtin.command: "true"
      changed_when: false
    - name: bare
      ansible.builtin.command: "true"
      changed_when: false
    - name: policy
      portward.fleet.policy:
        content: "{{ policy }}"
        confirm_timeout: 60
        executable: "{{ portward_executable }}"
    - name: bare-2
      ansible.builtin.command: "true"
      changed_when: false
    - name: policy-2
      portward.fleet.policy:
        content: "{{ policy }}"
        confirm_timeout: 60
        executable: "{{ portward_executable }}"
"""

TASKS = ("bare", "policy", "bare-2", "policy-2")


def task_figures(run: Run, task: str, hosts: list[str]) -> dict[str, Any]:
    events = run.results(task)
    missing = sorted(set(hosts) - set(events))
    failed = sorted(host for host, event in events.items() if event["status"] != "ok")
    if missing or failed:
        raise SystemExit(f"task {task}: no result from {missing}, failed on {failed}\n{run.explain()}")
    per_host = [event["end"] - event["start"] for event in events.values()]
    return {
        "median_s": statistics.median(per_host),
        "max_s": max(per_host),
        "wall_s": max(e["end"] for e in events.values()) - min(e["start"] for e in events.values()),
        "changed": sum(1 for event in events.values() if event["result"].get("changed")),
    }


def bench(hosts: int, forks: int) -> dict[str, Any]:
    setup_started = time.monotonic()
    with FleetLab(hosts) as fleet:
        setup_s = time.monotonic() - setup_started
        run = fleet.playbook(PLAYBOOK, forks=forks, extra_vars={"policy": FLEET_POLICY}, timeout=900)
        if run.returncode != 0:
            raise SystemExit(f"the playbook failed\n{run.explain()}")
        figures = {task: task_figures(run, task, fleet.hosts) for task in TASKS}
        confirmed = sum(1 for host in fleet.hosts if fleet.status(host)["pending"] is None
                        and fleet.status(host)["confirmed"] is not None)
    if figures["policy"]["changed"] != hosts or figures["policy-2"]["changed"] != 0 or confirmed != hosts:
        raise SystemExit(f"unexpected outcome: {figures}, {confirmed} of {hosts} hosts confirmed")
    return {
        "hosts": hosts,
        "forks": forks,
        "setup_s": setup_s,
        "playbook_s": run.seconds,
        "tasks": figures,
        "confirmed_hosts": confirmed,
        "ratio_policy_vs_bare": figures["policy"]["median_s"] / figures["bare"]["median_s"],
        "ratio_policy_wall_vs_bare_wall": figures["policy"]["wall_s"] / figures["bare"]["wall_s"],
        "ratio_idempotent_vs_bare": figures["policy-2"]["median_s"] / figures["bare-2"]["median_s"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20, help="namespace hosts (default 20)")
    parser.add_argument("--forks", type=int, help="Ansible forks (default: as many as hosts)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="3 hosts, forks 3: a fast run for CI")
    args = parser.parse_args()
    ok, why = available()
    if not ok:
        print(f"bench/fleet.py: {why}", file=sys.stderr)
        return 2
    hosts = 3 if args.smoke else args.hosts
    results = bench(hosts, args.forks or hosts)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{results['hosts']} hosts, forks={results['forks']}: fleet up in {results['setup_s']:.1f} s, "
          f"playbook {results['playbook_s']:.1f} s, {results['confirmed_hosts']} hosts confirmed")
    print(f"  {'task':<34} {'median/host':>12} {'max/host':>10} {'wall':>8} {'changed':>8}")
    labels = {"bare": 'command: "true"', "policy": "portward.fleet.policy (applies)",
              "bare-2": 'command: "true" (again)', "policy-2": "portward.fleet.policy (in sync)"}
    for task in TASKS:
        row = results["tasks"][task]
        print(f"  {labels[task]:<34} {row['median_s']:11.2f}s {row['max_s']:9.2f}s {row['wall_s']:7.2f}s "
              f"{row['changed']:8d}")
    print(f"  ratio policy / bare per host (median) {results['ratio_policy_vs_bare']:5.2f}x   (goal <= 3x)")
    print(f"  ratio policy / bare task wall time    {results['ratio_policy_wall_vs_bare_wall']:5.2f}x")
    print(f"  ratio in-sync policy / bare           {results['ratio_idempotent_vs_bare']:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
