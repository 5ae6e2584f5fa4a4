"""Port scanner: an asyncio TCP connect scanner (nmap ``-sT`` semantics) and a small UDP scanner.

States and reasons follow nmap:

* TCP: handshake completes → ``open`` (``syn-ack``); RST → ``closed`` (``conn-refused``); ICMP port
  unreachable → ``closed`` (``port-unreach``, what connect() reports as ECONNREFUSED); other ICMP
  unreachables (host, net, admin-prohibited, …) → ``filtered``; no answer after the retransmissions
  → ``filtered`` (``no-response``).
* UDP: a datagram back → ``open`` (``udp-response``); ICMP port unreachable → ``closed``; other ICMP
  unreachables → ``filtered``; silence after the retries → ``open|filtered`` (``no-response``).

Why a full-range scan of a default-drop host (nearly every port silent, so every port is probed
twice) takes seconds, not nmap's minute and a half:

* every probe is one non-blocking ``connect()``; the sockets sit in one private epoll whose
  descriptor is watched by the asyncio loop (``loop.add_reader``), so there is no asyncio object
  per probe — ``loop.add_writer`` per socket measured ~50 % more CPU per probe, and CPU is the limit;
* a socket whose probe timed out (or was refused) is not closed but disconnected
  (``connect(AF_UNSPEC)``) and reused for the next port: one system call instead of socket,
  setsockopt, epoll_ctl and close — about a third of the run;
* timeouts are handled in bulk from a FIFO of send times, not one timer per port;
* the number of probes in flight follows a congestion window that also grows on silence — the
  normal answer of a default-drop host — and is halved on the only loss signal a connect scan can
  see: a retransmitted probe that gets the answer the first one did not.

Standard library only (ctypes for the disconnect, with a close-and-reopen fallback); Linux only
(IP_RECVERR, epoll).
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import functools
import ipaddress
import os
import random
import re
import resource
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from portward.errors import InputError

__all__ = [
    "PortResult",
    "PortSpecError",
    "ResolveError",
    "ScanResult",
    "format_ports",
    "parse_ports",
    "resolve",
    "scan",
    "scan_tcp",
    "scan_udp",
]

Progress = Callable[[int, int], None]

# --- Linux constants the socket module does not export ------------------------------------------
IP_RECVERR = 11
IPV6_RECVERR = 25
MSG_ERRQUEUE = 0x2000
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0 s}: close() sends RST, no TIME_WAIT
_EE = struct.Struct("=IBBBB")  # struct sock_extended_err: ee_errno, ee_origin, ee_type, ee_code, ee_pad

# --- timing defaults (seconds) -------------------------------------------------------------------
# min 0.1 s: nmap -T4's --min-rtt-timeout.  On a LAN the RTT is microseconds, but what we measure is
# "SYN sent → our loop saw the answer", which includes scheduler and loop latency; a floor of 100 ms
# never calls a port silent just because this process was busy sending the next burst.
MIN_TIMEOUT = 0.1
# max 1 s: just under the kernel's initial SYN RTO (TCP_TIMEOUT_INIT = 1 s), so every attempt is
# exactly one SYN and every retransmission is ours — counted, and used as the loss signal.
MAX_TIMEOUT = 1.0
# before the first answer: nmap -T4's --initial-rtt-timeout.
INITIAL_TIMEOUT = 0.5
# nmap -T4's --max-retries: the ceiling.  The retries actually used adapt like nmap's: one
# retransmission per silent port, one more than the latest try that ever got an answer.
TCP_RETRIES = 6
UDP_RETRIES = 2
UDP_TIMEOUT = 1.0

# --- window ----------------------------------------------------------------------------------------
INITIAL_WINDOW = 64  # first burst: also small enough for the neighbour (ARP/ND) queue while it resolves
MIN_WINDOW = 16
SLOW_START_GROWTH = 3.0  # added per finished probe below ssthresh: ×4 per round
CA_GROWTH = 4.0  # added per window's worth of finished probes above it
DEFAULT_MAX_PARALLEL = 12_288  # at a 100 ms timeout that is 120k probes/s: more than one core can send
FD_RESERVE = 256  # descriptors left for the rest of the process (rich, logging, the CLI's files)
BURST = 512  # probes sent per loop iteration before yielding to other tasks and reading answers
PROGRESS_EVERY = 0.05  # s between progress callbacks

# Ports that answer most often go first (as nmap does): an early answer gives the RTT sample that
# brings the timeout down from INITIAL_TIMEOUT; the rest of the range is shuffled so a filtering
# rule on a contiguous range does not see a burst.
LIKELY_PORTS = (
    80, 443, 22, 21, 25, 53, 3389, 110, 143, 445, 139, 8080, 8443, 3306, 5432, 993, 995, 587, 23, 111,
    135, 5900, 1723, 6379, 9000, 9090, 5000, 8000, 8888, 27017, 1433, 2049, 636, 389, 179, 631,
)  # fmt: skip

# Payloads that make common UDP services answer.  Other ports get UDP_GENERIC_PAYLOAD rather than
# nmap's empty datagram: many servers (asyncio's datagram transports among them) never answer an
# empty one, while line-oriented and echo-like services answer a blank line.
UDP_GENERIC_PAYLOAD = b"\r\n\r\n"
UDP_PAYLOADS: dict[int, bytes] = {
    # DNS: id 0x7077, standard query, "version.bind" CH TXT
    53: bytes.fromhex("7077010000010000000000000776657273696f6e0462696e640000100003"),
    # NTP: mode 3 (client), version 4
    123: b"\x23" + b"\x00" * 47,
    # SNMPv1 get-request, community "public", sysDescr.0
    161: bytes.fromhex("302902010004067075626c6963a01c020470770000020100020100300e300c06082b060102010101000500"),
}

# ICMP (type 3) and ICMPv6 (type 1) destination-unreachable codes → nmap reason names.
_ICMP4_UNREACH = {
    0: "net-unreach",
    1: "host-unreach",
    2: "proto-unreach",
    3: "port-unreach",
    4: "frag-needed",
    5: "source-route-failed",
    6: "net-unknown",
    7: "host-unknown",
    8: "host-isolated",
    9: "net-prohibited",
    10: "host-prohibited",
    11: "net-tos-unreach",
    12: "host-tos-unreach",
    13: "admin-prohibited",
    14: "precedence-violation",
    15: "precedence-cutoff",
}
_ICMP6_UNREACH = {
    0: "no-route",
    1: "admin-prohibited",
    2: "beyond-scope",
    3: "addr-unreach",
    4: "port-unreach",
    5: "policy-fail",
    6: "reject-route",
}
# Other ICMP errors about a probe: the probe did not reach the port, as for nmap -sT (EHOSTUNREACH).
_ICMP4_OTHER = {11: "time-exceeded", 12: "param-problem"}
_ICMP6_OTHER = {3: "time-exceeded", 4: "param-problem"}
# errno when no ICMP detail is queued (rare: only without IP_RECVERR, or a local error).
_ERRNO_REASON = {
    errno.ECONNREFUSED: "conn-refused",
    errno.EHOSTUNREACH: "host-unreach",
    errno.ENETUNREACH: "net-unreach",
    errno.EACCES: "admin-prohibited",  # a local firewall (OUTPUT reject) or ICMP with recverr off
    errno.EPERM: "admin-prohibited",
    errno.ETIMEDOUT: "no-response",
    errno.EHOSTDOWN: "host-down",
    errno.ENETDOWN: "net-down",
    errno.ENOPROTOOPT: "proto-unreach",
}
# Local resource exhaustion: not an answer from the target; put the port back and slow down.
_LOCAL_EXHAUSTION = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN,
                               errno.EADDRNOTAVAIL})  # fmt: skip


# --- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PortResult:
    port: int
    proto: str  # "tcp" | "udp"
    state: str  # "open" | "closed" | "filtered" | "open|filtered"
    reason: str  # nmap-like: "syn-ack", "conn-refused", "no-response", "admin-prohibited", ...

    def as_json(self) -> dict[str, object]:
        return {"port": self.port, "proto": self.proto, "state": self.state, "reason": self.reason}


@dataclass(repr=False)
class ScanResult:
    host: str  # as given
    address: str  # resolved address scanned
    source: str | None  # our source address towards it
    ports: list[PortResult]  # every scanned port, sorted by (proto, port)
    seconds: float
    probes_sent: int
    retransmissions: int
    srtt: float | None = None  # smoothed RTT at the end (s), None when nothing answered
    timeout: float = 0.0  # per-probe timeout at the end (s)
    max_window: int = 0  # most probes in flight at once

    def __repr__(self) -> str:
        # Short on purpose: asyncio formats a finished task's result when it restores the SIGINT
        # handler (Python 3.11), and the generated repr of 65,535 PortResults costs ~0.4 s each time.
        return (
            f"ScanResult(host={self.host!r}, address={self.address!r}, ports=<{len(self.ports)}>, "
            f"seconds={self.seconds:.3f}, probes_sent={self.probes_sent})"
        )

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for result in self.ports:
            out[result.state] = out.get(result.state, 0) + 1
        return out

    def ports_in(self, state: str, proto: str = "tcp") -> list[int]:
        """Port numbers of ``proto`` in ``state``, ascending."""
        return [r.port for r in self.ports if r.state == state and r.proto == proto]

    def as_json(self, *, all_ports: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; filtered and open|filtered ports are only counted unless ``all_ports``.

        (A full-range scan of a default-drop host is 65,000 filtered entries nobody reads.)
        """
        listed = [r.as_json() for r in self.ports if all_ports or r.state in ("open", "closed")]
        return {
            "host": self.host,
            "address": self.address,
            "source": self.source,
            "seconds": round(self.seconds, 3),
            "probes_sent": self.probes_sent,
            "retransmissions": self.retransmissions,
            "srtt_ms": None if self.srtt is None else round(self.srtt * 1000, 3),
            "timeout_ms": round(self.timeout * 1000, 1),
            "max_window": self.max_window,
            "scanned": {proto: sum(1 for r in self.ports if r.proto == proto) for proto in ("tcp", "udp")},
            "counts": self.counts(),
            "ports": listed,
        }


class PortSpecError(InputError, ValueError):
    """A port list that is not nmap syntax or names a port outside 1–65535."""


class ResolveError(InputError):
    """The host name does not resolve (in the asked family)."""


# --- port lists --------------------------------------------------------------------------------------
_NUMBER = re.compile(r"[0-9]{1,5}")


def _port_number(text: str, item: str, spec: str) -> int:
    if not _NUMBER.fullmatch(text):
        raise PortSpecError(f"bad port {text!r} in {item!r} (port list {spec!r}); expected a number 1-65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise PortSpecError(f"port {port} in {item!r} is out of range 1-65535 (port list {spec!r})")
    return port


def parse_ports(spec: str) -> list[int]:
    """nmap port syntax → sorted, de-duplicated port numbers.

    ``"22"``, ``"22,80,443"``, ``"1000-2000"``, ``"-"`` (1-65535), ``"1024-"`` (to 65535), ``"-1023"``
    (from 1), combined with commas; spaces around items are ignored.  Raises PortSpecError (a
    ValueError) naming the bad item.
    """
    if not spec.strip():
        raise PortSpecError("empty port list; expected e.g. 22,80,1000-2000 or - for all ports")
    ports: set[int] = set()
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            raise PortSpecError(f"empty item in port list {spec!r}")
        low_s, dash, high_s = item.partition("-")
        if not dash:
            ports.add(_port_number(item, item, spec))
            continue
        low = _port_number(low_s.strip(), item, spec) if low_s.strip() else 1
        high = _port_number(high_s.strip(), item, spec) if high_s.strip() else 65535
        if low > high:
            raise PortSpecError(f"reversed range {item!r} in port list {spec!r}; write {high}-{low}")
        ports.update(range(low, high + 1))
    return sorted(ports)


def format_ports(ports: Sequence[int]) -> str:
    """The shortest nmap port list for ``ports``: ``[22, 80, 81, 82]`` → ``"22,80-82"``."""
    out: list[str] = []
    ordered = sorted(set(ports))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


# --- addresses ---------------------------------------------------------------------------------------
def _family_arg(family: int | None) -> int:
    if family in (None, 0, socket.AF_UNSPEC):
        return socket.AF_UNSPEC
    if family in (4, socket.AF_INET):
        return socket.AF_INET
    if family in (6, socket.AF_INET6):
        return socket.AF_INET6
    raise ValueError(f"family must be 4, 6, AF_INET, AF_INET6 or None, not {family!r}")


def resolve(host: str, family: int | None = None) -> tuple[int, str]:
    """``host`` (name or literal, ``[v6]`` allowed) → (4 or 6, address).  Resolves once.

    ``family`` (4/6 or AF_INET/AF_INET6) restricts the answer; without it the resolver's preferred
    address (RFC 6724 order) wins.  Raises ResolveError.
    """
    want = _family_arg(family)
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name:
        raise ResolveError("empty host")
    literal, pct, scope = name.partition("%")
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None and want != socket.AF_INET6:
        # ::ffff:a.b.c.d is the IPv4 host; an AF_INET6 socket would take ICMPv4 errors on the IPv4
        # error queue, not the IPv6 one we watch
        ip = ip.ipv4_mapped
    if ip is not None:
        version = ip.version
        if want != socket.AF_UNSPEC and (version == 6) != (want == socket.AF_INET6):
            raise ResolveError(f"{host} is an IPv{version} address but IPv{6 if version == 4 else 4} was asked for")
        return version, f"{ip.compressed}{pct}{scope}"
    try:
        infos = socket.getaddrinfo(name, None, want, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        asked = " (IPv4)" if want == socket.AF_INET else " (IPv6)" if want == socket.AF_INET6 else ""
        raise ResolveError(f"cannot resolve {host!r}{asked}: {why}") from None
    for fam, _, _, _, sockaddr in infos:
        if fam in (socket.AF_INET, socket.AF_INET6):
            address = str(sockaddr[0])
            if fam == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
                address = f"{address}%{sockaddr[3]}"
            return (6 if fam == socket.AF_INET6 else 4), address
    raise ResolveError(f"cannot resolve {host!r}: no IPv4 or IPv6 address")


@dataclass(frozen=True, slots=True)
class _Target:
    family: int
    host: str  # the address part of the sockaddr (with %scope for link-local v6)
    scope_id: int  # 0 unless link-local v6

    def sockaddr(self, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
        if self.family == socket.AF_INET:
            return (self.host, port)
        return (self.host, port, 0, self.scope_id)


def _target(address: str) -> tuple[str, _Target]:
    """Literal or name → (printable address, target).  Names are resolved (once) here."""
    _, printable = resolve(address)
    info = socket.getaddrinfo(printable, 0, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0]
    family, sockaddr = info[0], info[4]
    scope = int(sockaddr[3]) if family == socket.AF_INET6 and len(sockaddr) >= 4 else 0
    return printable, _Target(int(family), str(sockaddr[0]), scope)


# --- process limits -----------------------------------------------------------------------------------
def _raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):  # a container may refuse; keep the old soft limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64


def _ephemeral_ports() -> int:
    """Size of the local port range connect() picks from (this network namespace)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low, high = (int(x) for x in handle.read().split())
        return max(1, high - low + 1)
    except (OSError, ValueError):
        return 28_232  # the kernel default 32768-60999


def parallel_budget(max_parallel: int | None = None) -> int:
    """How many probes may be in flight: the caller's cap, under the fd limit and the port range.

    Raises the soft RLIMIT_NOFILE to the hard limit (process-wide, left raised).  Stays at 3/4 of
    what is left of it so the rest of the process never hits EMFILE, and at half the ephemeral
    range: each connecting socket holds a local port; connect() may share one between different
    destination ports, but its search for a free one gets slow as the range fills up.
    """
    limit = _raise_nofile()
    by_fds = (limit - _open_fds() - FD_RESERVE) * 3 // 4
    by_ports = _ephemeral_ports() // 2
    wanted = DEFAULT_MAX_PARALLEL if max_parallel is None else max_parallel
    return max(1, min(wanted, by_fds, by_ports))


# --- errors of a probe socket ----------------------------------------------------------------------
def _drain_errqueue(sock: _socket.socket, port: int | None = None) -> tuple[int, int, int, int] | None:
    """Pop the socket's queued ICMP errors (IP(V6)_RECVERR); the last as (errno, origin, type, code).

    Why: an ICMP error that arrives while connect() still holds the socket lock — easy on veth,
    where the reply comes back inside the syscall — is only a *soft* error for TCP: SO_ERROR stays 0
    and the kernel would wait for its SYN retransmit.  With RECVERR the error is also queued here,
    which wakes epoll with EPOLLERR, and it carries the ICMP type and code for the reason.

    ``port``: for TCP the queued payload starts at the quoted TCP header, so an error about an
    earlier probe of a reused socket (another destination port) is recognised and skipped.
    """
    found: tuple[int, int, int, int] | None = None
    while True:
        try:
            data, ancdata, _, _ = sock.recvmsg(4, 512, MSG_ERRQUEUE)
        except OSError:  # EAGAIN: the queue is empty
            return found
        if port is not None and len(data) >= 4 and int.from_bytes(data[2:4], "big") != port:
            continue
        for level, kind, cmsg in ancdata:
            recverr = (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR))
            if recverr and len(cmsg) >= _EE.size:
                ee_errno, origin, ee_type, code, _ = _EE.unpack_from(cmsg)
                found = (ee_errno, origin, ee_type, code)


def _icmp_verdict(detail: tuple[int, int, int, int]) -> tuple[str, str] | None:
    """(state, reason) for a queued error, None when it is not an answer about the port."""
    _, origin, ee_type, code = detail
    if origin == SO_EE_ORIGIN_ICMP:
        if ee_type == 3 and code != 4:  # destination unreachable (code 4, "fragmentation needed", is PMTU)
            reason = _ICMP4_UNREACH.get(code, f"icmp-unreach-{code}")
        elif ee_type in _ICMP4_OTHER:
            reason = _ICMP4_OTHER[ee_type]
        else:
            return None
    elif origin == SO_EE_ORIGIN_ICMP6:
        if ee_type == 1:
            reason = _ICMP6_UNREACH.get(code, f"icmp6-unreach-{code}")
        elif ee_type in _ICMP6_OTHER:
            reason = _ICMP6_OTHER[ee_type]
        else:  # 2: packet too big (PMTU)
            return None
    else:  # a local error (SO_EE_ORIGIN_LOCAL …): not an answer from the network
        return None
    return ("closed", reason) if reason == "port-unreach" else ("filtered", reason)


def _errno_verdict(proto: str, err: int) -> tuple[str, str]:
    reason = _ERRNO_REASON.get(err) or errno.errorcode.get(err, f"errno-{err}").lower()
    if err == errno.ECONNREFUSED:
        return "closed", "conn-refused" if proto == "tcp" else "port-unreach"
    return "filtered", reason


def _tcp_verdict(sock: _socket.socket, port: int) -> tuple[str, str] | None:
    """State of the probe of ``port`` epoll reported on ``sock``; None while it is still connecting.

    The hard error is read with recv(), not SO_ERROR: SO_ERROR falls back to the socket's *soft*
    error, which on a reused probe socket can be left over from the port it probed before.
    """
    try:
        peer = sock.getpeername()
    except OSError:  # not connected
        pass
    else:
        # TCP "self-connect": connecting to a port of our own host inside the ephemeral range can pick
        # that very port as the source and the SYN meets itself (simultaneous open).  Nothing was
        # listening there — a listener would own the port — so it is closed.
        if peer == sock.getsockname():
            return "closed", "self-connect"
        return "open", "syn-ack"
    detail = _drain_errqueue(sock, port)
    if detail is not None:
        verdict = _icmp_verdict(detail)
        if verdict is not None:
            return verdict
    try:
        sock.recv(1)
    except BlockingIOError:  # SYN_SENT, no error: a stale wake-up
        return None
    except OSError as exc:  # RST → ECONNREFUSED
        return _errno_verdict("tcp", exc.errno or 0)
    return None


# --- timing and window -------------------------------------------------------------------------------
class _Timing:
    """RFC 6298 smoothed RTT, as nmap keeps it: timeout = clamp(srtt + 4·rttvar, min, max)."""

    __slots__ = ("initial", "max_timeout", "min_timeout", "rttvar", "srtt", "timeout")

    def __init__(self, min_timeout: float, max_timeout: float, initial: float) -> None:
        if not 0 < min_timeout <= max_timeout:
            raise ValueError(f"need 0 < min_timeout <= max_timeout, got {min_timeout} and {max_timeout}")
        self.min_timeout, self.max_timeout = min_timeout, max_timeout
        self.initial = min(max(initial, min_timeout), max_timeout)
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.timeout = self.initial

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar += (abs(self.srtt - rtt) - self.rttvar) / 4
            self.srtt += (rtt - self.srtt) / 8
        self.timeout = min(max(self.srtt + 4 * self.rttvar, self.min_timeout), self.max_timeout)


class _Window:
    """Congestion window over probes in flight: slow start, then additive increase; halved on loss.

    It grows per finished probe *including silent ones*: on a default-drop host silence is the
    normal answer, and growing only on answers is what keeps nmap -sT at 88 s there.  A silent probe
    only finishes at its timeout, so slow start moves one round per timeout (≥ 100 ms), not per
    RTT; it grows by SLOW_START_GROWTH per finished probe (×4 per round) so the ramp-up takes a few
    rounds, not most of the scan.  The loss signal a connect scan can see is a retransmission
    answered where the first try was not: it halves the window, at most once per timeout so one
    burst of losses counts once.
    """

    __slots__ = ("ceiling", "cwnd", "drops", "last_drop", "peak", "ssthresh")

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.cwnd = float(min(INITIAL_WINDOW, self.ceiling))
        self.ssthresh = float(self.ceiling)
        self.last_drop = -1e9
        self.drops = 0
        self.peak = 0

    def finished(self) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += SLOW_START_GROWTH
        else:
            self.cwnd += CA_GROWTH / self.cwnd
        if self.cwnd > self.ceiling:
            self.cwnd = float(self.ceiling)

    def loss(self, now: float, timeout: float) -> None:
        self.drops += 1
        if now - self.last_drop < timeout:
            return
        self.last_drop = now
        self.ssthresh = max(float(MIN_WINDOW), self.cwnd / 2)
        self.cwnd = self.ssthresh

    def exhausted(self, in_flight: int) -> None:
        """Out of local resources (fds, ports, buffers) at ``in_flight``: never go that high again."""
        self.ceiling = max(MIN_WINDOW, in_flight * 3 // 4)
        self.cwnd = min(self.cwnd, float(self.ceiling))
        self.ssthresh = min(self.ssthresh, float(self.ceiling))

    @property
    def room(self) -> int:
        return int(self.cwnd)


def _order(ports: Sequence[int]) -> list[int]:
    """Likely-to-answer ports first, then the rest shuffled."""
    wanted = set(ports)
    first = [p for p in LIKELY_PORTS if p in wanted]
    rest = list(wanted.difference(first))
    random.shuffle(rest)
    return first + rest


class _Progress:
    __slots__ = ("callback", "last", "total")

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback, self.total, self.last = callback, total, 0.0

    def __call__(self, done: int, now: float, force: bool = False) -> None:
        if self.callback is not None and (force or now - self.last >= PROGRESS_EVERY):
            self.last = now
            self.callback(done, self.total)


class _Reactor:
    """A private epoll for the probe sockets, its descriptor watched by the asyncio loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.epoll = select.epoll()
        self._waiter: asyncio.Future[None] | None = None
        self.loop.add_reader(self.epoll.fileno(), self._wake)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def events(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while True:
            batch = self.epoll.poll(0, 4096)
            out.extend(batch)
            if len(batch) < 4096:
                return out

    async def wait(self, delay: float) -> None:
        """Until a probe socket has news or ``delay`` s pass (``delay`` 0: just let other tasks run)."""
        if delay <= 0:
            await asyncio.sleep(0)
            return
        self._waiter = self.loop.create_future()
        timer = self.loop.call_later(delay, self._wake)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()


def _source_of(sock: _socket.socket) -> str | None:
    try:
        return str(sock.getsockname()[0])
    except OSError:
        return None


# --- TCP ---------------------------------------------------------------------------------------------
# (sent at, fd, socket, port, try number): a plain tuple, the cheapest record at 130,000 probes
_Probe = tuple[float, int, _socket.socket, int, int]


@functools.cache
def _disconnector() -> Callable[[int], int] | None:
    """``connect(fd, {AF_UNSPEC})`` through libc, or None if libc cannot be reached.

    It dissolves a TCP socket's association (SYN_SENT, or closed by a RST) without a packet, and the
    socket can then connect() again.  Reusing a probe socket this way costs one system call where a
    new one costs three (socket, setsockopt, epoll_ctl) plus a close(): on the 131,000 probes of a
    full default-drop scan that is about 10 µs each, a third of the run.  Python's socket API has no
    spelling for an AF_UNSPEC address, hence ctypes.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        connect = libc.connect
        connect.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
        connect.restype = ctypes.c_int
    except (ImportError, OSError, AttributeError):
        return None
    unspec = ctypes.create_string_buffer(16)  # struct sockaddr, sa_family = 0 = AF_UNSPEC

    def disconnect(fd: int) -> int:
        return int(connect(fd, unspec, 16))

    return disconnect


class _TcpScan:
    """One TCP connect scan: probe sockets in a private epoll, a FIFO of send times, a window."""

    def __init__(
        self,
        target: _Target,
        ports: Sequence[int],
        progress: Progress | None,
        max_parallel: int | None,
        timing: _Timing,
        retries: int,
    ) -> None:
        self.target = target
        self.order = _order(ports)
        self.total = len(self.order)
        self.timing = timing
        self.retries = retries
        self.window = _Window(parallel_budget(max_parallel))
        self.report = _Progress(progress, self.total)
        self.results: dict[int, PortResult] = {}
        # fd → its probe; the same tuple sits in `pending` (FIFO by send time), so a timeout can check
        # it is still the live probe of that fd: fds and sockets are reused.
        self.inflight: dict[int, _Probe] = {}
        self.pending: deque[_Probe] = deque()
        self.retry: deque[tuple[int, int]] = deque()  # (port, try) to resend, before fresh ports
        self.free: list[_socket.socket] = []  # disconnected sockets, still in the epoll
        self.fresh = iter(self.order)
        self.fresh_left = self.total
        self.probes = 0
        self.retransmissions = 0
        self.max_answered_try = 0  # highest try that ever got an answer (nmap's max_successful_tryno)
        self.source: str | None = None
        self.paused_until = 0.0  # after running out of fds/ports/buffers
        self.disconnect = _disconnector()
        self.recverr = (
            (socket.IPPROTO_IPV6, IPV6_RECVERR) if target.family == socket.AF_INET6 else (socket.IPPROTO_IP, IP_RECVERR)
        )
        self.reactor: _Reactor | None = None

    async def run(self) -> None:
        self.reactor = _Reactor()
        try:
            while len(self.results) < self.total:
                now = time.monotonic()
                self.read_answers(now)  # always before timeouts: an answer in the kernel is never "silent"
                # At most one burst of timeouts per round, so the sockets they free are reused by the
                # burst of sends that follows instead of idling (and being closed) until the next one.
                more_due = self.expire(now, BURST)
                self.send()
                self.report(len(self.results), now)
                if len(self.results) >= self.total:
                    break
                if more_due or self.can_send():
                    await self.reactor.wait(0)  # work left: just let other tasks run
                else:  # until an answer or the oldest probe's timeout
                    head = self.pending[0][0] if self.pending else now
                    await self.reactor.wait(max(head + self.timing.timeout - time.monotonic(), 0.001))
        finally:
            for probe in self.inflight.values():
                probe[2].close()
            for sock in self.free:
                sock.close()
            self.inflight.clear()
            self.free.clear()
            self.reactor.close()
        self.report(self.total, time.monotonic(), force=True)

    def can_send(self) -> bool:
        return (
            bool(self.retry or self.fresh_left)
            and self.window.room > len(self.inflight)
            and time.monotonic() >= self.paused_until
        )

    def finish(self, port: int, state: str, reason: str) -> None:
        self.results[port] = PortResult(port, "tcp", state, reason)

    def release(self, sock: _socket.socket) -> None:
        """A probe socket whose probe is over: keep it for the next probe if it can be disconnected."""
        if self.disconnect is not None and self.disconnect(sock.fileno()) == 0:
            self.free.append(sock)
        else:
            sock.close()

    def read_answers(self, now: float) -> None:
        assert self.reactor is not None
        inflight, timing, window = self.inflight, self.timing, self.window
        for fd, _ in self.reactor.events():
            probe = inflight.get(fd)
            if probe is None:
                continue
            sent, _, sock, port, tryno = probe
            verdict = _tcp_verdict(sock, port)
            if verdict is None:
                continue  # still connecting; level-triggered epoll tells us again
            del inflight[fd]
            if verdict[0] == "open":
                # RST instead of FIN: no TIME_WAIT here, no half-open connection left on the target
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                sock.close()
            else:
                self.release(sock)
            timing.sample(now - sent)
            window.finished()
            if tryno:
                window.loss(now, timing.timeout)
                self.max_answered_try = max(self.max_answered_try, tryno)
            self.finish(port, *verdict)

    def expire(self, now: float, most: int) -> bool:
        """Time out up to ``most`` probes older than the current timeout (the FIFO head is the oldest).

        Returns whether more are due.
        """
        inflight, pending, retry, window = self.inflight, self.pending, self.retry, self.window
        limit = now - self.timing.timeout
        allowed = min(self.retries, max(1, self.max_answered_try + 1))
        release = self.release
        while pending:
            probe = pending[0]
            fd = probe[1]
            if inflight.get(fd) is not probe:
                pending.popleft()  # answered already
                continue
            if probe[0] > limit:
                return False
            if most <= 0:
                return True
            most -= 1
            pending.popleft()
            del inflight[fd]
            release(probe[2])  # in SYN_SENT neither disconnect nor close sends a packet
            window.finished()
            if probe[4] < allowed:
                retry.append((probe[3], probe[4] + 1))
            else:
                self.finish(probe[3], "filtered", "no-response")
        return False

    def out_of_resources(self, port: int, tryno: int) -> None:
        self.retry.appendleft((port, tryno))
        self.window.exhausted(len(self.inflight))
        self.paused_until = time.monotonic() + self.timing.min_timeout

    def send(self) -> None:
        """New probes, up to the window and one burst; then close the sockets left unused."""
        assert self.reactor is not None
        budget = min(BURST, self.window.room - len(self.inflight))
        if time.monotonic() < self.paused_until:
            budget = 0
        inflight, pending, retry, free = self.inflight, self.pending, self.retry, self.free
        register, sockaddr, monotonic = self.reactor.epoll.register, self.target.sockaddr, time.monotonic
        family, level, option = self.target.family, self.recverr[0], self.recverr[1]
        kind = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
        while budget > 0 and (retry or self.fresh_left):
            if retry:
                port, tryno = retry.popleft()
            else:
                port, tryno = next(self.fresh), 0
                self.fresh_left -= 1
            if free:
                sock = free.pop()
                fd = sock.fileno()
            else:
                try:
                    sock = _socket.socket(family, kind)
                except OSError as exc:
                    if exc.errno not in _LOCAL_EXHAUSTION:
                        raise
                    self.out_of_resources(port, tryno)
                    break
                sock.setsockopt(level, option, 1)
                fd = sock.fileno()
                register(fd, select.EPOLLOUT)
            sent = monotonic()
            err = sock.connect_ex(sockaddr(port))
            if err == errno.EINPROGRESS:
                probe = (sent, fd, sock, port, tryno)
                inflight[fd] = probe
                pending.append(probe)
                self.probes += 1
                if tryno:
                    self.retransmissions += 1
                if self.source is None:
                    self.source = _source_of(sock)
                budget -= 1
                continue
            if err in _LOCAL_EXHAUSTION:
                sock.close()
                self.out_of_resources(port, tryno)
                break
            if err in (errno.EALREADY, errno.EISCONN):  # a reused socket the disconnect did not free
                for stale in [sock, *free]:
                    stale.close()
                free.clear()
                self.disconnect = None  # fresh sockets from now on
                retry.appendleft((port, tryno))
                continue
            # over inside connect() (loopback, or a local route or firewall verdict)
            self.probes += 1
            self.retransmissions += 1 if tryno else 0
            if self.source is None:
                self.source = _source_of(sock)
            if err == 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                self.finish(port, "open", "syn-ack")
            else:
                self.finish(port, *_errno_verdict("tcp", err))
            sock.close()
            budget -= 1
        # a disconnected socket polls as EPOLLHUP: keep none idle in the epoll
        for sock in free:
            sock.close()
        free.clear()
        if len(inflight) > self.window.peak:
            self.window.peak = len(inflight)


async def scan_tcp(
    address: str,
    ports: Sequence[int],
    *,
    progress: Progress | None = None,
    max_parallel: int | None = None,
    min_timeout: float = MIN_TIMEOUT,
    max_timeout: float = MAX_TIMEOUT,
    retries: int = TCP_RETRIES,
    initial_timeout: float = INITIAL_TIMEOUT,
) -> ScanResult:
    """TCP connect scan of ``ports`` on ``address`` (an IPv4/IPv6 literal; a name is resolved once).

    ``max_parallel`` caps the probes in flight (default DEFAULT_MAX_PARALLEL, always under the fd
    limit and the ephemeral port range); ``retries`` caps retransmissions per silent port (nmap's
    --max-retries; one is always made unless it is 0, more once the network showed it drops).
    """
    started = time.monotonic()
    if retries < 0:
        raise ValueError("retries must be >= 0")
    printable, target = _target(address)
    timing = _Timing(min_timeout, max_timeout, initial_timeout)
    engine = _TcpScan(target, ports, progress, max_parallel, timing, retries)
    if engine.total:
        await engine.run()
    return ScanResult(
        host=address,
        address=printable,
        source=engine.source,
        ports=[engine.results[p] for p in sorted(engine.results)],
        seconds=time.monotonic() - started,
        probes_sent=engine.probes,
        retransmissions=engine.retransmissions,
        srtt=timing.srtt,
        timeout=timing.timeout,
        max_window=engine.window.peak,
    )


# --- UDP ---------------------------------------------------------------------------------------------
def _udp_verdict(sock: socket.socket) -> tuple[str, str] | None:
    """State of a UDP probe socket epoll reported, None if nothing conclusive is there."""
    detail = _drain_errqueue(sock)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # also clears the pending error
    if detail is not None:
        verdict = _icmp_verdict(detail)
        if verdict is not None:
            return verdict
    try:
        sock.recv(65535)
    except BlockingIOError:
        pass
    except OSError as exc:
        return _errno_verdict("udp", exc.errno or 0)
    else:
        return "open", "udp-response"
    if err:
        return _errno_verdict("udp", err)
    return None


@dataclass(slots=True)
class _UdpProbe:
    sock: socket.socket
    port: int
    sends: int
    due: float  # when to send again, or give up


async def scan_udp(
    address: str,
    ports: Sequence[int],
    *,
    progress: Progress | None = None,
    retries: int = UDP_RETRIES,
    timeout: float = UDP_TIMEOUT,
    max_parallel: int | None = 256,
) -> ScanResult:
    """UDP scan of ``ports`` (meant for the handful a policy names, not 65,535).

    One connected socket per port with IP(V6)_RECVERR; the probe (a protocol payload for 53, 123
    and 161, a blank line otherwise) is sent again on the same socket after each ``timeout`` of silence,
    ``retries`` times; silence then means open|filtered.  A reply that answers an earlier send
    still counts (same socket).  Note: Linux rate-limits ICMP port unreachables (by default a burst
    of 6, then 1/s per source), so on a real host many closed ports can come out open|filtered —
    as they do with nmap -sU at speed.
    """
    started = time.monotonic()
    printable, target = _target(address)
    if retries < 0 or timeout <= 0:
        raise ValueError("need retries >= 0 and timeout > 0")
    order = _order(ports)
    total = len(order)
    cap = parallel_budget(max_parallel)
    report = _Progress(progress, total)
    results: dict[int, PortResult] = {}
    level, option = (
        (socket.IPPROTO_IPV6, IPV6_RECVERR) if target.family == socket.AF_INET6 else (socket.IPPROTO_IP, IP_RECVERR)
    )
    inflight: dict[int, _UdpProbe] = {}  # fd → probe
    fresh = deque(order)
    probes = retransmissions = peak = 0
    source: str | None = None

    def send(probe: _UdpProbe, now: float) -> None:
        with contextlib.suppress(OSError):  # a pending ICMP error; it is also queued, epoll reports it
            probe.sock.send(UDP_PAYLOADS.get(probe.port, UDP_GENERIC_PAYLOAD))
        probe.sends += 1
        probe.due = now + timeout

    def finish(fd: int, state: str, reason: str) -> None:
        probe = inflight.pop(fd)
        probe.sock.close()
        results[probe.port] = PortResult(probe.port, "udp", state, reason)

    reactor = _Reactor() if order else None
    try:
        while reactor is not None and len(results) < total:
            now = time.monotonic()
            for fd, _ in reactor.events():
                if fd in inflight:
                    verdict = _udp_verdict(inflight[fd].sock)
                    if verdict is not None:
                        finish(fd, *verdict)
            for fd, probe in list(inflight.items()):
                if probe.due <= now:
                    if probe.sends > retries:
                        finish(fd, "open|filtered", "no-response")
                    else:
                        send(probe, now)
                        probes += 1
                        retransmissions += 1
            while fresh and len(inflight) < cap:
                port = fresh.popleft()
                sock = socket.socket(target.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
                sock.setsockopt(level, option, 1)
                try:
                    sock.connect(target.sockaddr(port))
                except OSError as exc:  # e.g. no route: a local verdict, nothing was sent
                    sock.close()
                    results[port] = PortResult(port, "udp", *_errno_verdict("udp", exc.errno or 0))
                    continue
                source = source or _source_of(sock)
                reactor.epoll.register(sock.fileno(), select.EPOLLIN)
                probe = _UdpProbe(sock, port, 0, now)
                inflight[sock.fileno()] = probe
                send(probe, now)
                probes += 1
            peak = max(peak, len(inflight))
            report(len(results), now)
            if len(results) < total:
                due = min((p.due for p in inflight.values()), default=now + timeout)
                await reactor.wait(max(due - time.monotonic(), 0.001))
    finally:
        for probe in inflight.values():
            probe.sock.close()
        if reactor is not None:
            reactor.close()
    report(total, time.monotonic(), force=True)
    return ScanResult(
        host=address,
        address=printable,
        source=source,
        ports=[results[p] for p in sorted(results)],
        seconds=time.monotonic() - started,
        probes_sent=probes,
        retransmissions=retransmissions,
        srtt=None,
        timeout=timeout,
        max_window=peak,
    )


# --- both --------------------------------------------------------------------------------------------
def scan(
    host: str,
    tcp_ports: Sequence[int],
    udp_ports: Sequence[int] = (),
    *,
    family: int | None = None,
    progress: Progress | None = None,
    max_parallel: int | None = None,
) -> ScanResult:
    """Resolve ``host`` once, scan its TCP and UDP ports concurrently, merge the results."""
    _, address = resolve(host, family)
    total = len(set(tcp_ports)) + len(set(udp_ports))
    done = {"tcp": 0, "udp": 0}

    def part(proto: str) -> Progress | None:
        if progress is None:
            return None
        callback = progress

        def update(n: int, _total: int) -> None:
            done[proto] = n
            callback(done["tcp"] + done["udp"], total)

        return update

    async def both() -> tuple[ScanResult | None, ScanResult | None]:
        tcp = scan_tcp(address, tcp_ports, progress=part("tcp"), max_parallel=max_parallel) if tcp_ports else None
        udp = scan_udp(address, udp_ports, progress=part("udp")) if udp_ports else None
        if tcp is not None and udp is not None:
            return await asyncio.gather(tcp, udp)
        return (await tcp if tcp else None), (await udp if udp else None)

    started = time.monotonic()
    tcp_result, udp_result = asyncio.run(both())
    parts = [r for r in (tcp_result, udp_result) if r is not None]
    merged = ScanResult(
        host=host,
        address=address,
        source=next((r.source for r in parts if r.source), None),
        ports=sorted((p for r in parts for p in r.ports), key=lambda r: (r.proto, r.port)),
        seconds=time.monotonic() - started,
        probes_sent=sum(r.probes_sent for r in parts),
        retransmissions=sum(r.retransmissions for r in parts),
        srtt=tcp_result.srtt if tcp_result else None,
        timeout=tcp_result.timeout if tcp_result else (udp_result.timeout if udp_result else 0.0),
        max_window=max((r.max_window for r in parts), default=0),
    )
    if progress is not None:
        progress(total, total)
    return merged
