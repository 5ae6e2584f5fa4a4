# -*- coding: utf-8 -*-
# Copyright: portward contributors
# MIT License (see LICENSE in the portward repository)
"""Unit tests of the policy module's logic against a stand-in portward executable.

The stand-in records each command line and answers like portward's CLI contract (JSON on stdout, exit codes);
the real executable is exercised by the namespace integration test (tests/fleet/test_fleet.py in portward).
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible.module_utils.testing import patch_module_args
from ansible_collections.portward.fleet.plugins.modules import policy

FAKE = r'''#!{python}
import json, os, sys
scenario = json.loads(os.environ["FAKE_PORTWARD"])
args = sys.argv[1:]
with open(scenario["log"], "a") as log:
    log.write(json.dumps(args) + "\n")
command = [a for a in args if not a.startswith("--json")][0]
answer = scenario.get(command, {{}})
if "policy_copy" in scenario and "-p" in args:
    with open(args[args.index("-p") + 1]) as policy, open(scenario["policy_copy"], "w") as copy:
        copy.write(policy.read())
sys.stdout.write(json.dumps(answer.get("json", {{}})))
sys.stderr.write(answer.get("stderr", ""))
sys.exit(answer.get("rc", 0))
'''

CHANGES = [{"action": "add", "object": "rule", "chain": "input", "rule": "tcp dport 22 accept"}]
POLICY = '[[inbound]]\nname = "ssh"\nports = ["22/tcp"]\nfrom = ["any"]\n'


@pytest.fixture
def portward(tmp_path, monkeypatch):
    """Install the stand-in; returns (executable path, set_scenario(dict), calls())."""
    path = tmp_path / "portward"
    import sys

    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.jsonl"

    def scenario(answers):
        monkeypatch.setenv("FAKE_PORTWARD", json.dumps(dict(answers, log=str(log), policy_copy=str(tmp_path / "planned"))))

    def calls():
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    scenario({})
    return str(path), scenario, calls


def run_module(args, check_mode=False, diff=False):
    """Run policy.main() with these args; returns the JSON it exits with."""
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            policy.main()


def result_of(capsys):
    return json.loads(capsys.readouterr().out)


def test_check_mode_plans_and_changes_nothing(tmp_path, portward, capsys):
    executable, scenario, calls = portward
    dest = tmp_path / "etc" / "policy.toml"
    scenario({"plan": {"json": {"changes": CHANGES}}})
    run_module({"content": POLICY, "dest": str(dest), "executable": executable}, check_mode=True, diff=True)
    result = result_of(capsys)
    assert result["changed"] is True
    assert result["changes"] == CHANGES
    assert result["diff"]["before"] == "" and result["diff"]["after"] == POLICY
    assert [call[1] for call in calls()] == ["plan"]
    assert (tmp_path / "planned").read_text() == POLICY  # what was planned is the new text
    assert not dest.parent.exists()  # check mode created nothing


def test_check_mode_empty_plan_is_not_a_change(tmp_path, portward, capsys):
    executable, scenario, calls = portward
    dest = tmp_path / "policy.toml"
    dest.write_text(POLICY)
    scenario({"plan": {"json": {"changes": []}}})
    run_module({"content": POLICY, "dest": str(dest), "executable": executable}, check_mode=True, diff=True)
    result = result_of(capsys)
    assert result["changed"] is False
    assert "diff" not in result
    assert sorted(os.listdir(tmp_path)) == sorted(["policy.toml", "portward", "calls.jsonl", "planned"])


def test_apply_writes_dest_and_applies_with_confirm(tmp_path, portward, capsys):
    executable, scenario, calls = portward
    dest = tmp_path / "policy.toml"
    dest.write_text("# old\n")
    pending = {"generation": 7, "deadline": "2026-11-23T07:30:00Z", "confirm_within": 12}
    scenario({"plan": {"json": {"changes": CHANGES}},
              "apply": {"json": {"generation": 7, "changes": CHANGES, "pending": pending}}})
    run_module({"content": POLICY, "dest": str(dest), "executable": executable, "confirm_timeout": 12})
    result = result_of(capsys)
    assert result["changed"] is True and result["generation"] == 7 and result["confirmed"] is False
    assert result["pending"] == pending
    assert dest.read_text() == POLICY
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert len(calls()) == 1  # a changed file goes straight to apply (its JSON lists the plan's changes)
    apply_call = calls()[-1]
    assert apply_call[:2] == ["--json", "apply"]
    assert apply_call[apply_call.index("-p") + 1] == str(dest)
    assert apply_call[apply_call.index("--confirm") + 1] == "12"


def test_in_sync_run_applies_nothing(tmp_path, portward, capsys):
    executable, scenario, calls = portward
    dest = tmp_path / "policy.toml"
    dest.write_text(POLICY)
    scenario({"plan": {"json": {"changes": []}}})
    run_module({"content": POLICY, "dest": str(dest), "executable": executable})
    result = result_of(capsys)
    assert result["changed"] is False and result["generation"] is None and result["dest_updated"] is False
    assert [call[1] for call in calls()] == ["plan"]


def test_refused_apply_puts_the_old_file_back(tmp_path, portward, capsys):
    executable, scenario, calls = portward
    dest = tmp_path / "policy.toml"
    dest.write_text("# old\n")
    scenario({"plan": {"json": {"changes": CHANGES}},
              "apply": {"rc": 1, "stderr": "the kernel refused the ruleset", "json": {"error": "x", "exit_code": 1}}})
    run_module({"content": POLICY, "dest": str(dest), "executable": executable})
    result = result_of(capsys)
    assert result["failed"] is True
    assert "the kernel refused the ruleset" in result["msg"]
    assert dest.read_text() == "# old\n"


def test_invalid_policy_fails_with_portwards_message(tmp_path, portward, capsys):
    executable, scenario, calls = portward
    scenario({"apply": {"rc": 2, "stderr": "policy.toml:3: ports: bad port — use N/proto"}})
    run_module({"content": "nonsense", "dest": str(tmp_path / "p.toml"), "executable": executable})
    result = result_of(capsys)
    assert result["failed"] is True and "policy.toml:3: ports: bad port" in result["msg"]
    assert not (tmp_path / "p.toml").exists()  # there was none before: none after a refused apply


def test_file_only_change_applies_nothing_and_confirms_at_once(tmp_path, portward, capsys):
    executable, scenario, calls = portward
    dest = tmp_path / "policy.toml"
    dest.write_text("# a comment\n" + POLICY)
    scenario({"apply": {"json": {"generation": 3, "changes": []}}, "confirm": {"json": {"confirmed": 3}}})
    run_module({"content": POLICY, "dest": str(dest), "executable": executable})
    result = result_of(capsys)
    assert result["changed"] is False and result["dest_updated"] is True and result["confirmed"] is True
    assert dest.read_text() == POLICY
    assert [call[1] for call in calls()] == ["apply", "confirm"]
    assert calls()[-1] == ["--json", "confirm", "--generation", "3"]


def test_confirm_keeps_exactly_that_generation(tmp_path, portward, capsys):
    executable, scenario, calls = portward
    scenario({"confirm": {"json": {"confirmed": 7}}})
    run_module({"confirm_generation": 7, "executable": executable})
    result = result_of(capsys)
    assert result["confirmed"] is True and result["generation"] == 7
    assert calls() == [["--json", "confirm", "--generation", "7"]]


def test_confirm_too_late_says_it_rolled_back(tmp_path, portward, capsys):
    executable, scenario, calls = portward
    scenario({"confirm": {"rc": 2, "stderr": "generation 7 is not pending"}})
    run_module({"confirm_generation": 7, "executable": executable})
    result = result_of(capsys)
    assert result["failed"] is True and result["rolling_back"] is True
    assert "rolled back" in result["msg"]


def test_short_confirm_timeout_is_refused(tmp_path, portward, capsys):
    executable, scenario, calls = portward
    run_module({"content": POLICY, "dest": str(tmp_path / "p.toml"), "executable": executable, "confirm_timeout": 2})
    result = result_of(capsys)
    assert result["failed"] is True and "at least 5" in result["msg"]
    assert calls() == []
