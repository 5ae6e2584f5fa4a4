"""`portward spad -p POLICY`: single packet authorization for the policy's `[[spa]]` doors, fwknop's protocol.

The applied ruleset does the network part (see `Compiler._spa_doors`): packets to a door's SPA port from a
sender its `from` admits are copied to NFLOG group 7603 and dropped, so the port never answers anyone and
other senders never reach user space.  spad reads that group (v4 and v6, every door, one netlink socket),
checks each packet the way fwknopd does, in fwknopd's order:

    size bounds -> HMAC (exact string, constant time) -> decrypt -> digest -> timestamp (±120 s)
    -> replay cache -> access (`open`, REQUIRE_SOURCE_ADDRESS) -> grant

and grants by adding (address . proto . port) elements with a timeout to the door's set through in-process
libnftables.  The kernel deletes them when the timeout runs out, whether spad is alive or not; nothing
has to be "closed".  A packet that fails costs no memory: the replay cache only records packets whose
HMAC and encryption were valid (so garbage cannot fill it) and forgets them once their timestamp is too
old to pass anyway.  It is kept in the state directory, so a restart does not reopen replays.

`SpaServer` is the sans-IO core (payloads in, outcomes out); `serve()` drives it with asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portward.daemons import fko
from portward.daemons.eventlog import EventLog, catch_stop_signals, run_daemon
from portward.errors import InputError, PortwardError
from portward.policy.addresses import PortRange, merge_spans, parse_port_spec

if TYPE_CHECKING:
    from portward.policy.toml import LoadedPolicy

__all__ = ["Door", "Grant", "Outcome", "ReplayCache", "SpaServer", "load_doors", "main", "serve"]

Json = dict[str, Any]
TIME_WINDOW_S = fko.MAX_CLOCK_SKEW  # fwknopd's MAX_SPA_PACKET_AGE
NFLOG_COPY = 1600  # an IPv6 header, a UDP header and fwknop's largest payload (1500)
REPLAY_FILE = "spa-replay"
REJECT_LINES_PER_S = 20  # beyond this, rejections are counted and summed up once a second
NFLOG_RCVBUF = 2 << 20  # ≈1,200 queued SPA packets: under a flood a valid one waits ≈0.1 s, not seconds


@dataclass(frozen=True)
class Door:
    """A `[[spa]]` door ready to serve: keys decoded, ports and sources parsed."""

    name: str
    proto: str  # where SPA packets arrive
    port: int
    open: tuple[PortRange, ...]
    senders: dict[int, list[tuple[int, int]]] | None  # None: anyone (kernel already filtered by `from`)
    key: bytes
    hmac_key: bytes
    open_for: int
    max_open_for: int
    require_source_address: bool

    def admits_sender(self, family: int, address: int) -> bool:
        if self.senders is None:
            return True
        return any(first <= address <= last for first, last in self.senders.get(family, ()))

    def allows(self, proto: str, port: int) -> bool:
        return any(spec.proto == proto and spec.first <= port <= spec.last for spec in self.open)


@dataclass(frozen=True)
class Grant:
    door: str
    family: int
    address: str
    access: tuple[tuple[str, int], ...]
    timeout: int


@dataclass(frozen=True)
class Outcome:
    verdict: str  # "granted" or "rejected"
    reason: str  # "ok" or fko's/our rejection word: size, hmac, decrypt, digest, stale, replay, access, ...
    source: str
    door: str | None = None
    grant: Grant | None = None
    detail: str = ""


def _key(inline: str | None, path: str | None, base_dir: Path, name: str, field_name: str) -> bytes:
    from portward.daemons.spa_client import load_key

    file = None if path is None else (Path(path) if os.path.isabs(path) else base_dir / path)
    return load_key(inline, file, name, missing=f"give {field_name}_base64 or {field_name}_file")


def load_doors(loaded: LoadedPolicy) -> list[Door]:
    """The policy's `[[spa]]` doors with their keys read (paths relative to the policy file)."""
    policy = loaded.policy
    base_dir = Path(loaded.path).resolve().parent
    doors = []
    for door in policy.spa:
        spec = parse_port_spec(door.port)
        is_any, nets = policy.resolve(door.from_)
        senders: dict[int, list[tuple[int, int]]] | None = None
        if not is_any:
            senders = {
                family: merge_spans([(net.first, net.last) for net in nets if net.family == family])
                for family in (4, 6)
            }
        doors.append(
            Door(
                name=door.name,
                proto=spec.proto,
                port=spec.first,
                open=tuple(parse_port_spec(item) for item in door.open),
                senders=senders,
                key=_key(door.key_base64, door.key_file, base_dir, "KEY_BASE64", "key"),
                hmac_key=_key(door.hmac_key_base64, door.hmac_key_file, base_dir, "HMAC_KEY_BASE64", "hmac_key"),
                open_for=door.open_for,
                max_open_for=door.max_open_for,
                require_source_address=door.require_source_address,
            )
        )
    return doors


class ReplayCache:
    """SHA-256 digests of accepted packets, until their timestamp could no longer pass the age check.

    With a path, every new digest is appended to the file (one `HEX EXPIRY` line, unbuffered: a killed spad
    loses nothing) and the file is read back and compacted at start."""

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._seen: dict[bytes, float] = {}
        self._fd: int | None = None
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        now = self.clock()
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(encoding="ascii", errors="replace").splitlines():
                digest, _, expiry = line.partition(" ")
                with contextlib.suppress(ValueError):
                    if float(expiry) > now:
                        self._seen[bytes.fromhex(digest)] = float(expiry)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".new")
        temporary.write_text("".join(f"{d.hex()} {e:.0f}\n" for d, e in self._seen.items()), encoding="ascii")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, digest: bytes) -> bool:
        expiry = self._seen.get(digest)
        return expiry is not None and expiry > self.clock()

    def add(self, digest: bytes, expiry: float) -> None:
        now = self.clock()
        if len(self._seen) >= 1024 and len(self._seen) % 1024 == 0:
            self._seen = {d: e for d, e in self._seen.items() if e > now}
        self._seen[digest] = expiry
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, f"{digest.hex()} {expiry:.0f}\n".encode("ascii"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class SpaServer:
    """fwknopd's checks for one packet, no IO: `feed()` returns what to do with it."""

    doors: list[Door]
    replay: ReplayCache = field(default_factory=ReplayCache)
    clock: Callable[[], float] = time.time
    _by_port: dict[tuple[str, int], list[Door]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        for door in self.doors:
            self._by_port.setdefault((door.proto, door.port), []).append(door)

    @property
    def ports(self) -> list[tuple[str, int]]:
        return sorted(self._by_port)

    def feed(self, source: str, family: int, proto: str, port: int, payload: bytes) -> Outcome:
        candidates = self._by_port.get((proto, port))
        if not candidates:
            return Outcome("rejected", "port", source, detail=f"no door on {port}/{proto}")
        if any(door.senders is not None for door in candidates):
            packed = socket.inet_pton(socket.AF_INET6 if family == 6 else socket.AF_INET, source)
            address = int.from_bytes(packed, "big")
            candidates = [door for door in candidates if door.admits_sender(family, address)]
            if not candidates:
                return Outcome("rejected", "from", source, detail="the sender is outside every door's `from`")
        if not fko.MIN_PAYLOAD <= len(payload) <= fko.MAX_PAYLOAD:
            return Outcome("rejected", "size", source, detail=f"{len(payload)} bytes")
        failure: Outcome | None = None
        for door in candidates:
            try:
                message = fko.decode(payload, door.key, door.hmac_key)
            except fko.Rejected as rejected:
                if rejected.reason == "hmac" and failure is None:
                    failure = Outcome("rejected", "hmac", source)
                elif rejected.reason != "hmac":  # this door's HMAC key matched: its verdict is the answer
                    return Outcome("rejected", rejected.reason, source, door.name, detail=str(rejected))
                continue
            return self._checked(door, source, family, payload, message)
        assert failure is not None
        return failure

    def _checked(self, door: Door, source: str, family: int, payload: bytes, message: fko.SpaMessage) -> Outcome:
        now = self.clock()
        age = now - message.timestamp
        if abs(age) > TIME_WINDOW_S:
            return Outcome("rejected", "stale", source, door.name, detail=f"timestamp {age:+.0f} s from ours")
        digest = fko.replay_digest(payload)
        if digest in self.replay:
            return Outcome("rejected", "replay", source, door.name, detail="this packet was used before")
        # valid and new: remember it before anything else can fail, so it cannot be tried twice
        self.replay.add(digest, max(now, message.timestamp) + 2 * TIME_WINDOW_S)
        allow = message.allow_ip
        if allow in ("0.0.0.0", "::"):
            if door.require_source_address:
                return Outcome("rejected", "source", source, door.name, detail="the door requires an address (not -s)")
            allow = source
        try:
            granted = ipaddress.ip_address(allow)
        except ValueError:
            return Outcome("rejected", "format", source, door.name, detail=f"allow address {allow!r}")
        refused = [f"{proto}/{port}" for proto, port in message.access if not door.allows(proto, port)]
        if refused or not message.access:
            return Outcome("rejected", "access", source, door.name, detail=f"not in `open`: {', '.join(refused)}")
        timeout = door.open_for
        if message.client_timeout:
            timeout = min(message.client_timeout, door.max_open_for)
        grant = Grant(door.name, granted.version, str(granted), tuple(message.access), timeout)
        return Outcome("granted", "ok", source, door.name, grant)


def grant(nft: Any, granted: Grant) -> None:
    """Put the grant in the kernel: `create` (one small batch) when the elements are new, else refresh them."""
    commands = grant_commands(granted)
    try:
        nft.run([{"create": commands[0]["add"]}])
    except PortwardError:  # some element exists already: refresh its timeout (or report the real error)
        nft.run(commands)


def grant_commands(grant: Grant) -> list[Json]:
    """Add the grant's elements, refreshing their timeout if they exist (add first, so delete cannot fail)."""
    from portward.dialects.nft import FAMILY, TABLE, spa_grant_set

    element = {
        "family": FAMILY,
        "table": TABLE,
        "name": spa_grant_set(grant.door, grant.family),
        "elem": [
            {"elem": {"val": {"concat": [grant.address, proto, port]}, "timeout": grant.timeout}}
            for proto, port in grant.access
        ],
    }
    return [{"add": {"element": element}}, {"delete": {"element": element}}, {"add": {"element": element}}]


def _describe(outcome: Outcome) -> tuple[str, Json]:
    fields: Json = {"source": outcome.source, "door": outcome.door, "verdict": outcome.verdict,
                    "reason": outcome.reason}
    door = f"{outcome.door}: " if outcome.door else ""
    grant = outcome.grant
    if grant is not None:
        access = ", ".join(f"{proto}/{port}" for proto, port in grant.access)
        fields.update(allow=grant.address, access=[f"{p}/{n}" for p, n in grant.access], timeout=grant.timeout)
        return f"{outcome.source}: {door}SPA granted {access} to {grant.address} for {grant.timeout} s", fields
    detail = f" ({outcome.detail})" if outcome.detail else ""
    if outcome.detail:
        fields["detail"] = outcome.detail
    return f"{outcome.source}: {door}SPA rejected: {outcome.reason}{detail}", fields


class _RejectLog:
    """At most REJECT_LINES_PER_S rejection lines a second; the rest become one summary line per second."""

    def __init__(self, log: EventLog, clock: Callable[[], float]) -> None:
        self.log = log
        self.clock = clock
        self.window = 0.0
        self.lines = 0
        self.suppressed: Counter[str] = Counter()

    def write(self, outcome: Outcome) -> None:
        now = self.clock()
        if now - self.window >= 1.0:
            self.flush()
            self.window, self.lines = now, 0
        if self.lines < REJECT_LINES_PER_S:
            self.lines += 1
            message, fields = _describe(outcome)
            self.log.write("rejected", message, **fields)
        else:
            self.suppressed[outcome.reason] += 1

    def flush(self) -> None:
        if self.suppressed:
            total = sum(self.suppressed.values())
            reasons = ", ".join(f"{reason} {count}" for reason, count in self.suppressed.most_common())
            self.log.write("suppressed", f"{total} more packets rejected ({reasons})", count=total,
                           reasons=dict(self.suppressed))
            self.suppressed.clear()


async def serve(
    doors: list[Door],
    *,
    state_dir: Path | None,
    json_log: bool,
    stop: asyncio.Event | None = None,
    log_file: str | None = None,
    group: int | None = None,
) -> None:
    """Serve the doors until ``stop`` is set (or SIGTERM/SIGINT in the main thread). Logs `ready` first."""
    from portward.dialects.nft import NFLOG_GROUP_SPA, TABLE, spa_grant_set
    from portward.kernel.nflog import NflogSocket
    from portward.kernel.nft import Nft

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    nft = Nft()
    missing = [
        spa_grant_set(door.name, family)
        for door in doors
        for family in (4, 6)
        if not _set_exists(nft, spa_grant_set(door.name, family))
    ]
    if missing:
        raise PortwardError(
            f"the applied ruleset has no set {missing[0]} (table inet {TABLE}) — apply the policy with its "
            "[[spa]] doors first: portward apply -p POLICY"
        )
    replay = ReplayCache(state_dir / REPLAY_FILE if state_dir else None)
    server = SpaServer(doors, replay)
    log = EventLog(json_lines=json_log, log_file=log_file, ident="portward-spad")
    rejections = _RejectLog(log, loop.time)
    number = NFLOG_GROUP_SPA if group is None else group
    try:
        sock = NflogSocket(number, copy_range=NFLOG_COPY, rcvbuf=NFLOG_RCVBUF)
    except BaseException:
        log.close()
        replay.close()
        raise
    reported_drops = 0

    def readable() -> None:
        nonlocal reported_drops
        # small batches, so a flood's backlog is never all in memory at once, and a bounded number of them,
        # so the loop still gets to its timers and signals under a flood
        for _ in range(16):
            events = sock.read_events(limit=256)
            if not events:
                break
            for event in events:
                handle(event)
        if sock.dropped != reported_drops:
            log.write("drops", f"lost {sock.dropped - reported_drops} SPA packets (receive queue full)",
                      dropped=sock.dropped)
            reported_drops = sock.dropped

    def handle(event: Any) -> None:
        if not event.data:
            return
        outcome = server.feed(event.src, event.family, event.proto, event.dport, event.data)
        if outcome.grant is None:
            rejections.write(outcome)
            return
        try:
            grant(nft, outcome.grant)
        except PortwardError as error:
            log.write("error", f"{outcome.source}: {outcome.door}: cannot grant: {error}", source=outcome.source,
                      door=outcome.door, verdict="error", reason=str(error))
            return
        message, fields = _describe(outcome)
        log.write("granted", message, **fields)

    def tick() -> None:
        rejections.flush()
        if not stop.is_set():
            loop.call_later(1.0, tick)

    release_signals = catch_stop_signals(loop, stop)
    try:
        loop.add_reader(sock.fileno(), readable)
        loop.call_later(1.0, tick)
        ports = ", ".join(f"{port}/{proto}" for proto, port in server.ports)
        names = ", ".join(door.name for door in doors)
        log.write("ready", f"ready: doors {names} on {ports} (NFLOG group {number}; {len(replay)} replay digests)",
                  group=number)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(sock.fileno())
        sock.close()
        rejections.flush()
        release_signals()
        replay.close()
        log.write("shutdown", "shutting down (grants stay until their timeouts: the kernel expires them)")
        log.close()


def _set_exists(nft: Any, name: str) -> bool:
    from portward.dialects.nft import FAMILY, TABLE

    try:
        nft.run([{"list": {"set": {"family": FAMILY, "table": TABLE, "name": name}}}])
    except PortwardError:
        return False
    return True


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portward spad", description="SPA daemon for a policy's [[spa]] doors.")
    parser.add_argument("-p", "--policy", required=True, metavar="FILE")
    parser.add_argument("--state-dir", metavar="DIR", help="where the replay cache lives")
    parser.add_argument("--json-log", action="store_true", help="one JSON object per line")
    parser.add_argument("--log-file", metavar="FILE")
    args = parser.parse_args(list(argv) if argv is not None else None)
    from portward.ops.state import state_dir_from
    from portward.policy.toml import load_policy


    async def start() -> None:
        loaded = load_policy(args.policy)
        doors = load_doors(loaded)
        if not doors:
            raise InputError(f"{args.policy}: no [[spa]] doors — add one (see `portward import --from fwknop`)")
        await serve(doors, state_dir=state_dir_from(args.state_dir), json_log=args.json_log, log_file=args.log_file)

    return run_daemon("spad", start)

