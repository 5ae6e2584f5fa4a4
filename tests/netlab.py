"""Network-namespace lab for portward's tests.  Never touches the host's network.

Topology (one ``Lab``; namespace names are ``pw-<pid>-<n>-<role>``)::

    lan  eth-srv 198.18.0.2/24 2001:db8:0:1::2/64 ── eth-lan 198.18.0.1/24 2001:db8:0:1::1/64  srv
    wan  eth-srv 198.19.0.2/24 2001:db8:0:2::2/64 ── eth-wan 198.19.0.1/24 2001:db8:0:2::1/64  srv

``srv`` is the host under test and does not forward; ``lan``/``wan`` route by
default through ``srv`` so replies find their way back.  Everything a lab starts
is killed and reaped, and its namespaces deleted, on ``teardown()`` / leaving the
``with`` block — exceptions and KeyboardInterrupt included.  ``cleanup_run()`` is
the session-level backstop: it removes every namespace this process created.

Usage (pytest: the ``lab`` / ``lab_module`` fixtures in conftest.py do the ``with``)::

    with Lab() as lab:
        lab.listen("srv", ["22/tcp", "53/udp"])
        lab.nft("srv", "-f", "-", stdin=ruleset_text)
        assert lab.probe("lan", SRV_LAN4, ["22/tcp", "23/tcp"]) == {"22/tcp": "open", "23/tcp": "closed"}

``ns`` arguments are roles ("srv", "lan", "wan"); ``lab.netns(role)`` gives the real
name for ``ip netns exec`` / ``nsenter``.  Probe states have nmap's meaning (see
helpers/prober.py); the lab turns off ICMP rate limiting so big probes stay exact.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Literal, Self

__all__ = [
    "LAN4",
    "LAN6",
    "NS_ROLES",
    "SRV_LAN4",
    "SRV_LAN6",
    "SRV_WAN4",
    "SRV_WAN6",
    "WAN4",
    "WAN6",
    "Lab",
    "LabError",
    "availability",
    "cleanup_run",
    "cleanup_stale",
    "install_sigterm_cleanup",
]

# --- addresses (198.18.0.0/15 and 2001:db8::/32 only) -----------------------------------------
SRV_LAN4, SRV_LAN6 = "198.18.0.1", "2001:db8:0:1::1"
LAN4, LAN6 = "198.18.0.2", "2001:db8:0:1::2"
SRV_WAN4, SRV_WAN6 = "198.19.0.1", "2001:db8:0:2::1"
WAN4, WAN6 = "198.19.0.2", "2001:db8:0:2::2"

Role = Literal["srv", "lan", "wan"]
NS_ROLES: tuple[Role, ...] = ("srv", "lan", "wan")

HELPERS = Path(__file__).resolve().parent / "helpers"
LISTENER = HELPERS / "listener.py"
PROBER = HELPERS / "prober.py"
# -I: ignore PYTHON* env and user site; -S: the helpers need the stdlib only (faster start-up).
HELPER_PYTHON = [sys.executable, "-I", "-S"]

PREFIX = "pw-"
_NAME_RE = re.compile(r"^pw-(\d+)-(\d+)-(srv|lan|wan)$")
_counter = itertools.count(1)
_lock = threading.RLock()  # re-entrant: cleanup_run() may run from a signal handler
_created: set[str] = set()  # namespaces this process asked the kernel for, deleted or not

# Per-namespace sysctls: no forwarding, no DAD, no ICMP rate limiting (otherwise a
# probe of more than a handful of closed/rejected ports turns some into "filtered").
_SYSCTLS = (
    "net.ipv4.ip_forward=0",
    "net.ipv6.conf.all.forwarding=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.accept_ra=0",
    "net.ipv6.conf.default.accept_ra=0",
    "net.ipv4.icmp_ratelimit=0",
    "net.ipv4.icmp_ratemask=0",
    "net.ipv6.icmp.ratelimit=0",
    "net.ipv6.icmp.ratemask=",
)


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


# --- small process helpers ---------------------------------------------------------------------
def _ip_batch(lines: Iterable[str], netns: str | None = None) -> None:
    cmd = ["ip", "-n", netns, "-batch", "-"] if netns else ["ip", "-batch", "-"]
    text = "".join(f"{line}\n" for line in lines)
    cp = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30, check=False)
    if cp.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({cp.returncode}): {cp.stderr.strip()}\n--- batch ---\n{text}")


def _list_netns() -> list[str]:
    cp = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=False)
    if cp.returncode != 0:
        return []
    # "name" or "name (id: 3)"
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def _kill_namespaces(names: Sequence[str]) -> list[str]:
    """SIGKILL every process in ``names`` and delete them.  Returns what could not be deleted."""
    if not names:
        return []
    existing = set(_list_netns())
    names = [n for n in names if n in existing]
    if not names:
        return []
    cp = subprocess.run(
        ["ip", "-batch", "-"],
        input="".join(f"netns pids {n}\n" for n in names),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    pids = {int(tok) for tok in cp.stdout.split() if tok.isdigit()}
    pids.discard(os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    # -force: carry on after a failed line so one bad name does not keep the others alive.
    subprocess.run(
        ["ip", "-force", "-batch", "-"],
        input="".join(f"netns del {n}\n" for n in names),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    left = set(_list_netns())
    return [n for n in names if n in left]


def cleanup_run() -> list[str]:
    """Session-level backstop: delete every namespace created by *this* process.

    Matches both the names recorded at creation time and any ``pw-<our pid>-*``
    namespace still listed.  Safe to call repeatedly; a no-op when this process
    never built a lab.  Returns the names it removed.
    """
    with _lock:
        if not _created:
            return []
        mine = f"{PREFIX}{os.getpid()}-"
        names = sorted(set(_created) | {n for n in _list_netns() if n.startswith(mine)})
        left = _kill_namespaces(names)
        removed = [n for n in names if n not in left]
        _created.difference_update(removed)
        return removed


def cleanup_stale() -> list[str]:
    """Delete lab namespaces left behind by *dead* processes (e.g. a SIGKILLed test run).

    Only names matching ``pw-<pid>-<n>-(srv|lan|wan)`` whose pid no longer exists
    are touched.  Returns the names it removed.
    """
    stale = []
    for name in _list_netns():
        m = _NAME_RE.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stale.append(name)
        except PermissionError:
            pass
    left = _kill_namespaces(stale)
    return [n for n in stale if n not in left]


atexit.register(cleanup_run)


def install_sigterm_cleanup() -> bool:
    """On SIGTERM (e.g. a cancelled CI job) run ``cleanup_run()``, then die of SIGTERM as before.

    Only installed when SIGTERM still has its default action (returns whether it was).
    Must be called from the main thread.
    """
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False

    def on_term(signum: int, frame: FrameType | None) -> None:
        try:
            cleanup_run()
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    return True


def _terminate(procs: Sequence[subprocess.Popen[Any]], grace: float = 1.0) -> None:
    """SIGTERM each live process group, wait up to ``grace`` s in all, SIGKILL the rest; reap all."""
    live = [p for p in procs if p.poll() is None]  # not reaped yet, so the pid cannot be reused
    for proc in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in live:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for proc in procs:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


_availability: tuple[bool, str] | None = None


def availability() -> tuple[bool, str]:
    """(True, "") when labs can be built here, else (False, reason).  Cached."""
    global _availability
    if _availability is None:
        _availability = _check_availability()
    return _availability


def _check_availability() -> tuple[bool, str]:
    if not sys.platform.startswith("linux"):
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, "network-namespace tests need root (run as root or in CI)"
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None:
            return False, f"{tool!r} not found in PATH"
    try:
        cp = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"'ip netns' unavailable: {exc}"
    if cp.returncode != 0:
        return False, f"'ip netns' unavailable: {cp.stderr.strip()}"
    return True, ""


# --- the lab -----------------------------------------------------------------------------------
class Lab:
    """Three namespaces (srv, lan, wan) wired as in the module docstring.

    Construct, then ``setup()`` (or use as a context manager, which also tears down);
    ``teardown()`` is idempotent and never raises for cleanup trouble it can get past.
    """

    def __init__(self) -> None:
        n = next(_counter)
        self.names: dict[str, str] = {role: f"{PREFIX}{os.getpid()}-{n}-{role}" for role in NS_ROLES}
        self._procs: list[subprocess.Popen[Any]] = []
        self._up = False
        self.setup_seconds = 0.0
        self.teardown_seconds = 0.0

    # -- lifecycle --
    def __enter__(self) -> Self:
        self.setup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def setup(self) -> None:
        """Create and wire the namespaces.  On any failure (or interrupt) it tears down and re-raises."""
        if self._up:
            raise LabError("lab already set up")
        ok, reason = availability()
        if not ok:
            raise LabError(reason)
        t0 = time.monotonic()
        self._up = True
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        self.setup_seconds = time.monotonic() - t0

    def _build(self) -> None:
        srv, lan, wan = (self.names[r] for r in NS_ROLES)
        with _lock:
            _created.update(self.names.values())
        _ip_batch(f"netns add {name}" for name in self.names.values())
        for name in self.names.values():
            self._sysctl(name)
        _ip_batch(
            [
                f"link add eth-lan type veth peer name eth-srv netns {lan}",
                f"link add eth-wan type veth peer name eth-srv netns {wan}",
                "link set lo up",
                "link set eth-lan up",
                "link set eth-wan up",
                f"addr add {SRV_LAN4}/24 dev eth-lan",
                f"addr add {SRV_LAN6}/64 dev eth-lan nodad",
                f"addr add {SRV_WAN4}/24 dev eth-wan",
                f"addr add {SRV_WAN6}/64 dev eth-wan nodad",
            ],
            netns=srv,
        )
        for name, (me4, me6, gw4, gw6) in (
            (lan, (LAN4, LAN6, SRV_LAN4, SRV_LAN6)),
            (wan, (WAN4, WAN6, SRV_WAN4, SRV_WAN6)),
        ):
            _ip_batch(
                [
                    "link set lo up",
                    "link set eth-srv up",
                    f"addr add {me4}/24 dev eth-srv",
                    f"addr add {me6}/64 dev eth-srv nodad",
                    f"route add default via {gw4} dev eth-srv",
                    f"route add default via {gw6} dev eth-srv",
                ],
                netns=name,
            )

    def _sysctl(self, netns: str) -> None:
        cp = subprocess.run(
            ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *_SYSCTLS],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if cp.returncode != 0:
            raise LabError(f"sysctl in {netns} failed: {cp.stderr.strip()}")

    def teardown(self) -> None:
        """Kill and reap everything started here, then delete the namespaces.  Idempotent.

        Tracked processes get SIGTERM (process group), 1 s of grace, then SIGKILL; every
        process still inside the namespaces is SIGKILLed before they are deleted.
        """
        t0 = time.monotonic()
        procs, self._procs = self._procs, []
        try:
            _terminate(procs)
        finally:
            if self._up:
                left = _kill_namespaces(list(self.names.values()))
                with _lock:
                    _created.difference_update(n for n in self.names.values() if n not in left)
                self._up = False
                self.teardown_seconds = time.monotonic() - t0
                if left:
                    raise LabError(f"could not delete namespaces {left}")

    # -- running things --
    def netns(self, ns: str) -> str:
        """Real namespace name for a role ("srv", "lan", "wan"); full names pass through."""
        if ns in self.names:
            return self.names[ns]
        if ns in self.names.values():
            return ns
        raise LabError(f"unknown namespace {ns!r}; expected one of {list(self.names)}")

    def _argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        if not self._up:
            raise LabError("lab is not set up")
        return ["ip", "netns", "exec", self.netns(ns), *map(str, argv)]

    def run(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """``subprocess.run`` inside ``ns``.  Defaults: capture_output, text, timeout=60, check=False."""
        kw.setdefault("text", True)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("timeout", 60)
        kw.setdefault("check", False)
        cp: subprocess.CompletedProcess[str] = subprocess.run(self._argv(ns, argv), **kw)
        return cp

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a daemon inside ``ns`` (own session, stdin=DEVNULL unless given).

        The lab SIGTERMs (then SIGKILLs) its process group and reaps it on teardown.
        """
        kw["start_new_session"] = True
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(ns, argv), **kw)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        """Stop one process started by ``popen``/``listen`` now, instead of at teardown."""
        if proc in self._procs:
            self._procs.remove(proc)
        _terminate([proc])

    def listen(self, ns: str, ports: Sequence[str], ready_timeout: float = 10.0) -> subprocess.Popen[bytes]:
        """Start ONE listener in ``ns`` for all ``ports`` and return once every socket is bound.

        ``ports`` items: "22/tcp", "53/udp" (both 0.0.0.0 and ::), or a specific address:
        "127.0.0.1:8080/tcp", "[::1]:8080/udp", "198.18.0.1:25/tcp".  TCP writes b"ok"
        and closes; UDP echoes.  Raises LabError (with the helper's stderr) if it fails.
        """
        if not ports:
            raise LabError("listen() needs at least one port")
        with tempfile.TemporaryFile() as errf:  # never blocks; read back if start-up fails
            proc: subprocess.Popen[bytes] = self.popen(
                ns,
                [*HELPER_PYTHON, str(LISTENER), *ports],
                stdin=subprocess.PIPE,  # EOF (our death) makes the listener exit
                stdout=subprocess.PIPE,
                stderr=errf,
            )
            self._await_ready(proc, ns, ports, ready_timeout, errf)
        return proc

    def _await_ready(
        self,
        proc: subprocess.Popen[bytes],
        ns: str,
        ports: Sequence[str],
        ready_timeout: float,
        errf: IO[bytes],
    ) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + ready_timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop(proc)
                raise LabError(f"listener in {ns} for {list(ports)} not ready after {ready_timeout}s")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
        if buf.strip() != b"ready":
            self.stop(proc)
            errf.seek(0)
            err = errf.read().decode(errors="replace").strip()
            raise LabError(f"listener in {ns} for {list(ports)} failed (rc={proc.returncode}): {err or buf!r}")

    def probe(self, ns: str, target: str, ports: Sequence[str], timeout: float = 0.5) -> dict[str, str]:
        """Probe ``ports`` ("22/tcp", "53/udp") on ``target`` (v4 or v6) from ``ns``, concurrently.

        Returns {"22/tcp": "open"|"closed"|"filtered", ...} with nmap's meaning (see prober.py).
        """
        return self.probe_many(ns, [target], ports, timeout)[target]

    def probe_many(
        self, ns: str, targets: Sequence[str], ports: Sequence[str], timeout: float = 0.5
    ) -> dict[str, dict[str, str]]:
        """``probe`` for several targets in ONE prober run: {target: {"22/tcp": state}}."""
        detail = self.probe_many_detail(ns, targets, ports, timeout)
        return {t: {p: state for p, (state, _) in res.items()} for t, res in detail.items()}

    def probe_detail(
        self, ns: str, target: str, ports: Sequence[str], timeout: float = 0.5
    ) -> dict[str, tuple[str, str]]:
        """Like ``probe`` but each value is (state, reason), e.g. ("filtered", "timeout")."""
        return self.probe_many_detail(ns, [target], ports, timeout)[target]

    def probe_many_detail(
        self, ns: str, targets: Sequence[str], ports: Sequence[str], timeout: float = 0.5
    ) -> dict[str, dict[str, tuple[str, str]]]:
        """``probe_many`` with (state, reason) values; reasons: connected, reply, timeout, E*."""
        if not targets:
            return {}
        if not ports:
            return {t: {} for t in targets}
        clean = [t.strip().strip("[]") for t in targets]
        cp = self.run(
            ns,
            [*HELPER_PYTHON, str(PROBER), "--timeout", str(timeout), ",".join(clean), *ports],
            timeout=timeout + 30,
        )
        if cp.returncode != 0:
            raise LabError(f"prober in {ns} -> {list(targets)} failed ({cp.returncode}): {cp.stderr.strip()}")
        raw: dict[str, dict[str, list[str]]] = json.loads(cp.stdout)
        return {t: {p: (v[0], v[1]) for p, v in raw[c].items()} for t, c in zip(targets, clean, strict=True)}

    # -- nftables --
    def nft(self, ns: str, *args: str, stdin: str | None = None) -> str:
        """Run ``nft *args`` in ``ns`` and return stdout; raises LabError with stderr on failure.

        ``lab.nft("srv", "add table inet t")`` and ``lab.nft("srv", "add", "table", "inet", "t")``
        are equivalent; ``lab.nft("srv", "-f", "-", stdin=ruleset_text)`` loads a file.
        """
        cp = self.run(ns, ["nft", *args], input=stdin)
        if cp.returncode != 0:
            raise LabError(f"nft {' '.join(args)} in {ns} failed ({cp.returncode}): {cp.stderr.strip()}")
        return cp.stdout

    def ruleset(self, ns: str = "srv") -> dict[str, Any]:
        """``nft -j list ruleset`` in ``ns``, parsed."""
        data: dict[str, Any] = json.loads(self.nft(ns, "-j", "list", "ruleset"))
        return data

    def flush_ruleset(self, ns: str = "srv") -> None:
        """``nft flush ruleset`` in ``ns`` (handy between tests sharing ``lab_module``)."""
        self.nft(ns, "flush", "ruleset")
