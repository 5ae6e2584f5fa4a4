"""`python -m portward.daemons.knockd` in the namespace lab, knocked by the real knockd client (/usr/bin/knock).

srv holds a test table `inet t`: input drops everything but 22/tcp from the sources in @allowed / @allowed6,
which the door's start_command adds and its stop_command deletes. The command runner and the log format are
tested at the end without a namespace.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from portward.daemons.eventlog import EventLog
from portward.daemons.knockd import CommandRunner, RunCommand
from tests.netlab import LAN4, SRV_LAN4, SRV_LAN6, SRV_WAN4, SRV_WAN6, WAN6, Lab
from tests.pwutil import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("knock") is None, reason="the knock client (apt package knockd) is missing"
)

TABLE = """
table inet t {
    set allowed { type ipv4_addr; }
    set allowed6 { type ipv6_addr; }
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iif lo accept
        meta l4proto ipv6-icmp accept
        tcp dport 22 ip saddr @allowed accept
        tcp dport 22 ip6 saddr @allowed6 accept
    }
}
"""

CONF = """
[options]
    LogFile = {log}

[ssh]
    sequence        = {sequence}
    seq_timeout     = 5
    tcpflags        = syn
    start_command   = nft add element inet t allowed {{ %IP% }}
    start_command_6 = nft add element inet t allowed6 {{ %IP% }}
    cmd_timeout     = {cmd_timeout}
    stop_command    = nft delete element inet t allowed {{ %IP% }}
    stop_command_6  = nft delete element inet t allowed6 {{ %IP% }}
"""


class Daemon:
    def __init__(
        self,
        lab: Lab,
        tmp_path: Path,
        *,
        cmd_timeout: int = 2,
        json_log: bool = False,
        sequence: str = "7000,8000,9000:udp",
    ) -> None:
        self.lab = lab
        self.log = tmp_path / "knockd.log"
        self.out = tmp_path / "stdout"
        conf = tmp_path / "knockd.conf"
        conf.write_text(CONF.format(log=self.log, cmd_timeout=cmd_timeout, sequence=sequence))
        argv = [sys.executable, "-m", "portward", "knockd", "-c", str(conf)] + (["--json-log"] if json_log else [])
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        with self.out.open("w") as out:
            self.proc = lab.popen("srv", argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while "ready" not in self.out.read_text():
            assert self.proc.poll() is None, self.out.read_text()
            assert time.monotonic() < deadline, "knockd did not get ready"
            time.sleep(0.02)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_for(self, text: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines()):
            assert time.monotonic() < deadline, f"no {text!r} in:\n" + "\n".join(self.lines())
            time.sleep(0.01)

    def stop(self) -> int:
        self.lab.stop(self.proc)  # SIGTERM, like systemd
        return self.proc.returncode


def knock(lab: Lab, ns: str, *args: str) -> None:
    if shutil.which("knock") is None:
        pytest.skip("the knock client (apt package knockd) is missing")
    done = lab.run(ns, ["knock", "-d", "10", *args])
    assert done.returncode == 0, done.stderr


def ssh(lab: Lab, ns: str, host: str) -> str:
    return lab.probe(ns, host, ["22/tcp"], timeout=0.3)["22/tcp"]


def elements(lab: Lab, name: str) -> list[Any]:
    listing = json.loads(lab.nft("srv", "-j", "list", "set", "inet", "t", name))
    found: list[Any] = next(item["set"] for item in listing["nftables"] if "set" in item).get("elem", [])
    return found


def zombies(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] == "Z" and int(fields[1]) == pid:
                found.append(int(entry))
    return found


@pytest.fixture
def door(lab: Lab) -> Lab:
    lab.nft("srv", "-f", "-", stdin=TABLE)
    lab.listen("srv", ["22/tcp"])
    return lab


def test_opens_for_the_knocker_only_then_closes(door: Lab, tmp_path: Path) -> None:
    lab = door
    daemon = Daemon(lab, tmp_path)
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"
    knock(lab, "lan", SRV_LAN4, "7000", "8000", "9000:udp")
    daemon.wait_for("command exited 0")
    assert ssh(lab, "lan", SRV_LAN4) == "open"
    assert ssh(lab, "wan", SRV_WAN4) == "filtered"  # another source
    assert ssh(lab, "lan", SRV_LAN6) == "filtered"  # the same host over IPv6 did not knock
    assert elements(lab, "allowed") == [LAN4]
    lines = daemon.lines()
    assert any(line.endswith(f"] {LAN4}: ssh: Stage 1") for line in lines)
    assert any(line.endswith(f"] {LAN4}: ssh: OPEN SESAME") for line in lines)
    daemon.wait_for("command timeout", timeout=4)
    daemon.wait_for("allowed '{' 198.18.0.2 '}'")  # the stop command: nft delete element ...
    time.sleep(0.2)
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"
    assert elements(lab, "allowed") == []
    assert zombies(daemon.proc.pid) == []
    assert daemon.stop() == 0
    assert "portward_knockd" not in lab.nft("srv", "list", "tables")


def test_ipv6_knock_runs_the_v6_command(door: Lab, tmp_path: Path) -> None:
    lab = door
    daemon = Daemon(lab, tmp_path, cmd_timeout=30)
    knock(lab, "wan", "-6", SRV_WAN6, "7000", "8000", "9000:udp")
    daemon.wait_for("command exited 0")
    assert ssh(lab, "wan", SRV_WAN6) == "open"
    assert ssh(lab, "wan", SRV_WAN4) == "filtered"
    assert elements(lab, "allowed6") == [WAN6] and elements(lab, "allowed") == []


def test_wrong_order_and_sweeps_open_nothing(door: Lab, tmp_path: Path) -> None:
    lab = door
    daemon = Daemon(lab, tmp_path)
    knock(lab, "lan", SRV_LAN4, "8000", "7000", "9000:udp")
    knock(lab, "lan", SRV_LAN4, "7000", "9000:udp", "8000")
    knock(lab, "lan", SRV_LAN4, "7000", "7777", "8000", "9000:udp")  # a port between: a wrong knock too
    time.sleep(0.2)
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"
    assert not any("OPEN SESAME" in line for line in daemon.lines())
    assert any("wrong knock 7777:tcp at stage 1" in line for line in daemon.lines())
    knock(lab, "lan", SRV_LAN4, "7000", "7000", "8000", "9000:udp")  # a retransmitted knock is fine
    daemon.wait_for("OPEN SESAME")


def test_ascending_sweep_opens_nothing(door: Lab, tmp_path: Path) -> None:
    """knockd opens on `nmap -r` across an ascending sequence; the `others` chain reports the ports between."""
    if shutil.which("nmap") is None:
        pytest.skip("nmap is missing")
    lab = door
    daemon = Daemon(lab, tmp_path, sequence="7000,8000,9000")
    sweep = lab.run("lan", ["nmap", "-n", "-Pn", "-sS", "-r", "--max-retries", "0", "-T5", "-p", "6990-9010", SRV_LAN4])
    assert sweep.returncode == 0, sweep.stderr
    time.sleep(0.2)
    assert not any("OPEN SESAME" in line for line in daemon.lines()), daemon.lines()
    assert any(": ssh: wrong knock 70" in line for line in daemon.lines())  # a port right after 7000 reset it
    assert ssh(lab, "lan", SRV_LAN4) == "filtered"
    knock(lab, "lan", SRV_LAN4, "7000", "8000", "9000")
    daemon.wait_for("OPEN SESAME")


def test_exit_closes_what_is_open_and_removes_the_capture(door: Lab, tmp_path: Path) -> None:
    lab = door
    daemon = Daemon(lab, tmp_path, cmd_timeout=300, json_log=True)
    knock(lab, "lan", SRV_LAN4, "7000", "8000", "9000:udp")
    daemon.wait_for('"command_exit"')
    assert elements(lab, "allowed") == [LAN4]
    assert "portward_knockd" in lab.nft("srv", "list", "tables")
    assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.lines()]
    events = [record["event"] for record in records]
    assert events[0] == "ready" and events[-1] == "shutdown"
    assert {"event": "open", "door": "ssh", "src": LAN4, "stage": 3}.items() <= records[events.index("open")].items()
    assert "close" in events  # the stop command ran at exit, not 300 s later
    assert elements(lab, "allowed") == []
    assert "portward_knockd" not in lab.nft("srv", "list", "tables")
    assert json.loads(daemon.out.read_text().splitlines()[0])["event"] == "ready"  # also on stdout


def test_second_daemon_refuses_and_leaves_the_first_alone(door: Lab, tmp_path: Path) -> None:
    lab = door
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Daemon(lab, tmp_path / "a")
    conf = tmp_path / "b" / "knockd.conf"
    conf.write_text(CONF.format(log=tmp_path / "b" / "log", cmd_timeout=1, sequence="1,2"))
    second = lab.run("srv", [sys.executable, "-m", "portward.daemons.knockd", "-c", str(conf)],
                     env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
    assert second.returncode == 1 and "another process holds this group" in second.stderr
    assert "Traceback" not in second.stderr
    knock(lab, "lan", SRV_LAN4, "7000", "8000", "9000:udp")
    first.wait_for("OPEN SESAME")


def test_bad_config_exits_2(lab: Lab, tmp_path: Path) -> None:
    conf = tmp_path / "knockd.conf"
    conf.write_text("[ssh]\nsequence = 7000,70000\n")
    done = lab.run("srv", [sys.executable, "-m", "portward.daemons.knockd", "-c", str(conf)],
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"{conf}:2: sequence: '70000': the port must be 1-65535 — write PORT or PORT:tcp or PORT:udp"
    )
    assert lab.nft("srv", "list", "tables").strip() == ""


def test_one_time_sequences_and_pid_file(door: Lab, tmp_path: Path) -> None:
    lab = door
    sequences = tmp_path / "sequences"
    sequences.write_text(" 7100,7200:udp,7300\n 7400,7500,7600\n")
    conf = tmp_path / "knockd.conf"
    conf.write_text(
        f"[options]\n  LogFile = {tmp_path / 'log'}\n  PidFile = {tmp_path / 'pid'}\n"
        "[otp]\n  one_time_sequences = sequences\n  tcpflags = syn\n"
        "  start_command = nft add element inet t allowed { %IP% }\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with (tmp_path / "out").open("w") as out:
        proc = lab.popen("srv", [sys.executable, "-m", "portward.daemons.knockd", "-c", str(conf)], stdout=out, env=env)
    deadline = time.monotonic() + 20
    while "ready" not in (tmp_path / "out").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "out").read_text()
        time.sleep(0.02)
    assert (tmp_path / "pid").read_text().strip() == str(proc.pid)
    knock(lab, "lan", SRV_LAN4, "7100", "7200:udp", "7300")
    deadline = time.monotonic() + 5
    while sequences.read_text().startswith(" "):
        assert time.monotonic() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.01)
    assert sequences.read_text() == "#7100,7200:udp,7300\n 7400,7500,7600\n"  # as knockd marks a used one
    assert elements(lab, "allowed") == [LAN4]
    lab.nft("srv", "flush", "set", "inet", "t", "allowed")
    knock(lab, "lan", SRV_LAN4, "7100", "7200:udp", "7300")  # replayed: refused
    knock(lab, "wan", SRV_WAN4, "7400", "7500", "7600")  # the next one works
    deadline = time.monotonic() + 5
    while not elements(lab, "allowed"):
        assert time.monotonic() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.01)
    assert elements(lab, "allowed") == ["198.19.0.2"]
    assert "disabling the door" in (tmp_path / "log").read_text()
    lab.stop(proc)
    assert not (tmp_path / "pid").exists()


# --- the command runner, no namespace needed ------------------------------------------------------


def run_commands(actions: list[RunCommand], timeout: float = 10.0) -> list[dict[str, Any]]:
    stream = io.StringIO()
    log = EventLog(json_lines=True, stream=stream)

    async def main() -> None:
        runner = CommandRunner(log, timeout=timeout)
        for action in actions:
            runner.submit(action)
        await runner.drain()

    asyncio.run(main())
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_commands_run_in_order_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "order"
    records = run_commands(
        [
            RunCommand("d", "start", ("sh", "-c", f"sleep 0.2; echo start >> {marker}"), 4, LAN4),
            RunCommand("d", "stop", ("sh", "-c", f"echo stop >> {marker}"), 4, LAN4),  # waits for its start
            RunCommand("d", "start", ("echo", "$HOME;", "%IP%"), 4, "198.18.0.3"),  # words are not expanded
            RunCommand("d", "start", ("false",), 4, "198.18.0.4"),
            RunCommand("d", "start", (str(tmp_path / "missing"),), 4, "198.18.0.5"),
        ]
    )
    assert marker.read_text() == "start\nstop\n"
    messages = [record["message"] for record in records]
    assert "d: running command: echo '$HOME;' %IP%" in messages
    assert "d: command returned non-zero status code (1)" in messages
    assert f"d: cannot run {tmp_path / 'missing'}: No such file or directory" in messages
    assert sum(1 for record in records if record["event"] == "command_exit") == 3


def test_slow_commands_are_killed_with_their_children_and_reaped(tmp_path: Path) -> None:
    started = time.monotonic()
    records = run_commands(
        [RunCommand("d", "start", ("sh", "-c", f"sleep 30 & echo $! > {tmp_path / 'child'}; wait"), 4, LAN4)],
        timeout=0.5,
    )
    assert time.monotonic() - started < 5
    assert records[-1]["event"] == "command_killed" and records[-1]["message"] == "d: command killed after 0.5 s"
    child = int((tmp_path / "child").read_text())
    time.sleep(0.1)
    state = (
        Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{child}").exists() else ""
    )
    assert state in ("", "Z")  # killed with its process group (a zombie only until init reaps it)
    assert zombies(os.getpid()) == []


def test_text_log_lines_look_like_knockd(tmp_path: Path) -> None:
    log = EventLog(json_lines=False, log_file=str(tmp_path / "log"), stream=io.StringIO())
    log.write("stage", "198.18.0.2: ssh: Stage 1", door="ssh", src=LAN4, stage=1)
    log.close()
    line = (tmp_path / "log").read_text()
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d\] 198\.18\.0\.2: ssh: Stage 1\n", line)
