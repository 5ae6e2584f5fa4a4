"""The Ansible collection portward.fleet, end to end: a controller and three hosts in namespaces, over real ssh.

Each host runs its own sshd in its own netns and private mount namespace (tests/fleet/fleetlab.py), so every
host has its own /etc/portward and /var/lib/portward; ansible-playbook runs in the controller's netns and the
modules run with the hosts' system Python, calling the checkout's portward. Also runs `ansible-test sanity` and
`ansible-test units` on the collection (their venvs are cached under ~/.cache/portward-ansible-test).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.fleetlab import CONTROLLER, FLEET_POLICY, ROOT, FleetLab, Run, available

COLLECTION = ROOT / "ansible_collections" / "portward" / "fleet"
ANSIBLE_TEST_HOME = Path.home() / ".cache" / "portward-ansible-test"
GET_PIP_SHIM = Path(__file__).resolve().parent / "get_pip_shim.py"
CONFIRM_TIMEOUT = 10

POLICY_B = FLEET_POLICY + """
[[inbound]]
name = "web"
ports = ["8080/tcp"]
from = ["any"]
"""

# Blocks the controller everywhere, port 22 included: a new ssh session from it can never be set up.
LOCKOUT = FLEET_POLICY + f"""
[block]
from = ["{CONTROLLER}"]
"""

APPLY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: policy
      portward.fleet.policy:
        content: "{{ policy_by_host[inventory_hostname] | default(policy) }}"
        confirm_timeout: CONFIRM_TIMEOUT
        executable: "{{ portward_executable }}"
    - name: after
      ansible.builtin.command: "true"
      changed_when: false
""".replace("CONFIRM_TIMEOUT", str(CONFIRM_TIMEOUT))


def _skip_reason() -> str | None:
    ok, why = available()
    return None if ok else why


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=f"fleet lab unavailable: {_skip_reason()}")


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetLab]:
    with FleetLab(3) as lab:
        yield lab


def apply(fleet: FleetLab, policy: str, *options: str, by_host: dict[str, str] | None = None) -> Run:
    return fleet.playbook(APPLY, *options, extra_vars={"policy": policy, "policy_by_host": by_host or {}})


def policy_results(run: Run) -> dict[str, dict[str, Any]]:
    return {host: event["result"] for host, event in run.results("policy").items()}


def test_apply_to_all_hosts_confirms_over_a_fresh_connection(fleet: FleetLab) -> None:
    run = apply(fleet, FLEET_POLICY)
    assert run.returncode == 0, run.explain()
    results = policy_results(run)
    assert sorted(results) == fleet.hosts
    for host, result in results.items():
        assert result["changed"] is True and result["confirmed"] is True, (host, result)
        status = fleet.status(host)
        assert status["confirmed"]["generation"] == result["generation"]
        assert status["pending"] is None
        assert status["applied"]["policy"] == "/etc/portward/policy.toml"
        assert "9100" in fleet.ruleset(host)
        assert fleet.in_host(host, ["cat", "/etc/portward/policy.toml"]).stdout == FLEET_POLICY


def test_rerun_is_idempotent(fleet: FleetLab) -> None:
    generations = {host: fleet.status(host)["confirmed"]["generation"] for host in fleet.hosts}
    for options in ((), ("--check",)):
        run = apply(fleet, FLEET_POLICY, *options)
        assert run.returncode == 0, run.explain()
        assert all(counts["changed"] == 0 for counts in run.recap().values()), run.explain()
        assert all(result["changes"] == [] for result in policy_results(run).values())
    assert {host: fleet.status(host)["confirmed"]["generation"] for host in fleet.hosts} == generations


def test_check_diff_shows_the_policy_and_changes_nothing(fleet: FleetLab) -> None:
    before = {host: fleet.ruleset(host) for host in fleet.hosts}
    run = apply(fleet, POLICY_B, "--check", "--diff")
    assert run.returncode == 0, run.explain()
    for host, result in policy_results(run).items():
        assert result["changed"] is True, (host, result)
        assert any("8080" in str(change.get("rule", "")) for change in result["changes"])
        assert result["generation"] is None
    assert '+name = "web"' in run.stdout  # the --diff of the policy file
    assert {host: fleet.ruleset(host) for host in fleet.hosts} == before
    assert fleet.in_host("h1", ["cat", "/etc/portward/policy.toml"]).stdout == FLEET_POLICY


def test_lockout_fails_that_host_only_and_it_rolls_back_in_time(fleet: FleetLab) -> None:
    """h2 gets a policy that blocks the controller; h1 and h3 get POLICY_B and go on."""
    previous = fleet.ruleset("h2")
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch_h2() -> None:  # when the lockout ruleset appears in h2's kernel, and when the old one is back
        while not stop.is_set():
            ruleset = fleet.ruleset("h2")
            now = time.monotonic()
            if CONTROLLER in ruleset and "locked" not in seen:
                seen["locked"] = now
            if "locked" in seen and ruleset == previous:
                seen["restored"] = now
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_h2, daemon=True)
    watcher.start()
    try:
        run = apply(fleet, POLICY_B, by_host={"h2": LOCKOUT})
        watcher.join(CONFIRM_TIMEOUT + 10)
    finally:
        stop.set()
    assert run.returncode != 0, run.explain()
    results = run.results("policy")
    assert results["h2"]["status"] == "failed", run.explain()
    message = str(results["h2"]["result"]["msg"])
    assert "rolling back" in message and "198.18.50.2" in message, message
    assert results["h2"]["result"]["rolling_back"] is True
    for host in ("h1", "h3"):
        assert results[host]["status"] == "ok" and results[host]["result"]["confirmed"] is True, run.explain()
    after = run.results("after")
    assert sorted(after) == ["h1", "h3"]  # the others went on; h2 left the play
    assert "locked" in seen and "restored" in seen, (seen, fleet.ruleset("h2"))
    print(f"lockout ruleset seen in h2's kernel, previous one back {seen['restored'] - seen['locked']:.2f} s later")
    assert seen["restored"] - seen["locked"] <= CONFIRM_TIMEOUT + 2, seen
    status = fleet.status("h2")
    assert status["pending"] is None and status["applied"]["generation"] == status["confirmed"]["generation"]


def test_audit_facts_and_verify_from_the_controller(fleet: FleetLab) -> None:
    policy_file = fleet.tmp / "controller-policy-a.toml"
    policy_file.write_text(FLEET_POLICY)
    lockout_file = fleet.tmp / "controller-lockout.toml"
    lockout_file.write_text(LOCKOUT)
    play = """
- hosts: h2
  gather_facts: false
  tasks:
    - name: audit
      portward.fleet.audit:
        executable: "{{ portward_executable }}"
    - name: sshd in the facts
      ansible.builtin.assert:
        that:
          - portward_audit.sockets | selectattr('port', 'equalto', 22) | list | length > 0
          - "'sysctl' in portward_audit"
    - name: verify
      portward.fleet.verify:
        target: "{{ ansible_host }}"
        policy: "{{ verify_policy }}"
        executable: "{{ portward_controller }}"
      delegate_to: localhost
    - name: verify against a policy the host does not run
      portward.fleet.verify:
        target: "{{ ansible_host }}"
        policy: "{{ wrong_policy }}"
        executable: "{{ portward_controller }}"
      delegate_to: localhost
      ignore_errors: true
"""
    run = fleet.playbook(play, extra_vars={"verify_policy": str(policy_file), "wrong_policy": str(lockout_file),
                                           "portward_controller": fleet.portward})
    assert run.returncode == 0, run.explain()
    audit = run.results("audit")["h2"]["result"]
    sockets = audit["ansible_facts"]["portward_audit"]["sockets"]
    assert any(socket["port"] == 22 and socket["exposure"] in ("world", "restricted") for socket in sockets), sockets
    verified = run.results("verify")["h2"]["result"]
    assert verified["differences"] == [] and verified["verify"]["source"] == CONTROLLER, verified
    wrong = run.results("verify against a policy the host does not run")["h2"]
    assert wrong["status"] == "failed"
    assert "22/tcp" in str(wrong["result"]["msg"]), wrong["result"]


# ------------------------------------------------------------------------------------ ansible-test


def pip_versions() -> set[str]:
    """The pip versions ansible-test bootstraps its venvs with (it names the get-pip script after them)."""
    import ansible_test  # type: ignore[import-untyped]

    source = (Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
    return set(re.findall(r"pip='(\d+(?:\.\d+)+)'", source)) or {"24.2"}


def ansible_test(*args: str, timeout: float = 540) -> subprocess.CompletedProcess[str]:
    """ansible-test from the collection's folder; its venvs' pip comes from the local shim (no get-pip download)."""
    cache = ANSIBLE_TEST_HOME / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for version in pip_versions():
        shutil.copyfile(GET_PIP_SHIM, cache / f"get_pip_{version.replace('.', '_')}.py")
    env = {**os.environ, "HOME": str(ANSIBLE_TEST_HOME), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        return subprocess.run([str(Path(sys.executable).parent / "ansible-test"), *args, "--python", "3.11"],
                              cwd=COLLECTION, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        shutil.rmtree(COLLECTION / "tests" / "output", ignore_errors=True)


@pytest.mark.timeout(600)
def test_ansible_test_sanity() -> None:
    cp = ansible_test("sanity", "--local")
    assert cp.returncode == 0, cp.stdout[-6000:] + cp.stderr[-4000:]
    assert 'Running sanity test "validate-modules"' in cp.stdout


@pytest.mark.timeout(600)
def test_ansible_test_units() -> None:
    cp = ansible_test("units", "--venv")
    assert cp.returncode == 0, cp.stdout[-6000:] + cp.stderr[-4000:]
    assert " passed" in cp.stdout and " failed" not in cp.stdout
