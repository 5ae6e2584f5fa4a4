"""`portward watch -p POLICY [--json]`: denied attempts as events, the kernel's scan verdicts as alerts.

The applied ruleset does the work that must not wait for a process (see `Compiler._watch_scans`): with
`[defaults] log_denied = true` every denied inbound packet (default verdict, `[block]`) is copied to NFLOG
group 7601 behind a kernel rate limit (50/s, burst 100), and with a `[watch]` table the kernel also counts,
per source, the distinct denied ports within `scan_window` and bans the source in `watch_ban_vN` (timeout
`ban_for`) on the packet that reaches `scan_ports`; that packet is logged once more with the prefix
"portward ban " ("portward scan " when ban_for = 0: alert only). A ban is in force before the packet that
caused it has left the ruleset and ends in the kernel, whether watch runs or not.

watch only reports and reacts, from that one NFLOG group (v4 and v6, every interface):

- `denied`: one event per (source, protocol, port) per scan_window; state bounded (MAX_KEYS, oldest first)
  and aged, so neither a flood of sources nor one of ports grows it.
- `scan` (+ `ban`): one per kernel verdict; `ports` is scan_ports, or more when watch saw more distinct
  denied ports from the source within the window. The threshold packet's own `denied` event comes first.
- `severity`: in scan/ban events; those go to syslog at that priority when /dev/log exists. Under systemd
  (stdout is the journal: JOURNAL_STREAM) every line gets a `<N>` priority prefix instead, so the journal
  holds each alert once, at its severity.
- `spawn`: argv (no shell) with %a address, %p port, %n ports seen, %e event ("scan" or "ban"), %% a
  percent sign -- the %-expansions of hosts_options(5) `spawn`; at most one per source per scan_window, run
  by knockd's CommandRunner (timeout, own process group killed on timeout, always reaped).

`WatchCore` is the sans-IO core (packet events in, events and spawns out); `serve()` is the asyncio driver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import syslog
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from portward.daemons.eventlog import EventLog, catch_stop_signals, run_daemon
from portward.dialects.nft import BAN_LOG_PREFIX, DENIED_LOG_PREFIX, NFLOG_GROUP_DENIED, SCAN_LOG_PREFIX
from portward.errors import InputError, PortwardError
from portward.kernel.nflog import PacketEvent

__all__ = [
    "MAX_KEYS",
    "MAX_SOURCES",
    "Settings",
    "Spawn",
    "WatchCore",
    "WatchEvent",
    "WatchLog",
    "expand",
    "main",
    "serve",
]

Json = dict[str, Any]
MAX_KEYS = 8192  # (source, protocol, port) pairs remembered for the denied de-duplication
MAX_SOURCES = 4096  # sources remembered for "one spawn per window"
BATCH_S = 0.02  # after a wake-up, packets queue this long before the next read (at most 50 wake-ups a second)
PRIORITIES = {
    "emerg": syslog.LOG_EMERG,
    "alert": syslog.LOG_ALERT,
    "crit": syslog.LOG_CRIT,
    "err": syslog.LOG_ERR,
    "warning": syslog.LOG_WARNING,
    "notice": syslog.LOG_NOTICE,
    "info": syslog.LOG_INFO,
    "debug": syslog.LOG_DEBUG,
}
_DENIED, _BAN, _SCAN = DENIED_LOG_PREFIX.strip(), BAN_LOG_PREFIX.strip(), SCAN_LOG_PREFIX.strip()


@dataclass(frozen=True)
class Settings:
    """What watch needs from the policy: `[watch]`, and whether the kernel counts scans at all."""

    scan_ports: int = 10
    scan_window: int = 5
    ban_for: int = 600
    severity: str = "warning"
    spawn: tuple[str, ...] | None = None
    kernel_scans: bool = True

    @classmethod
    def from_policy(cls, policy: Any) -> Settings:
        from portward.dialects.nft import watching

        watch = policy.watch
        spawn = tuple(watch.spawn) if watch.spawn else None
        return cls(watch.scan_ports, watch.scan_window, watch.ban_for, watch.severity, spawn, watching(policy))


# --- what the core emits ------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchEvent:
    """One line of output: `denied`, `scan` or `ban` (the keys of the contract's `watch --json`)."""

    event: str
    time: float  # wall clock, seconds (the kernel's timestamp of the packet when it gave one)
    src: str
    dst: str = ""
    proto: str = ""
    dport: int = 0
    iface: str = ""
    ports: int = 0
    ban_for: int = 0
    severity: str = ""

    def to_json(self) -> Json:
        record: Json = {"time": iso_time(self.time), "event": self.event, "src": self.src}
        if self.event == "denied":
            record.update(dst=self.dst, proto=self.proto, dport=self.dport, iface=self.iface)
        elif self.event == "scan":
            record.update(ports=self.ports, severity=self.severity)
        else:
            record.update({"for": self.ban_for, "severity": self.severity})
        return record

    def message(self) -> str:
        if self.event == "denied":
            port = f"{self.dport}/{self.proto}" if self.dport else self.proto
            where = f" on {self.iface}" if self.iface else ""
            return f"{self.src} -> {self.dst} {port}{where}"
        if self.event == "scan":
            return f"{self.src}: {self.ports} denied ports [{self.severity}]"
        return f"{self.src} banned for {self.ban_for} s [{self.severity}]"


@dataclass(frozen=True)
class Spawn:
    """Run ``argv`` (already expanded) for an alert about ``src``."""

    argv: tuple[str, ...]
    src: str
    family: int
    event: str


Action = WatchEvent | Spawn


def iso_time(timestamp: float) -> str:
    """2026-11-23T07:30:00.123Z, as the contract's examples."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_EXPANSION = re.compile(r"%(.)")


def expand(argv: Sequence[str], values: dict[str, str]) -> tuple[str, ...]:
    """hosts_options-style %-expansion, word by word (no shell ever sees the words). ``values`` maps the
    letter to its text; %% is a percent sign; an unknown %x stays as written."""

    def one(match: re.Match[str]) -> str:
        letter = match.group(1)
        return "%" if letter == "%" else values.get(letter, match.group(0))

    return tuple(_EXPANSION.sub(one, word) for word in argv)


# --- the core -----------------------------------------------------------------------------------


class WatchCore:
    """Packets of NFLOG group 7601 in, events and spawns out; no IO, bounded state.

    ``now`` is the clock of the ageing (the driver passes loop.time); event times come from the packets.
    Per (source, protocol, port) the time it was first reported is kept for scan_window, at most
    ``max_keys`` of them (the oldest go first when a flood brings more): a `denied` event is emitted
    only for a pair not held. Per source the count of such pairs gives `ports`/%n; the time of its last
    spawn is kept for scan_window (at most ``max_sources``).
    """

    def __init__(
        self,
        settings: Settings,
        now: Callable[[], float] = time.monotonic,
        *,
        max_keys: int = MAX_KEYS,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        if max_keys < 1 or max_sources < 1:
            raise ValueError("max_keys and max_sources must be at least 1")
        self.settings = settings
        self.now = now
        self.max_keys = max_keys
        self.max_sources = max_sources
        self.evicted = 0
        self._reported: OrderedDict[tuple[str, str, int], float] = OrderedDict()
        self._ports_of: dict[str, int] = {}
        self._spawned: OrderedDict[str, float] = OrderedDict()

    def tracked(self) -> int:
        """Entries held in memory, all tables together."""
        return len(self._reported) + len(self._ports_of) + len(self._spawned)

    def ports_seen(self, src: str) -> int:
        return self._ports_of.get(src, 0)

    def feed(self, packet: PacketEvent) -> list[Action]:
        self.expire()
        kind = packet.prefix.strip()
        if kind == _DENIED:
            denied = self._denied(packet)
            return [denied] if denied is not None else []
        if kind in (_BAN, _SCAN):
            return self._alert(packet, banned=kind == _BAN)
        return []  # another group's prefix: not ours to report

    def expire(self) -> None:
        """Forget what is older than scan_window (entries are in time order: stop at the first young one)."""
        limit = self.now() - self.settings.scan_window
        while self._reported:
            key, first = next(iter(self._reported.items()))
            if first > limit:
                break
            self._forget(key)
        while self._spawned:
            src, at = next(iter(self._spawned.items()))
            if at > limit:
                break
            del self._spawned[src]

    # -- internals --

    def _denied(self, packet: PacketEvent) -> WatchEvent | None:
        key = (packet.src, packet.proto, packet.dport)
        if key in self._reported:
            return None
        if len(self._reported) >= self.max_keys:
            self._forget(next(iter(self._reported)))
            self.evicted += 1
        self._reported[key] = self.now()
        self._ports_of[packet.src] = self._ports_of.get(packet.src, 0) + 1
        return WatchEvent(
            "denied", packet.time, packet.src, packet.dst, packet.proto, packet.dport, packet.iface
        )

    def _forget(self, key: tuple[str, str, int]) -> None:
        del self._reported[key]
        left = self._ports_of[key[0]] - 1
        if left:
            self._ports_of[key[0]] = left
        else:
            del self._ports_of[key[0]]

    def _alert(self, packet: PacketEvent, *, banned: bool) -> list[Action]:
        """The kernel's verdict on ``packet``: it was the scan_ports-th distinct denied port of its source."""
        settings = self.settings
        actions: list[Action] = []
        denied = self._denied(packet)  # the same packet is logged as denied right after (or rate-limited away)
        if denied is not None:
            actions.append(denied)
        ports = max(settings.scan_ports, self.ports_seen(packet.src))
        actions.append(WatchEvent("scan", packet.time, packet.src, ports=ports, severity=settings.severity))
        if banned:
            actions.append(
                WatchEvent("ban", packet.time, packet.src, ban_for=settings.ban_for, severity=settings.severity)
            )
        event = "ban" if banned else "scan"
        if settings.spawn and packet.src not in self._spawned:
            if len(self._spawned) >= self.max_sources:
                self._spawned.popitem(last=False)
            self._spawned[packet.src] = self.now()
            values = {"a": packet.src, "p": str(packet.dport), "n": str(ports), "e": event}
            actions.append(Spawn(expand(settings.spawn, values), packet.src, packet.family, event))
        return actions


# --- output ---------------------------------------------------------------------------------------


def stdout_is_journal(stream: TextIO) -> bool:
    """systemd sets JOURNAL_STREAM=DEV:INODE when stdout is connected to the journal (systemd.exec(5))."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


class WatchLog(EventLog):
    """EventLog with the contract's `watch --json` records and per-event syslog priorities.

    Human lines: `2026-11-23 08:30:00.123 denied 198.19.0.2 -> 198.19.0.1 23/tcp on eth-wan`."""

    def __init__(self, *, json_lines: bool, stream: TextIO | None = None, log_file: str | None = None,
                 severity: str = "warning") -> None:
        super().__init__(json_lines=json_lines, log_file=log_file, stream=stream)
        self.alert_priority = PRIORITIES[severity]
        self.journal = stdout_is_journal(self.stdout) and log_file is None
        self.to_syslog = not self.journal and os.path.exists("/dev/log")
        if self.to_syslog:
            syslog.openlog("portward-watch", syslog.LOG_PID, syslog.LOG_DAEMON)

    def event(self, item: WatchEvent, *, flush: bool = True) -> None:
        """One event; ``flush=False`` leaves the line buffered until `flush()` (one write for a batch)."""
        priority = syslog.LOG_INFO if item.event == "denied" else self.alert_priority
        record = item.to_json() if self.json_lines else None
        self._emit(item.time, item.event, item.message(), record, priority, flush=flush)
        if self.to_syslog and item.event != "denied":
            syslog.syslog(priority, f"{item.event} {item.message()}")

    def write(self, event: str, message: str, **fields: Any) -> None:
        """Everything else (ready, drops, spawned commands, shutdown): `message` kept in the JSON."""
        when = time.time()
        record: Json | None = None
        if self.json_lines:
            record = {"time": iso_time(when), "event": event, "message": message}
            if event.startswith("command"):  # CommandRunner's door/kind say "spawn"/"start" every time
                fields = {key: value for key, value in fields.items() if key not in ("door", "kind")}
            record.update({key: value for key, value in fields.items() if value not in (None, "")})
        failed = event in ("command_failed", "command_killed", "command_error", "error", "drops")
        self._emit(when, event, message, record, syslog.LOG_WARNING if failed else syslog.LOG_NOTICE)

    def _emit(
        self, when: float, event: str, message: str, record: Json | None, priority: int, *, flush: bool = True
    ) -> None:
        if record is not None:
            line = json.dumps(record)
        else:
            stamp = datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            line = f"{stamp} {event} {message}"
        if self.journal:
            line = f"<{priority}>{line}"
        out = self._file or self.stdout
        try:
            out.write(line + "\n")
            if flush:
                out.flush()
            if event == "ready" and out is not self.stdout:  # whoever started us waits for it on stdout
                self.stdout.write(line + "\n")
                self.stdout.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must not stop the bans' reporting loop

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            (self._file or self.stdout).flush()

    def close(self) -> None:
        self.flush()
        super().close()
        if self.to_syslog:
            syslog.closelog()


# --- the driver ---------------------------------------------------------------------------------


def kernel_check(nft: Any) -> tuple[bool, bool]:
    """(the applied input chain logs denied packets to group 7601, it counts scans), from the live chain.

    Only the chain is listed, never the sets: a 100k-element block list costs nothing here."""
    from portward.dialects.nft import FAMILY, TABLE

    try:
        listing = nft.run([{"list": {"chain": {"family": FAMILY, "table": TABLE, "name": "input"}}}])
    except PortwardError:
        raise PortwardError(
            f"table {FAMILY} {TABLE} has no input chain in this network namespace — apply the policy first: "
            "portward apply -p POLICY"
        ) from None
    text = json.dumps([item for item in listing if "rule" in item])
    logs = f'"group": {NFLOG_GROUP_DENIED}' in text
    return logs, "@watch_scan_v4" in text


async def serve(
    settings: Settings,
    *,
    json_lines: bool,
    stop: asyncio.Event | None = None,
    group: int = NFLOG_GROUP_DENIED,
    stream: TextIO | None = None,
    log_file: str | None = None,
    check_kernel: bool = True,
) -> None:
    """Report until ``stop`` is set (or SIGTERM/SIGINT in the main thread). Writes `ready` once listening;
    on the way out every spawned command is waited for (the kernel keeps its bans)."""
    from portward.daemons.knockd import CommandRunner, RunCommand
    from portward.kernel.nflog import NflogSocket

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    scans = settings.kernel_scans
    if check_kernel:
        from portward.kernel.nft import Nft

        logs, scans = kernel_check(Nft())
        if not logs:
            raise PortwardError(
                "the applied ruleset logs no denied packets — set [defaults] log_denied = true in the policy and "
                "apply it: portward apply -p POLICY"
            )
    core = WatchCore(settings, loop.time)
    log = WatchLog(json_lines=json_lines, stream=stream, log_file=log_file, severity=settings.severity)
    runner = CommandRunner(log)
    try:
        sock = NflogSocket(group)
    except BaseException:
        log.close()
        raise
    reported = {"dropped": 0, "evicted": 0}

    def handle(actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, WatchEvent):
                log.event(action, flush=False)
            else:
                runner.submit(RunCommand("spawn", "start", action.argv, action.family, action.src))

    def readable() -> None:
        for packet in sock.read_events():
            handle(core.feed(packet))
        log.flush()
        # The kernel sends each packet at once (NflogSocket: qthresh 1), so a steady trickle would wake us per
        # packet. After a wake-up, let packets queue for BATCH_S: the first one of a quiet spell is reported at
        # once, and under load a wake-up (and a write) serves many.
        if not stop.is_set():
            loop.remove_reader(sock.fileno())
            loop.call_later(BATCH_S, resume)

    def resume() -> None:
        if not stop.is_set():
            loop.add_reader(sock.fileno(), readable)

    def tick() -> None:
        core.expire()
        if sock.dropped != reported["dropped"]:
            log.write("drops", f"lost {sock.dropped - reported['dropped']} logged packets (receive queue full)",
                      dropped=sock.dropped)
            reported["dropped"] = sock.dropped
        if core.evicted != reported["evicted"]:
            log.write("evicted", f"{core.max_keys} (source, port) pairs held, the limit: forgot "
                      f"{core.evicted - reported['evicted']} early", evicted=core.evicted)
            reported["evicted"] = core.evicted
        if not stop.is_set():
            loop.call_later(1.0, tick)

    release_signals = catch_stop_signals(loop, stop)
    try:
        loop.add_reader(sock.fileno(), readable)
        loop.call_later(1.0, tick)
        if scans:
            action = f"ban for {settings.ban_for} s" if settings.ban_for else "alert only"
            plan = f"scans: {settings.scan_ports} ports in {settings.scan_window} s -> {action}"
        else:
            plan = "no scan detection in the applied ruleset (add [watch] to the policy and apply it)"
        log.write("ready", f"listening on NFLOG group {group}; {plan}", group=group)
        await stop.wait()
    finally:
        stop.set()  # a pending `resume` must not watch the socket closed below
        with contextlib.suppress(Exception):
            loop.remove_reader(sock.fileno())
        sock.close()
        await runner.drain()
        release_signals()
        log.write("shutdown", "stopped; bans stay until their timeouts (the kernel expires them)")
        log.close()


def load_settings(policy_path: str) -> Settings:
    from portward.policy.toml import load_policy

    policy = load_policy(policy_path).policy
    if not policy.defaults.log_denied:
        raise InputError(
            f"{policy_path}: [defaults] log_denied is false: nothing is logged to watch — set it to true and "
            f"apply: portward apply -p {policy_path}"
        )
    return Settings.from_policy(policy)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portward watch", description="Follow denied attempts, scans and bans.")
    parser.add_argument("-p", "--policy", default="/etc/portward/policy.toml", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--log-file", metavar="FILE", help="write here instead of stdout")
    args = parser.parse_args(list(argv) if argv is not None else None)
    return run_daemon(
        "watch",
        lambda: serve(load_settings(args.policy), json_lines=args.json, log_file=args.log_file),
        json_errors=args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
