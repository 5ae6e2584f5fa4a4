"""watch's core without any IO: recorded packets (real IPv4/IPv6 headers through the NFLOG parser) in, events
and spawns out; its output (contract keys, compact lines, journal priorities); the compiler's `[watch]` switch."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from portward.daemons.watch import (
    MAX_KEYS,
    Settings,
    Spawn,
    WatchCore,
    WatchEvent,
    WatchLog,
    expand,
    iso_time,
    load_settings,
)
from portward.dialects.nft import compile_policy, render_text
from portward.errors import InputError
from portward.kernel.nflog import PacketEvent, parse_packet
from portward.policy.toml import load_policy_text
from tests.pwutil import ROOT

SCANNER, SCANNER6, LAN, SRV, SRV6 = "198.19.0.2", "2001:db8:0:2::2", "198.18.0.2", "198.19.0.1", "2001:db8:0:2::1"
DENIED, BAN, SCAN = "portward denied ", "portward ban ", "portward scan "
T0 = 1_790_000_000.25


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def tcp_syn(src: str, dst: str, dport: int, sport: int = 40000) -> tuple[bytes, int]:
    """A SYN as NFLOG copies it: network header first (checksums are not the parser's business)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    if ":" in src:
        header = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64)
        return header + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + tcp, 6
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0)
    return header + socket.inet_aton(src) + socket.inet_aton(dst) + tcp, 4


def udp(src: str, dst: str, dport: int) -> tuple[bytes, int]:
    body = struct.pack("!HHHH", 5353, dport, 8, 0)
    header = struct.pack("!BBHHHBBH", 0x45, 0, 28, 1, 0, 64, 17, 0)
    return header + socket.inet_aton(src) + socket.inet_aton(dst) + body, 4


def packet(src: str, dport: int, prefix: str = DENIED, *, dst: str = SRV, at: float = T0, proto: str = "tcp",
           iface: str = "eth-wan") -> PacketEvent:
    raw, family = tcp_syn(src, dst, dport) if proto == "tcp" else udp(src, dst, dport)
    event = parse_packet(raw, family, time=at, iface=iface, prefix=prefix)
    assert event is not None
    return event


def core(clock: Clock, **changes: object) -> WatchCore:
    values: dict[str, object] = {"scan_ports": 10, "scan_window": 5, "ban_for": 600, "severity": "warning",
                                 "spawn": ("logger", "-t", "portward", "%e from %a: %n ports, last %p (100%%)")}
    values.update(changes)
    return WatchCore(Settings(**values), clock)  # type: ignore[arg-type]


def events(actions: list[WatchEvent | Spawn], kind: str | None = None) -> list[WatchEvent]:
    return [a for a in actions if isinstance(a, WatchEvent) and (kind is None or a.event == kind)]


def test_one_denied_event_per_source_port_and_protocol_per_window() -> None:
    clock = Clock()
    watch = core(clock)
    first = watch.feed(packet(SCANNER, 23))
    assert first == [WatchEvent("denied", T0, SCANNER, SRV, "tcp", 23, "eth-wan")]
    assert watch.feed(packet(SCANNER, 23)) == []  # a retransmission, a retry
    assert len(watch.feed(packet(SCANNER, 23, proto="udp"))) == 1  # another protocol, another port
    assert len(watch.feed(packet(LAN, 23, iface="eth-lan"))) == 1  # another source
    (v6,) = events(watch.feed(packet(SCANNER6, 23, dst=SRV6)))
    assert (v6.src, v6.dst, v6.dport) == (SCANNER6, SRV6, 23)
    clock.t += 4.9
    assert watch.feed(packet(SCANNER, 23)) == []
    clock.t += 0.2  # scan_window after the first report: reported again
    assert len(watch.feed(packet(SCANNER, 23))) == 1
    assert watch.ports_seen(SCANNER) == 1


def test_a_kernel_ban_gives_denied_scan_ban_and_one_expanded_spawn() -> None:
    clock = Clock()
    watch = core(clock)
    for port in range(1000, 1009):
        watch.feed(packet(SCANNER, port))
    actions = watch.feed(packet(SCANNER, 1009, BAN))  # the scan_ports-th port: the kernel banned on it
    assert [a.event for a in events(actions)] == ["denied", "scan", "ban"]
    scan, ban = events(actions)[1:]
    assert scan.to_json() == {"time": iso_time(T0), "event": "scan", "src": SCANNER, "ports": 10,
                              "severity": "warning"}
    assert ban.to_json() == {"time": iso_time(T0), "event": "ban", "src": SCANNER, "for": 600, "severity": "warning"}
    (spawn,) = [a for a in actions if isinstance(a, Spawn)]
    assert spawn.argv == ("logger", "-t", "portward", f"ban from {SCANNER}: 10 ports, last 1009 (100%)")
    assert (spawn.src, spawn.family) == (SCANNER, 4)
    # the same packet's own denied copy follows: already reported
    assert watch.feed(packet(SCANNER, 1009)) == []


def test_spawn_at_most_once_per_source_per_window_and_ports_counts_what_watch_saw() -> None:
    clock = Clock()
    watch = core(clock, ban_for=2)
    for port in range(1, 15):  # more than the threshold reached watch (the kernel bans on packet 10)
        watch.feed(packet(SCANNER, port))
    first = watch.feed(packet(SCANNER, 15, BAN))
    assert events(first, "scan")[0].ports == 15 and len([a for a in first if isinstance(a, Spawn)]) == 1
    clock.t += 2.5  # the ban ran out within the window; the kernel bans again on the next new port
    again = watch.feed(packet(SCANNER, 16, BAN))
    assert [a.event for a in events(again)] == ["denied", "scan", "ban"]
    assert not any(isinstance(a, Spawn) for a in again)
    other = watch.feed(packet(SCANNER6, 16, BAN, dst=SRV6))
    assert [a.family for a in other if isinstance(a, Spawn)] == [6]
    clock.t += 3  # a window after the first spawn
    assert any(isinstance(a, Spawn) for a in watch.feed(packet(SCANNER, 17, BAN)))


def test_alert_only_reports_a_scan_without_ban() -> None:
    watch = core(Clock(), ban_for=0, spawn=("echo", "%e", "%a", "%x"))
    actions = watch.feed(packet(SCANNER, 80, SCAN))
    assert [a.event for a in events(actions)] == ["denied", "scan"]
    assert [a.argv for a in actions if isinstance(a, Spawn)] == [("echo", "scan", SCANNER, "%x")]


def test_no_spawn_configured_and_foreign_prefixes() -> None:
    watch = core(Clock(), spawn=None)
    assert not any(isinstance(a, Spawn) for a in watch.feed(packet(SCANNER, 80, BAN)))
    assert watch.feed(packet(SCANNER, 81, "portward spa ")) == []
    assert watch.feed(packet(SCANNER, 82, "knock")) == []


def test_state_stays_bounded_under_a_flood_of_sources_and_ports() -> None:
    clock = Clock()
    watch = core(clock)
    flood = [packet(f"198.19.{(i >> 8) & 255}.{i & 255}", 1 + i % 1000) for i in range(4 * MAX_KEYS)]
    tracemalloc.start()
    try:
        for index, item in enumerate(flood):
            clock.t += 0.0001  # 4 x MAX_KEYS pairs within one window
            watch.feed(item)
            if index == 2 * MAX_KEYS:  # every table is full by now
                baseline, _ = tracemalloc.get_traced_memory()
        final, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert watch.tracked() <= 2 * MAX_KEYS and watch.evicted == 3 * MAX_KEYS
    assert final - baseline < 64 * 1024
    clock.t += 6
    watch.expire()
    assert watch.tracked() == 0


def test_expansions_are_per_word_and_never_a_shell() -> None:
    values = {"a": "198.19.0.2", "p": "23", "n": "10", "e": "scan"}
    assert expand(["sh", "-c", "echo %a; rm -rf /", "%%a=%a", "%q", "50%"], values) == (
        "sh", "-c", "echo 198.19.0.2; rm -rf /", "%a=198.19.0.2", "%q", "50%"
    )


def test_json_lines_and_compact_human_lines() -> None:
    denied = WatchEvent("denied", T0, SCANNER6, SRV6, "udp", 5353, "eth-lan")
    assert denied.to_json() == {"time": iso_time(T0), "event": "denied", "src": SCANNER6, "dst": SRV6,
                                "proto": "udp", "dport": 5353, "iface": "eth-lan"}
    assert iso_time(T0) == "2026-09-21T14:13:20.250Z"
    stream = io.StringIO()
    log = WatchLog(json_lines=False, stream=stream)
    log.event(denied)
    log.event(WatchEvent("ban", T0, SCANNER, ban_for=600, severity="alert"))
    log.write("command", "spawn: running command: true", door="spawn", kind="start", src=SCANNER)
    log.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].endswith(f" denied {SCANNER6} -> {SRV6} 5353/udp on eth-lan")
    assert lines[1].endswith(f" ban {SCANNER} banned for 600 s [alert]")
    stream = io.StringIO()
    log = WatchLog(json_lines=True, stream=stream)
    log.write("command", "spawn: running command: true", door="spawn", kind="start", src=SCANNER)
    log.close()
    assert json.loads(stream.getvalue())["src"] == SCANNER and "door" not in stream.getvalue()


def test_under_systemd_each_line_carries_its_priority_for_the_journal(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with (tmp_path / "journal").open("w+") as stream:
        status = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
        log = WatchLog(json_lines=True, stream=stream, severity="crit")
        log.event(WatchEvent("scan", T0, SCANNER, ports=10, severity="crit"))
        log.event(WatchEvent("denied", T0, SCANNER, SRV, "tcp", 23, "eth-wan"))
        assert log.journal and not log.to_syslog
        log.close()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines[0].startswith('<2>{"time"') and lines[1].startswith("<6>{")
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not WatchLog(json_lines=True, stream=io.StringIO()).journal


POLICY = """
[defaults]
inbound = "{inbound}"
log_denied = {log}
[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
"""


@pytest.mark.parametrize(
    ("inbound", "log", "table", "sets", "note"),
    [
        ("drop", "true", "\n[watch]\nban_for = 60\n", {"seen", "scan", "ban"}, False),
        ("reject", "true", "\n[watch]\nban_for = 0\n", {"seen", "scan", "alert"}, False),
        ("drop", "true", "", set(), False),  # log_denied alone only logs
        ("drop", "false", "\n[watch]\n", set(), True),
        ("accept", "true", "\n[watch]\n", set(), True),
    ],
)
def test_the_kernel_counts_scans_only_with_a_watch_table(inbound: str, log: str, table: str, sets: set[str],
                                                         note: bool) -> None:
    loaded = load_policy_text(POLICY.format(inbound=inbound, log=log) + table, "p.toml")
    ruleset = compile_policy(loaded)
    kinds = {name.split("_")[1] for name in ruleset.sets if name.startswith("watch_")}
    assert kinds == sets
    assert Settings.from_policy(loaded.policy).kernel_scans == bool(sets)
    assert any("[watch]" in text for text in ruleset.notes) == note
    text = render_text(ruleset)
    if "ban" in sets:  # the ban is checked before the first accept of a new connection
        assert text.index("@watch_ban_v4 drop") < text.index("icmp type echo-request")
        assert text.index("@watch_ban_v6 drop") < text.index("tcp dport 22 accept")
        logged = 'add @watch_ban_v4 { ip saddr } limit rate 50/second burst 100 packets log prefix "portward ban "'
        assert logged in text
    if "alert" in sets:
        assert 'log prefix "portward scan "' in text


def test_watch_refuses_a_policy_that_logs_nothing(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY.format(inbound="drop", log="false"))
    with pytest.raises(InputError, match="log_denied is false"):
        load_settings(str(policy))
    done = subprocess.run([sys.executable, "-m", "portward", "watch", "-p", str(policy), "--json"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 2 and "log_denied" in done.stderr
