"""`portward knockd -c knockd.conf`: a knockd-compatible door daemon that runs commands.

Use it when a door must *run commands* (a stock /etc/knockd.conf); doors that only open ports are better
compiled into the kernel (`[[knock]]` in a policy). What it does differently from knockd:

- Capture: an nftables table of its own (`inet portward_knockd`, made at start, deleted at exit) copies
  only packets to the doors' knock ports (TCP with the door's flags, UDP) to an NFLOG group, from every
  interface and both families at once. No polling: a knock reaches the tracker within microseconds, and
  a flood of packets to other ports costs no user-space work at all.
- Retransmissions: a repeat of the knock just made is tolerated instead of resetting the sequence.
- Sweeps: a source that knocked recently has its next new connection to any other port reported once
  (the kernel removes it from the `seen` set as it reports it); that resets its sequences, so `nmap -r`
  across an ascending sequence opens nothing. knockd never sees those ports.
- Commands: split into words and run without a shell (`%IP%` replaced in each word), killed after
  COMMAND_TIMEOUT_S, always reaped. A door reopened while open keeps one start/stop pair: the stop is
  postponed instead of running the start command twice.
- Exit (SIGTERM, SIGINT): stop commands of doors still open run at once, then the table is deleted.

The core (`KnockTracker`) does no IO: packet events in, actions out (log lines, commands, stop timers,
one-time sequences used). `serve()` is the asyncio driver around it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import ipaddress
import os
import shlex
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from portward.daemons.eventlog import EventLog, catch_stop_signals, run_daemon
from portward.dialects.knockd import (
    KnockdConfig,
    KnockdDoor,
    KnockPort,
    OneTimeSequence,
    command_argv,
    read_knockd_conf,
    read_one_time_sequences,
)
from portward.errors import PortwardError
from portward.kernel.nflog import PacketEvent

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_TABLE",
    "Action",
    "KnockTracker",
    "Log",
    "RunCommand",
    "ScheduleStop",
    "UseOneTimeSequence",
    "capture_commands",
    "main",
    "serve",
]

DEFAULT_GROUP = 7602  # NFLOG group; `portward watch` uses 7601
DEFAULT_TABLE = "portward_knockd"
MAX_SOURCES = 4096  # attempts tracked per door; the oldest first-stage attempt goes first
COMMAND_TIMEOUT_S = 10.0
SEEN_SET_SIZE = 65536
Json = dict[str, Any]


# --- actions (what the core asks the driver to do) ---------------------------------------------


@dataclass(frozen=True)
class Log:
    """A knockd-style line (``message``) and what it is about, for JSON logs."""

    event: str  # stage, open, reopen, sequence_timeout, reset, command_timeout, close, one_time_used, ...
    message: str
    door: str = ""
    src: str = ""
    stage: int | None = None


@dataclass(frozen=True)
class RunCommand:
    door: str
    kind: Literal["start", "stop"]
    argv: tuple[str, ...]
    family: int
    src: str


@dataclass(frozen=True)
class ScheduleStop:
    """Call ``KnockTracker.due()`` at ``at`` (the tracker's clock): a stop command is due then."""

    door: str
    src: str
    at: float


@dataclass(frozen=True)
class UseOneTimeSequence:
    """Mark the sequence used in its file, as knockd does: `#` over the first character of its line."""

    door: str
    path: str
    line: int
    offset: int


Action = Log | RunCommand | ScheduleStop | UseOneTimeSequence


# --- the core ----------------------------------------------------------------------------------


@dataclass
class _Attempt:
    stage: int  # knocks matched so far
    start: float  # time of the first knock: the whole sequence must fit in seq_timeout from here


@dataclass
class _Opening:
    at: float
    family: int
    stop_argv: tuple[str, ...]


@dataclass
class _DoorState:
    door: KnockdDoor
    sequence: tuple[KnockPort, ...]
    remaining: list[OneTimeSequence] | None  # one-time sequences still unused, the current one first
    target: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    # Two queues in order of arrival: attempts at stage 1 (cheap to redo, evicted first) and further ones.
    fresh: OrderedDict[str, _Attempt] = field(default_factory=OrderedDict)
    advanced: OrderedDict[str, _Attempt] = field(default_factory=OrderedDict)
    evicted: int = 0
    disabled: bool = False

    def remove(self, src: str) -> None:
        if self.fresh.pop(src, None) is None:
            self.advanced.pop(src, None)


class KnockTracker:
    """knockd's state machine per (door, source), with bounded memory.

    Per door and source: the next knock of the sequence advances (`Stage N`); a repeat of the knock just
    made is ignored (a retransmission); any other packet the door's tcpflags accept -- a knock port out of
    order, or another port the capture reports -- resets that source's attempt, and starts a new one if it
    is the door's first knock. TCP packets the tcpflags refuse, and packets to another target or from
    another interface than the door's, are ignored. The sequence must be complete within seq_timeout of its
    first knock. At most ``max_sources`` attempts per door: the oldest stage-1 attempt is dropped first,
    and attempts older than seq_timeout are dropped as new packets come, so a flood from random sources
    holds bounded memory and costs an attempt in progress nothing once it has passed stage 1.

    ``now`` is the clock of every decision and of ScheduleStop times (the driver passes loop.time).
    ``one_time`` maps a door with one_time_sequences to its unused sequences, in file order.
    """

    def __init__(
        self,
        doors: Sequence[KnockdDoor],
        now: Callable[[], float] = time.monotonic,
        *,
        one_time: Mapping[str, Sequence[OneTimeSequence]] | None = None,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self.now = now
        self.max_sources = max_sources
        self._doors: list[_DoorState] = []
        for door in doors:
            remaining = None
            sequence = door.sequence
            if door.one_time_sequences is not None:
                remaining = list((one_time or {}).get(door.name, ()))
                sequence = remaining[0].sequence if remaining else ()
            target = ipaddress.ip_address(door.target) if door.target else None
            state = _DoorState(door, sequence, remaining, target)
            state.disabled = not sequence
            self._doors.append(state)
        self._open: dict[tuple[str, str], _Opening] = {}
        self._stops: list[tuple[float, str, str]] = []  # heap of (at, door, src); stale entries skipped

    # -- queries --

    def watched_ports(self) -> dict[str, frozenset[KnockPort]]:
        """Per door, every port a knock may go to: the sequence, or all unused one-time sequences."""
        ports = {}
        for state in self._doors:
            if state.remaining is not None:
                ports[state.door.name] = frozenset(k for entry in state.remaining for k in entry.sequence)
            else:
                ports[state.door.name] = frozenset(state.sequence)
        return ports

    def tracked(self) -> int:
        """Attempts held in memory, all doors together."""
        return sum(len(state.fresh) + len(state.advanced) for state in self._doors)

    def open_doors(self) -> list[tuple[str, str]]:
        """(door, source) pairs whose stop command is still to run."""
        return sorted(self._open)

    def next_deadline(self) -> float | None:
        while self._stops:
            at, door, src = self._stops[0]
            opening = self._open.get((door, src))
            if opening is not None and opening.at == at:
                return at
            heapq.heappop(self._stops)
        return None

    # -- events --

    def feed(self, event: PacketEvent) -> list[Action]:
        if event.proto not in ("tcp", "udp"):
            return []
        now = self.now()
        knock = KnockPort(event.dport, "tcp" if event.proto == "tcp" else "udp")
        actions: list[Action] = []
        for state in self._doors:
            if state.disabled:
                continue
            self._age(state, now, actions)
            door = state.door
            if door.interface is not None and event.iface != door.interface:
                continue
            if state.target is not None and not _same_address(event.dst, state.target):
                continue
            if knock.proto == "tcp" and not door.tcpflags.matches(event.tcp_flags):
                continue  # knockd: packets that do not match the flags are ignored, not wrong
            self._knock(state, event, knock, now, actions)
        return actions

    def due(self) -> list[Action]:
        """Stop commands whose cmd_timeout has passed, and the ageing of old attempts."""
        now = self.now()
        actions: list[Action] = []
        while self._stops and self._stops[0][0] <= now:
            at, name, src = heapq.heappop(self._stops)
            opening = self._open.get((name, src))
            if opening is None or opening.at != at:
                continue  # postponed by a later knock
            del self._open[(name, src)]
            actions.append(Log("command_timeout", f"{src}: {name}: command timeout", name, src))
            actions.append(RunCommand(name, "stop", opening.stop_argv, opening.family, src))
        for state in self._doors:
            self._age(state, now, actions)
        return actions

    def shutdown(self) -> list[Action]:
        """Stop commands of every door still open, to run now (knockd left them open when it died)."""
        actions: list[Action] = []
        for (name, src), opening in sorted(self._open.items()):
            actions.append(Log("close", f"{src}: {name}: closing at shutdown", name, src))
            actions.append(RunCommand(name, "stop", opening.stop_argv, opening.family, src))
        self._open.clear()
        self._stops.clear()
        return actions

    # -- internals --

    def _age(self, state: _DoorState, now: float, actions: list[Action]) -> None:
        limit = state.door.seq_timeout
        for queue in (state.fresh, state.advanced):
            while queue:
                src, attempt = next(iter(queue.items()))
                if now - attempt.start <= limit:
                    break
                del queue[src]
                actions.append(_timeout(state, src, attempt))

    def _knock(
        self, state: _DoorState, event: PacketEvent, knock: KnockPort, now: float, actions: list[Action]
    ) -> None:
        door, src = state.door, event.src
        attempt = state.fresh.get(src) or state.advanced.get(src)
        if attempt is not None and now - attempt.start > door.seq_timeout:
            state.remove(src)
            actions.append(_timeout(state, src, attempt))
            attempt = None
        if attempt is not None:
            if knock == state.sequence[attempt.stage - 1] and knock != state.sequence[attempt.stage]:
                return  # a retransmission of the knock just made
            state.remove(src)
            if knock == state.sequence[attempt.stage]:
                self._advance(state, src, event.family, attempt, actions)
                return
            actions.append(
                Log(
                    "reset",
                    f"{src}: {door.name}: wrong knock {knock} at stage {attempt.stage}, starting over",
                    door.name,
                    src,
                    attempt.stage,
                )
            )
        if knock == state.sequence[0]:
            self._advance(state, src, event.family, _Attempt(0, now), actions)

    def _advance(self, state: _DoorState, src: str, family: int, attempt: _Attempt, actions: list[Action]) -> None:
        """Count one more knock of an attempt that is in no queue now; queue it again unless complete."""
        door = state.door
        attempt.stage += 1
        actions.append(Log("stage", f"{src}: {door.name}: Stage {attempt.stage}", door.name, src, attempt.stage))
        if attempt.stage < len(state.sequence):
            if len(state.fresh) + len(state.advanced) >= self.max_sources:
                (state.fresh or state.advanced).popitem(last=False)  # the oldest, at the earliest stage
                state.evicted += 1
                if state.evicted == 1 or state.evicted % self.max_sources == 0:
                    actions.append(
                        Log(
                            "evicted",
                            f"{door.name}: {self.max_sources} knock attempts in progress, the limit: "
                            f"dropping the oldest ({state.evicted} so far)",
                            door.name,
                        )
                    )
            (state.fresh if attempt.stage == 1 else state.advanced)[src] = attempt
            return
        actions.append(Log("open", f"{src}: {door.name}: OPEN SESAME", door.name, src, attempt.stage))
        self._open_door(state, src, family, actions)
        if state.remaining is not None:
            self._next_sequence(state, actions)

    def _open_door(self, state: _DoorState, src: str, family: int, actions: list[Action]) -> None:
        door, now = state.door, self.now()
        key = (door.name, src)
        opening = self._open.get(key)
        if opening is not None:  # still open: one start/stop pair, a later stop
            opening.at = now + door.cmd_timeout
            heapq.heappush(self._stops, (opening.at, door.name, src))
            actions.append(
                Log(
                    "reopen",
                    f"{src}: {door.name}: still open, stop_command postponed by {door.cmd_timeout} s",
                    door.name,
                    src,
                )
            )
            actions.append(ScheduleStop(door.name, src, opening.at))
            return
        start = door.command("start", family)
        if not start:
            return  # knockd: no start command, nothing to stop either
        actions.append(RunCommand(door.name, "start", tuple(command_argv(start, src)), family, src))
        stop = door.command("stop", family)
        if stop:
            at = now + door.cmd_timeout
            self._open[key] = _Opening(at, family, tuple(command_argv(stop, src)))
            heapq.heappush(self._stops, (at, door.name, src))
            actions.append(ScheduleStop(door.name, src, at))

    def _next_sequence(self, state: _DoorState, actions: list[Action]) -> None:
        assert state.remaining
        used = state.remaining.pop(0)
        name, path = state.door.name, state.door.one_time_sequences or ""
        actions.append(UseOneTimeSequence(name, path, used.line, used.offset))
        actions.append(Log("one_time_used", f"{name}: one time sequence of line {used.line} used", name))
        state.fresh.clear()  # attempts at the old sequence can no longer complete
        state.advanced.clear()
        if state.remaining:
            state.sequence = state.remaining[0].sequence
        else:
            state.sequence, state.disabled = (), True
            actions.append(
                Log(
                    "door_disabled",
                    f"no more sequences left in the one time sequences file for door {name} --> disabling the door",
                    name,
                )
            )


def _timeout(state: _DoorState, src: str, attempt: _Attempt) -> Log:
    name = state.door.name
    return Log("sequence_timeout", f"{src}: {name}: sequence timeout (stage {attempt.stage})", name, src, attempt.stage)


def _same_address(text: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == address
    except ValueError:
        return False


# --- capture: the daemon's own nftables table ---------------------------------------------------

_TCP_FLAG_NAMES = {0x01: "fin", 0x02: "syn", 0x04: "rst", 0x08: "psh", 0x10: "ack", 0x20: "urg"}


def _flag_names(mask: int) -> list[str]:
    return [name for bit, name in _TCP_FLAG_NAMES.items() if mask & bit]


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, name: str) -> Json:
    return {"payload": {"protocol": protocol, "field": name}}


def _ports(ports: Sequence[int]) -> Any:
    return ports[0] if len(ports) == 1 else {"set": list(ports)}


def capture_commands(
    doors: Sequence[tuple[KnockdDoor, frozenset[KnockPort]]],
    *,
    group: int = DEFAULT_GROUP,
    table: str = DEFAULT_TABLE,
    interface: str | None = None,
) -> list[Json]:
    """libnftables JSON commands that (re)create the capture table in one transaction.

    Chain `knocks` (prerouting, priority -300: before conntrack and any filtering, so dropped knocks are
    seen too) logs each door's knock ports -- TCP only with the door's flags -- addressed to this host
    (or the door's target), and remembers the source in `seen_v4/6` for the longest seq_timeout. Chain
    `others` (priority -150, after conntrack) logs, once, a source of `seen` opening a connection to any
    other port, and forgets it: that is what resets a sweep. No rule has a verdict; packets go on.
    ``interface`` applies to the doors that name none.
    """
    base = {"family": "inet", "table": table}
    timeout = max((door.seq_timeout for door, _ports in doors), default=1)
    commands: list[Json] = [
        {"add": {"table": {"family": "inet", "name": table}}},
        {"delete": {"table": {"family": "inet", "name": table}}},  # a table left by a killed daemon
        {"add": {"table": {"family": "inet", "name": table, "comment": "portward knockd capture"}}},
    ]
    for family, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        commands.append(
            {
                "add": {
                    "set": {
                        **base,
                        "name": f"seen_v{family}",
                        "type": kind,
                        "flags": ["timeout"],
                        "timeout": timeout,
                        "size": SEEN_SET_SIZE,
                    }
                }
            }
        )
    commands.append(
        {
            "add": {
                "chain": {
                    **base,
                    "name": "knocks",
                    "type": "filter",
                    "hook": "prerouting",
                    "prio": -300,
                    "policy": "accept",
                }
            }
        }
    )
    commands.append(
        {
            "add": {
                "chain": {
                    **base,
                    "name": "others",
                    "type": "filter",
                    "hook": "prerouting",
                    "prio": -150,
                    "policy": "accept",
                }
            }
        }
    )
    local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    door_ports: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    targets: dict[int, set[str]] = {4: set(), 6: set()}
    for door, ports in doors:
        iface = door.interface or interface
        target = ipaddress.ip_address(door.target) if door.target else None
        if target is not None:
            targets[target.version].add(str(target))
        for family in (4, 6):
            if target is not None and target.version != family:
                continue
            ip = "ip" if family == 4 else "ip6"
            for proto in ("tcp", "udp"):
                numbers = sorted(knock.port for knock in ports if knock.proto == proto)
                if not numbers:
                    continue
                door_ports[proto].update(numbers)
                expr: list[Json] = []
                if iface:
                    expr.append(_match({"meta": {"key": "iifname"}}, iface))
                expr.append(_match({"meta": {"key": "nfproto"}}, "ipv4" if family == 4 else "ipv6"))
                expr.append(_match(_payload(ip, "daddr"), str(target)) if target is not None else local)
                expr.append(_match(_payload(proto, "dport"), _ports(numbers)))
                flags = door.tcpflags
                if proto == "tcp" and (flags.required or flags.forbidden):
                    mask = _flag_names(flags.required | flags.forbidden)
                    wanted: Any = _flag_names(flags.required) if flags.required else 0
                    expr.append(_match({"&": [_payload("tcp", "flags"), mask]}, wanted))
                expr.append({"set": {"op": "update", "elem": _payload(ip, "saddr"), "set": f"@seen_v{family}"}})
                expr.append({"log": {"group": group, "prefix": "knock"}})
                expr.append({"return": None})
                commands.append(
                    {"add": {"rule": {**base, "chain": "knocks", "expr": expr, "comment": f"door {door.name}"[:128]}}}
                )
    not_established = _match({"&": [{"ct": {"key": "state"}}, ["established", "related"]]}, 0)
    for family in (4, 6):
        ip = "ip" if family == 4 else "ip6"
        destinations = [local]
        if targets[family]:
            destinations.append(_match(_payload(ip, "daddr"), {"set": sorted(targets[family])}))
        for proto in ("tcp", "udp"):
            for destination in destinations:
                expr = [
                    _match({"meta": {"key": "nfproto"}}, "ipv4" if family == 4 else "ipv6"),
                    _match({"meta": {"key": "l4proto"}}, proto),
                    _match(_payload(ip, "saddr"), f"@seen_v{family}"),
                    not_established,
                    destination,
                ]
                if door_ports[proto]:
                    expr.append(_match(_payload(proto, "dport"), _ports(sorted(door_ports[proto])), "!="))
                expr.append({"set": {"op": "delete", "elem": _payload(ip, "saddr"), "set": f"@seen_v{family}"}})
                expr.append({"log": {"group": group, "prefix": "other"}})
                commands.append(
                    {"add": {"rule": {**base, "chain": "others", "expr": expr, "comment": "other port after a knock"}}}
                )
    return commands


# --- the driver ---------------------------------------------------------------------------------


class CommandRunner:
    """Runs commands without a shell; those of one (door, source) in order, so a stop never overtakes its
    start; each killed (with its process group) after ``timeout`` and always reaped."""

    def __init__(self, log: EventLog, *, timeout: float = COMMAND_TIMEOUT_S, concurrency: int = 32) -> None:
        self.log = log
        self.timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)
        self._last: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, action: RunCommand) -> None:
        key = (action.door, action.src)
        task = asyncio.create_task(self._after(self._last.get(key), action))
        self._last[key] = task
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if self._last.get(key) is finished:
                del self._last[key]

        task.add_done_callback(done)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _after(self, previous: asyncio.Task[None] | None, action: RunCommand) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)
        async with self._slots:
            await self._run(action)

    async def _run(self, action: RunCommand) -> None:
        fields = {"door": action.door, "src": action.src, "kind": action.kind}
        self.log.write("command", f"{action.door}: running command: {shlex.join(action.argv)}", **fields)
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *action.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout kills what it started too
            )
        except OSError as error:
            self.log.write("command_error", f"{action.door}: cannot run {action.argv[0]}: {error.strerror}", **fields)
            return
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.timeout)
        except (TimeoutError, asyncio.CancelledError) as stopped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            if isinstance(stopped, asyncio.CancelledError):
                raise
            self.log.write("command_killed", f"{action.door}: command killed after {self.timeout:g} s", **fields)
            return
        took = f"{(time.monotonic() - started) * 1000:.0f} ms"
        status = process.returncode
        text = output.decode(errors="replace").strip().replace("\n", " / ")[-500:]
        if status == 0:
            self.log.write("command_exit", f"{action.door}: command exited 0 ({took})", **fields, status=0)
        else:
            reason = f"status code ({status})" if status is not None and status > 0 else f"signal {-(status or 0)}"
            detail = f": {text}" if text else ""
            self.log.write(
                "command_failed", f"{action.door}: command returned non-zero {reason}{detail}", **fields, status=status
            )


def _mark_used(path: str, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"#")


async def serve(
    config: KnockdConfig,
    *,
    json_log: bool,
    stop: asyncio.Event | None = None,
    group: int = DEFAULT_GROUP,
    table: str = DEFAULT_TABLE,
    interface: str | None = None,
) -> None:
    """Run the doors of ``config`` until ``stop`` is set (or SIGTERM/SIGINT when in the main thread).

    Logs `ready` once the capture is live. On the way out, whatever happened: the capture table is
    deleted, stop commands of doors still open run, and every command is waited for.
    """
    from portward.kernel.nflog import NflogSocket
    from portward.kernel.nft import Nft

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    pid_file = config.options.pid_file
    one_time = {
        door.name: read_one_time_sequences(door.one_time_sequences)
        for door in config.doors
        if door.one_time_sequences is not None
    }
    tracker = KnockTracker(config.doors, loop.time, one_time=one_time)
    watched = tracker.watched_ports()
    commands = capture_commands(
        [(door, watched[door.name]) for door in config.doors],
        group=group,
        table=table,
        interface=interface or config.options.interface,
    )
    nft = Nft()
    options = config.options
    log = EventLog(json_lines=json_log, log_file=options.log_file, use_syslog=options.use_syslog, ident="knockd")
    runner = CommandRunner(log)
    try:
        sock = NflogSocket(group)
    except BaseException:
        log.close()
        raise
    installed = False
    reported_drops = 0

    def handle(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Log):
                log.write(action.event, action.message, door=action.door, src=action.src, stage=action.stage)
            elif isinstance(action, RunCommand):
                runner.submit(action)
            elif isinstance(action, ScheduleStop):
                loop.call_at(action.at, lambda: handle(tracker.due()))
            else:
                try:
                    _mark_used(action.path, action.offset)
                except OSError as error:
                    log.write(
                        "one_time_error",
                        f"{action.door}: cannot mark {action.path} line {action.line} used: {error.strerror}",
                        door=action.door,
                    )

    def readable() -> None:
        nonlocal reported_drops
        for event in sock.read_events():
            handle(tracker.feed(event))
        if sock.dropped != reported_drops:
            log.write(
                "drops",
                f"lost {sock.dropped - reported_drops} logged packets (receive queue full)",
                dropped=sock.dropped,
            )
            reported_drops = sock.dropped

    release_signals = catch_stop_signals(loop, stop)
    try:
        if pid_file:
            with open(pid_file, "w", encoding="ascii") as handle_file:
                handle_file.write(f"{os.getpid()}\n")
        nft.run(commands)
        installed = True
        loop.add_reader(sock.fileno(), readable)
        doors = ", ".join(door.name for door in config.doors)
        log.write("ready", f"ready: doors {doors} (NFLOG group {group}, table inet {table})", group=group)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(sock.fileno())
        sock.close()
        try:
            if installed:
                nft.run([{"delete": {"table": {"family": "inet", "name": table}}}])
        except PortwardError as error:
            log.write("error", f"cannot delete table inet {table}: {error}")
        finally:
            handle(tracker.shutdown())
            await runner.drain()
            release_signals()
            if pid_file:
                with contextlib.suppress(OSError):
                    os.unlink(pid_file)
            log.write("shutdown", "shutting down")
            log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="portward knockd", description="knockd-compatible door daemon: NFLOG capture, no shell, no polling."
    )
    parser.add_argument("-c", "--config", default="/etc/knockd.conf", metavar="FILE", help="knockd.conf to read")
    parser.add_argument("-i", "--interface", help="listen on this interface only (overrides [options] Interface)")
    parser.add_argument("--json-log", action="store_true", help="one JSON object per line instead of knockd's text")
    parser.add_argument("--group", type=int, default=DEFAULT_GROUP, help=f"NFLOG group (default {DEFAULT_GROUP})")
    parser.add_argument(
        "--table", default=DEFAULT_TABLE, help=f"nftables table (inet) to own (default {DEFAULT_TABLE})"
    )
    args = parser.parse_args(argv)

    async def start() -> None:
        config = read_knockd_conf(args.config)
        await serve(config, json_log=args.json_log, group=args.group, table=args.table, interface=args.interface)

    return run_daemon("knockd", start)


if __name__ == "__main__":
    sys.exit(main())
