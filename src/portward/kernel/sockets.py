"""Every listening socket of the current network namespace, with the processes and units holding it.

For ``portward audit``; never runs ``ss``, ``lsof`` or ``netstat``. Two readers of the kernel's socket
tables, both pure stdlib:

- NETLINK_SOCK_DIAG (raw netlink + struct, the default): the kernel filters by state, so a dump costs
  per *listening* socket, and it is the only source of IPV6_V6ONLY (INET_DIAG_SKV6ONLY) and of
  SO_BINDTODEVICE (``idiag_if``);
- ``/proc/net/{tcp,tcp6,udp,udp6}``: the fallback when sock_diag is missing (``inet_diag`` not built or
  not loadable), and what ``list_listeners`` reads when pointed at another proc tree (tests).

SCTP comes from ``/proc/net/sctp/eps`` when the sctp module is loaded (sctp_diag would need it too).

Processes: ONE pass over ``/proc/[0-9]*/fd`` maps socket inodes to pids. Units: ``/proc/PID/cgroup``;
for sockets that systemd (PID 1) holds for socket activation, the ``.socket`` unit whose ``Listen*=``
matches, read from the unit files (with drop-ins), the way systemd resolves them.

All of it reflects the network namespace of the calling process (``ip netns exec`` works): sock_diag
and ``/proc/net`` are per namespace; ``/proc/*/fd`` spans all namespaces, which is harmless because
socket inodes are unique system-wide.
"""

from __future__ import annotations

import errno as errno_codes
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

__all__ = [
    "Listener",
    "SockDiagUnavailable",
    "SocketListen",
    "SocketRow",
    "list_listeners",
    "parse_proc_net",
    "parse_sctp_eps",
    "proc_hex_address",
    "read_sock_diag",
    "socket_units",
    "unit_from_cgroup",
]

Source = Literal["auto", "sock_diag", "proc"]


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening socket (TCP LISTEN, unconnected bound UDP, listening SCTP endpoint address)."""

    proto: str  # "tcp" | "udp" | "sctp"
    family: int  # 4 | 6
    address: str  # inet_ntop form: "0.0.0.0", "::", "2001:db8::1", "::ffff:198.18.0.1" (v4-mapped kept)
    port: int
    inode: int
    uid: int
    v6only: bool | None  # family 6: known from sock_diag, None from /proc; always None for family 4
    pid: int | None  # lowest pid holding it; None: no process found (kernel socket, no permission)
    pids: tuple[int, ...]  # every pid holding it, ascending (forked servers share sockets)
    process: str | None  # /proc/PID/comm of `pid`
    unit: str | None  # systemd unit of `pid` (the .socket unit when systemd holds it for activation)
    interface: str | None  # SO_BINDTODEVICE (or IPv6 scope) interface name when known (sock_diag)


class SocketRow(NamedTuple):
    """One listening socket as a kernel table gives it, before processes are looked up.

    A NamedTuple rather than a dataclass: the readers build thousands of them per call. The fields
    are in sort order, so plain tuple comparison sorts rows by (proto, family, port, address, inode).
    """

    proto: str
    family: int
    port: int
    address: str
    inode: int
    uid: int
    v6only: bool | None = None
    ifindex: int = 0  # 0: not bound to a device / unknown


@dataclass(frozen=True, slots=True)
class SocketListen:
    """One ``Listen*=`` line of a systemd ``.socket`` unit that names an IP socket."""

    unit: str  # "ssh.socket"
    proto: str  # "tcp" | "udp" | "sctp" | "udplite"
    address: str | None  # inet_ntop form; None for the port-only form ("22": any address)
    port: int


class SockDiagUnavailable(OSError):
    """NETLINK_SOCK_DIAG cannot answer for this family/protocol (module missing, seccomp, ...)."""


# --- /proc/net text ---------------------------------------------------------------------------
TCP_LISTEN = 10  # include/net/tcp_states.h
TCP_CLOSE = 7  # an unconnected UDP socket (ss: UNCONN)
SCTP_SS_LISTENING = TCP_LISTEN  # include/net/sctp/constants.h: SCTP_SS_LISTENING = TCP_LISTEN

# The kernel prints each 32-bit word of an address with %08X after loading it natively: decoding
# the hex as big-endian words and re-packing them natively gives the bytes back on any endianness.
_WORD_BE = struct.Struct(">I")
_WORD_NATIVE = struct.Struct("=I")
_WORDS_BE = struct.Struct(">4I")
_WORDS_NATIVE = struct.Struct("=4I")
_ZERO_V4 = "00000000"
_ZERO_V6 = "0" * 32


def _hex_to_address(text: str, family: int) -> str:
    raw = bytes.fromhex(text)
    if family == 4:
        if len(raw) != 4:
            raise ValueError(f"bad IPv4 hex address {text!r}")
        return socket.inet_ntop(socket.AF_INET, _WORD_NATIVE.pack(*_WORD_BE.unpack(raw)))
    if len(raw) != 16:
        raise ValueError(f"bad IPv6 hex address {text!r}")
    return socket.inet_ntop(socket.AF_INET6, _WORDS_NATIVE.pack(*_WORDS_BE.unpack(raw)))


def proc_hex_address(address: str, family: int) -> str:
    """The ``/proc/net/{tcp,udp}[6]`` hex form of ``address`` on this host (the inverse of the parser)."""
    if family == 4:
        words: tuple[int, ...] = _WORD_NATIVE.unpack(socket.inet_pton(socket.AF_INET, address))
    else:
        words = _WORDS_NATIVE.unpack(socket.inet_pton(socket.AF_INET6, address))
    return "".join(f"{word:08X}" for word in words)


def parse_proc_net(text: str, proto: str, family: int) -> list[SocketRow]:
    """Listening rows of ``/proc/net/{tcp,tcp6,udp,udp6}`` text (``proto`` "tcp"/"udp", ``family`` 4/6).

    TCP: state 0A (LISTEN). UDP: state 07 (unconnected) with a zero remote address and a non-zero local
    port, which is what ``ss -uln`` shows. Malformed lines are skipped, never raised. v6only and the
    bound interface are not in these files: v6only is None, ifindex 0.
    """
    if proto == "tcp":
        want_state = "0A"
    elif proto == "udp":
        want_state = "07"
    else:
        raise ValueError(f"proto must be 'tcp' or 'udp', not {proto!r}")
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    zero = _ZERO_V4 if family == 4 else _ZERO_V6
    addresses: dict[str, str] = {}  # thousands of sockets share a handful of addresses
    rows: list[SocketRow] = []
    for line in text.splitlines():
        fields = line.split()
        # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if len(fields) < 10 or fields[3] != want_state:
            continue
        local, _, port_hex = fields[1].partition(":")
        try:
            port = int(port_hex, 16)
            if proto == "udp":
                remote, _, remote_port = fields[2].partition(":")
                if port == 0 or remote != zero or remote_port != "0000":
                    continue
            address = addresses.get(local)
            if address is None:
                address = addresses[local] = _hex_to_address(local, family)
            uid, inode = int(fields[7]), int(fields[9])
        except (ValueError, OSError):  # OSError: inet_ntop; ValueError: hex, int, struct
            continue
        if not 0 <= port <= 0xFFFF or uid < 0 or inode < 0:
            continue
        rows.append(SocketRow(proto, family, port, address, inode, uid))
    return rows


def parse_sctp_eps(text: str) -> list[SocketRow]:
    """Listening endpoints of ``/proc/net/sctp/eps`` text, one row per local address.

    Format (net/sctp/proc.c, sctp_eps_seq_show)::

         ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS
        <ep %8p> <sk %8p> <type> <sk_state> <hash> <port> <uid> <inode> <addr> <addr> ...

    addresses printed with %pI4 / %pI6 (full form: 2001:0db8:0000:...), each followed by a space.
    Only endpoints in SCTP_SS_LISTENING (10) are kept: a one-to-many socket that never called listen()
    aborts incoming associations. The family is the address's (a v6 socket may bind v4 addresses).
    """
    rows: list[SocketRow] = []
    seen: set[tuple[int, str]] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 9 or fields[0] == "ENDPT":
            continue
        try:
            state, port, uid, inode = int(fields[3]), int(fields[5]), int(fields[6]), int(fields[7])
        except ValueError:
            continue
        if state != SCTP_SS_LISTENING or not 0 < port <= 0xFFFF or uid < 0 or inode < 0:
            continue
        for token in fields[8:]:
            text_address = token.lstrip("*")  # "*" marks an association's primary path, never on eps
            try:
                if ":" in text_address:
                    address = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text_address))
                    family = 6
                else:
                    address = socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text_address))
                    family = 4
            except (OSError, ValueError):  # ValueError: embedded NUL
                continue
            if (inode, address) not in seen:  # the same address twice would make rows tie on inode
                seen.add((inode, address))
                rows.append(SocketRow("sctp", family, port, address, inode, uid))
    return rows


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:  # comm may be any bytes
            return handle.read()
    except OSError:
        return None


def _read_proc_rows(proc: str, tables: Iterable[tuple[str, int]]) -> list[SocketRow]:
    rows: list[SocketRow] = []
    for proto, family in tables:
        name = proto if family == 4 else f"{proto}6"
        text = _read_text(f"{proc}/net/{name}")
        if text is not None:  # no tcp6 file: IPv6 disabled, nothing listens on it
            rows.extend(parse_proc_net(text, proto, family))
    return rows


def _read_sctp_rows(proc: str) -> list[SocketRow]:
    text = _read_text(f"{proc}/net/sctp/eps")
    return parse_sctp_eps(text) if text is not None else []


# --- NETLINK_SOCK_DIAG --------------------------------------------------------------------------
NETLINK_SOCK_DIAG = 4  # linux/netlink.h (the socket module has no constant for it)
SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h
NLM_F_REQUEST = 0x01
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_SKV6ONLY = 11  # linux/inet_diag.h; sent for AF_INET6 sockets in LISTEN or CLOSE
NLA_TYPE_MASK = 0x3FFF
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states; then inet_diag_sockid (48 bytes, zero: no filter)
_REQ = struct.Struct("=BBBxI48x")
# inet_diag_msg: family state timer retrans | sport dport (big-endian) src[16] dst[16] if cookie[8] |
# expires rqueue wqueue uid inode. Ports are read raw and swapped with ntohs (the rest is native).
_REPLY = struct.Struct("=IHHII" "BBxxHH16s16sI8x12xII")  # nlmsghdr + inet_diag_msg: 16 + 72 bytes
_RTA = struct.Struct("=HH")
_RECV_BUFFER = 1 << 16  # the kernel sizes dump skbs by our largest recv, up to 32 KiB
_ZERO16 = bytes(16)


def _diag_socket() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    except OSError as error:
        raise SockDiagUnavailable(error.errno, f"cannot open NETLINK_SOCK_DIAG: {error.strerror}") from None
    return sock


def _dump_table(sock: socket.socket, seq: int, proto: str, family: int, buffer: bytearray) -> list[SocketRow]:
    """One SOCK_DIAG_BY_FAMILY dump of ``proto``/``family`` listeners, parsed as the replies arrive.

    One struct unpack per reply (nlmsghdr and inet_diag_msg together) and an address cache: the
    loop runs once per socket, so it is kept flat.
    """
    if proto == "tcp":
        protocol, states = socket.IPPROTO_TCP, 1 << TCP_LISTEN
    elif proto == "udp":
        protocol, states = socket.IPPROTO_UDP, 1 << TCP_CLOSE
    else:
        raise ValueError(f"sock_diag reader handles tcp and udp, not {proto!r}")
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    payload = _REQ.pack(af, protocol, 0, states)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    sock.send(header + payload)
    width = 4 if family == 4 else 16
    is_udp, is_v6 = proto == "udp", family == 6
    unpack, unpack_rta, ntohs, inet_ntop = _REPLY.unpack_from, _RTA.unpack_from, socket.ntohs, socket.inet_ntop
    new_row = tuple.__new__  # SocketRow(...) without the Python-level __new__ frame
    addresses: dict[bytes, str] = {}  # keyed by the whole 16-byte field: v4 leaves the rest zero
    rows: list[SocketRow] = []
    append = rows.append
    limit = len(buffer) - _REPLY.size
    while True:
        size = sock.recv_into(buffer)
        if size == 0:
            raise SockDiagUnavailable(errno_codes.EPROTO, "sock_diag dump ended without NLMSG_DONE")
        offset = 0
        while offset + 16 <= size:
            if offset > limit:  # cannot happen with recv sizes the kernel uses; keeps unpack in bounds
                raise SockDiagUnavailable(errno_codes.EPROTO, "sock_diag reply does not fit the buffer")
            length, kind, _flags, reply_seq, _pid, _fam, _state, sport, dport, src, dst, ifindex, uid, inode = unpack(
                buffer, offset
            )
            if length < 16 or offset + length > size:
                raise SockDiagUnavailable(errno_codes.EPROTO, "truncated sock_diag reply")
            end = offset + length
            if reply_seq != seq:
                pass  # a stale reply to an earlier request on this socket
            elif kind == SOCK_DIAG_BY_FAMILY and length >= _REPLY.size:
                port = ntohs(sport)
                if not is_udp or (port and not dport and dst == _ZERO16):  # UDP: unconnected, real port
                    address = addresses.get(src)
                    if address is None:
                        address = addresses[src] = inet_ntop(af, src[:width])
                    v6only: bool | None = None
                    if is_v6:
                        attr = offset + _REPLY.size
                        while attr + 4 <= end:
                            attr_len, attr_kind = unpack_rta(buffer, attr)
                            if attr_len < 4:
                                break
                            if attr_kind & NLA_TYPE_MASK == INET_DIAG_SKV6ONLY and attr_len >= 5:
                                v6only = buffer[attr + 4] != 0
                                break
                            attr += (attr_len + 3) & ~3
                    append(new_row(SocketRow, (proto, family, port, address, inode, uid, v6only, ifindex)))
            elif kind == NLMSG_DONE:
                return rows
            elif kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", buffer, offset + 16)[0] if length >= 20 else errno_codes.EPROTO
                raise SockDiagUnavailable(code, f"sock_diag dump refused: {os.strerror(code)}")
            offset += (length + 3) & ~3


def read_sock_diag(tables: Iterable[tuple[str, int]] = (("tcp", 4), ("tcp", 6), ("udp", 4), ("udp", 6))) -> (
    list[SocketRow]
):
    """Listening sockets of the current network namespace from NETLINK_SOCK_DIAG.

    ``tables``: (proto, family) pairs, proto "tcp" or "udp". TCP: state LISTEN; UDP: state CLOSE
    (unconnected) with a zero remote address and a non-zero local port, as ``ss -uln`` shows.
    Raises SockDiagUnavailable when the kernel cannot answer (the caller falls back to /proc/net).
    """
    rows: list[SocketRow] = []
    buffer = bytearray(_RECV_BUFFER)
    with _diag_socket() as sock:
        for seq, (proto, family) in enumerate(tables, start=1):
            rows.extend(_dump_table(sock, seq, proto, family, buffer))
    return rows


# --- processes ---------------------------------------------------------------------------------
# From this many fds on, two threads share the readlinks: the cost is in the kernel (a readlink of a
# /proc fd is ~3-4 us here, the GIL is held ~0.4 us of it), so a second CPU cuts the scan by a third.
_SPLIT_FDS = 2048

_FdWork = list[tuple[int, bytes, list[bytes]]]  # (pid, b"/proc/PID/fd", fd names), ascending pids


def _holders(proc: str, inodes: Iterable[int]) -> dict[int, tuple[int, ...]]:
    """inode -> ascending pids holding it, in one pass over /proc/[0-9]*/fd.

    Each fd costs one readlink (the cheapest syscall that names a socket) and one dict lookup of the
    raw link text among the wanted "socket:[N]" strings: no decoding, no parsing of other fds. Bytes
    throughout, and a directory fd so each readlink resolves one name instead of a whole path.
    Processes that vanish or deny access are skipped.
    """
    wanted = {b"socket:[%d]" % inode: inode for inode in inodes}
    if not wanted:
        return {}
    proc_b = os.fsencode(proc)
    try:
        entries = os.listdir(proc_b)
    except OSError:
        return {}
    work: _FdWork = []
    total = 0
    for pid in sorted(int(name) for name in entries if name.isdigit()):
        fd_dir = b"%s/%d/fd" % (proc_b, pid)
        try:
            names = os.listdir(fd_dir)
        except OSError:  # gone, or no permission
            continue
        if names:
            work.append((pid, fd_dir, names))
            total += len(names)
    if total >= _SPLIT_FDS and (os.cpu_count() or 1) > 1:
        first, second = _halves(work, total)
        other: list[tuple[int, int]] = []
        helper = threading.Thread(target=_scan_fds, args=(second, wanted, other), daemon=True)
        helper.start()
        pairs = _scan_fds(first, wanted, [])
        helper.join()
        pairs += other  # the second half's pids follow the first's: still ascending
    else:
        pairs = _scan_fds(work, wanted, [])
    found: dict[int, list[int]] = {}
    for pid, inode in pairs:
        pids = found.get(inode)
        if pids is None:
            found[inode] = [pid]
        elif pids[-1] != pid:  # dup()ed fds: one entry per process
            pids.append(pid)
    return {inode: tuple(pids) for inode, pids in found.items()}


def _halves(work: _FdWork, total: int) -> tuple[_FdWork, _FdWork]:
    """Cut ``work`` in two runs of about total/2 fds each, splitting one process's names if needed."""
    count, half = 0, total // 2
    for index, (pid, fd_dir, names) in enumerate(work):
        if count + len(names) >= half:
            cut = half - count  # 0 <= cut <= len(names); no empty pieces
            head = [*work[:index], (pid, fd_dir, names[:cut])] if cut else work[:index]
            tail = [(pid, fd_dir, names[cut:]), *work[index + 1 :]] if cut < len(names) else work[index + 1 :]
            return head, tail
        count += len(names)
    return work, []


def _scan_fds(work: _FdWork, wanted: dict[bytes, int], out: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Append (pid, inode) to ``out`` for every fd of ``work`` that is a wanted socket."""
    readlink, get, append = os.readlink, wanted.get, out.append
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    for pid, fd_dir, names in work:
        try:
            dir_fd = os.open(fd_dir, flags)
        except OSError:  # gone since it was listed
            continue
        try:
            for name in names:
                try:
                    inode = get(readlink(name, dir_fd=dir_fd))
                except OSError:  # fd closed meanwhile
                    continue
                if inode is not None:
                    append((pid, inode))
        finally:
            os.close(dir_fd)
    return out


def _comm(proc: str, pid: int) -> str | None:
    text = _read_text(f"{proc}/{pid}/comm")
    return text.rstrip("\n") if text else None


def _cgroup_unit(proc: str, pid: int) -> str | None:
    text = _read_text(f"{proc}/{pid}/cgroup")
    return unit_from_cgroup(text) if text else None


# --- systemd units -----------------------------------------------------------------------------
_UNIT_SUFFIXES = (".service", ".socket", ".scope", ".mount", ".swap", ".slice")


def unit_from_cgroup(text: str) -> str | None:
    """The systemd unit of a process from its ``/proc/PID/cgroup`` text, or None.

    Uses the cgroup v2 line (``0::/system.slice/ssh.service``), else the v1 ``name=systemd`` one. The
    path is read from the root while its components are unit names: the deepest unit wins, so
    ``user@0.service/app.slice/x.service`` -> ``x.service`` and ``foo.service/payload`` (a delegated
    subtree) -> ``foo.service``; ``init.scope`` under a service is that service's own manager. A path
    that does not start with a unit (``/docker/<id>``, ``/lxc/...``) or is ``/`` gives None: those
    names are not units of this host's systemd.
    """
    v2: str | None = None
    v1: str | None = None
    for line in text.splitlines():
        hierarchy, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not sep or not sep2:
            continue
        if hierarchy == "0" and controllers == "":
            v2 = path.strip()
        elif "name=systemd" in controllers.split(","):
            v1 = path.strip()
    # hybrid hierarchy: the v2 line may be "/" (unused) while name=systemd holds the real path
    for candidate in (v2, v1):
        if candidate and candidate != "/":
            unit = _unit_from_path(candidate)
            if unit is not None:
                return unit
    return None


def _unit_from_path(path: str) -> str | None:
    chain: list[str] = []
    for component in path.strip("/").split("/"):
        if not component.endswith(_UNIT_SUFFIXES) or component.startswith("."):
            break
        chain.append(component)
    if not chain:
        return None
    if chain[-1] == "init.scope" and len(chain) > 1 and chain[-2].endswith(".service"):
        return chain[-2]  # user@0.service/init.scope: the user manager itself
    return chain[-1]


# Unit search path of the system manager, highest priority first (systemd.unit(5)): /etc, /run and
# /usr/lib, /lib, plus the transient, generator and /usr/local directories, in systemd's order.
_UNIT_DIRS = (
    "run/systemd/transient",
    "etc/systemd/system",
    "run/systemd/system",
    "run/systemd/generator",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
)
_LISTEN_KEYS = {"ListenStream": "stream", "ListenDatagram": "datagram", "ListenSequentialPacket": "seqpacket"}
# Every Listen*= line takes part in a reset by an empty assignment (systemd.socket(5)), even the
# non-IP ones we otherwise ignore.
_RESET_KEYS = frozenset(
    {*_LISTEN_KEYS, "ListenFIFO", "ListenSpecial", "ListenNetlink", "ListenMessageQueue", "ListenUSBFunction"}
)


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _unit_file(root: Path, path: Path) -> str:
    """Text of a unit file (following symlinks inside ``root``); "" when masked or unreadable."""
    for _ in range(8):  # symlink chains (aliases) are short; give up on loops
        try:
            target = os.readlink(path)
        except OSError:  # not a symlink (or gone)
            break
        if target == "/dev/null":
            return ""  # masked: shadows every lower-priority file of that name
        path = _under(root, target) if target.startswith("/") else path.parent / target
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _logical_lines(text: str) -> Iterator[str]:
    """Unit-file lines with backslash continuations joined and comments dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield (pending + line).strip()
        pending = ""
    if pending:
        yield pending.strip()


def _apply_socket_section(text: str, listens: list[tuple[str, str]], protocol: list[str]) -> None:
    """Fold one unit file / drop-in's [Socket] Listen*= and SocketProtocol= into the running state."""
    section = ""
    for line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section != "Socket":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key in _RESET_KEYS and value == "":
            listens.clear()
        elif key in _LISTEN_KEYS:
            listens.append((_LISTEN_KEYS[key], value))
        elif key == "SocketProtocol":
            protocol[:] = [value.lower()] if value else []


def _parse_listen_address(value: str) -> tuple[str | None, int] | None:
    """(address or None for "any", port) of an IP Listen*= value; None for paths, vsock, specifiers.

    The forms systemd accepts: "22", "198.18.0.1:22", "[2001:db8::1]:22", "[fe80::1%eth0]:22"; an
    IPv6 address must be bracketed, as systemd parses "a:b" as IPv4 address and port.
    """
    value = value.strip()
    if value.isascii() and value.isdigit():
        port = int(value)
        return (None, port) if 0 < port <= 0xFFFF else None
    if value.startswith("["):
        family = socket.AF_INET6
        host, sep, port_text = value[1:].partition("]:")
        host = host.partition("%")[0]  # [fe80::1%eth0]:22: the scope is an interface, not the address
    else:
        family = socket.AF_INET
        host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 0xFFFF:
        return None
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, host)), int(port_text)
    except (OSError, ValueError):  # not an address of that family; ValueError: embedded NUL
        return None


def _listen_proto(kind: str, protocol: str | None) -> str | None:
    if kind == "stream":
        return "sctp" if protocol == "sctp" else "tcp"
    if kind == "datagram":
        return "udplite" if protocol == "udplite" else "udp"
    return "sctp" if protocol == "sctp" else None  # SOCK_SEQPACKET over IP only exists for SCTP


def socket_units(root: Path = Path("/")) -> dict[str, tuple[SocketListen, ...]]:
    """``.socket`` units under ``root`` and the IP addresses they listen on: {"ssh.socket": (...), ...}.

    Resolution follows systemd: the first directory of the search path holding a unit name wins
    (a link to /dev/null masks it); ``<name>.d/*.conf`` drop-ins from every directory apply after it,
    in file-name order, a name in a higher-priority directory shadowing the same name lower down; an
    empty ``ListenStream=`` (or any ``Listen*=``) resets the list. Template units (``foo@.socket``)
    are skipped: their instances' addresses are not in any file. Units without IP listens are left out.
    """
    units: dict[str, Path] = {}
    dropins: dict[str, dict[str, Path]] = {}
    for directory in _UNIT_DIRS:
        base = root / directory
        try:
            entries = sorted(os.listdir(base))
        except OSError:
            continue
        for name in entries:
            if name.endswith(".socket") and "@." not in name:
                units.setdefault(name, base / name)
            elif name.endswith(".socket.d") and "@." not in name:
                unit = name[:-2]
                try:
                    confs = os.listdir(base / name)
                except OSError:
                    continue
                for conf in confs:
                    if conf.endswith(".conf"):
                        dropins.setdefault(unit, {}).setdefault(conf, base / name / conf)
    result: dict[str, tuple[SocketListen, ...]] = {}
    for name, path in sorted(units.items()):
        text = _unit_file(root, path)
        if not text:  # masked or empty: systemd would not load it, drop-ins or not
            continue
        listens: list[tuple[str, str]] = []
        protocol: list[str] = []
        _apply_socket_section(text, listens, protocol)
        for conf in sorted(dropins.get(name, {})):
            _apply_socket_section(_unit_file(root, dropins[name][conf]), listens, protocol)
        found: list[SocketListen] = []
        for kind, value in listens:
            proto = _listen_proto(kind, protocol[0] if protocol else None)
            parsed = _parse_listen_address(value)
            if proto is not None and parsed is not None:
                found.append(SocketListen(name, proto, parsed[0], parsed[1]))
        if found:
            result[name] = tuple(found)
    return result


def _socket_unit_index(root: Path) -> dict[tuple[str, int], list[SocketListen]]:
    index: dict[tuple[str, int], list[SocketListen]] = {}
    for listens in socket_units(root).values():
        for listen in listens:
            index.setdefault((listen.proto, listen.port), []).append(listen)
    return index


def _match_socket_unit(index: dict[tuple[str, int], list[SocketListen]], row: SocketRow) -> str | None:
    candidates = index.get((row.proto, row.port), [])
    for listen in candidates:  # an exact address first ...
        if listen.address == row.address:
            return listen.unit
    for listen in candidates:  # ... then the port-only form, which binds the wildcard
        if listen.address is None:
            return listen.unit
    return None


# --- the whole thing ---------------------------------------------------------------------------
_TABLES = (("tcp", 4), ("tcp", 6), ("udp", 4), ("udp", 6))


def _read_rows(proc: Path, source: Source) -> list[SocketRow]:
    proc_s = str(proc)
    use_diag = source == "sock_diag" or (source == "auto" and os.path.realpath(proc_s) == "/proc")
    rows: list[SocketRow] = []
    if use_diag:
        missing: list[tuple[str, int]] = []
        buffer = bytearray(_RECV_BUFFER)
        try:
            sock = _diag_socket()
        except SockDiagUnavailable:
            if source == "sock_diag":
                raise
            missing = list(_TABLES)
        else:
            with sock:
                for seq, (proto, family) in enumerate(_TABLES, start=1):
                    try:  # table by table, so a missing udp_diag module does not lose tcp
                        rows.extend(_dump_table(sock, seq, proto, family, buffer))
                    except OSError:  # SockDiagUnavailable, or the socket itself failed: /proc still works
                        if source == "sock_diag":
                            raise
                        missing.append((proto, family))
        rows.extend(_read_proc_rows(proc_s, missing))
    else:
        rows.extend(_read_proc_rows(proc_s, _TABLES))
    rows.extend(_read_sctp_rows(proc_s))
    return rows


def list_listeners(
    proc: Path = Path("/proc"),
    *,
    resolve_processes: bool = True,
    unit_root: Path = Path("/"),
    source: Source = "auto",
) -> list[Listener]:
    """Every listening socket of the caller's network namespace, sorted by (proto, family, port, address).

    ``source``: "auto" reads sock_diag when ``proc`` is the real /proc (falling back to /proc/net per
    table when a diag module is missing) and ``proc``/net/* otherwise; "sock_diag" or "proc" force one.
    ``resolve_processes=False`` skips the /proc/*/fd pass: pid, process and unit stay None.
    ``unit_root`` is where systemd unit files are looked up for sockets held by systemd (PID 1).
    """
    rows = _read_rows(proc, source)
    try:
        rows.sort()  # the fields are in sort order; a tie never reaches v6only (inode is unique) ...
    except TypeError:  # ... unless a socket changed between two table reads: None vs bool
        rows.sort(key=lambda r: (r.proto, r.family, r.port, r.address, r.inode))
    proc_s = str(proc)
    holders = _holders(proc_s, {row.inode for row in rows if row.inode}) if resolve_processes else {}
    interfaces = {ifindex: _interface_name(ifindex) for ifindex in {row.ifindex for row in rows}}
    processes: dict[int, tuple[str | None, str | None]] = {}  # pid -> (comm, unit from cgroup)
    for pids in holders.values():
        if pids[0] not in processes:  # only the lowest pid is named: it is the one reported
            processes[pids[0]] = (_comm(proc_s, pids[0]), _cgroup_unit(proc_s, pids[0]))
    activation = _activation_units(proc_s, rows, holders, processes, unit_root)
    nobody: tuple[int, ...] = ()
    listeners: list[Listener] = []
    append = listeners.append
    last: SocketRow | None = None
    for row in rows:  # runs once per socket: locals and tuple unpacking only
        if row == last:  # a dump that resumed across a table change may repeat a socket; sorted: adjacent
            continue
        last = row
        proto, family, port, address, inode, uid, v6only, ifindex = row
        held = holders.get(inode, nobody)
        if held:
            pid: int | None = held[0]
            name, unit = processes[held[0]]
            if activation and inode in activation:
                unit = activation[inode]
        else:
            pid = name = unit = None
        append(Listener(proto, family, address, port, inode, uid, v6only, pid, held, name, unit, interfaces[ifindex]))
    return listeners


def _activation_units(
    proc: str,
    rows: list[SocketRow],
    holders: dict[int, tuple[int, ...]],
    processes: dict[int, tuple[str | None, str | None]],
    unit_root: Path,
) -> dict[int, str | None]:
    """inode -> unit for the sockets systemd (PID 1) holds for socket activation.

    Their cgroup says init.scope, which is not what anyone wants to read: the .socket unit whose
    Listen*= names the socket is. Unit files are only read when PID 1 is systemd and holds a listener.
    When no unit file matches, the unit of the activated service (another holder) if any, else
    PID 1's own.
    """
    if 1 not in processes or not _is_systemd(proc, processes[1][0]) or (processes[1][1] or "").endswith(".socket"):
        return {}
    held = [row for row in rows if holders.get(row.inode, (0,))[0] == 1]
    index = _socket_unit_index(unit_root)
    units: dict[int, str | None] = {}
    for row in held:
        unit = _match_socket_unit(index, row)
        if unit is None:
            others = holders[row.inode][1:]
            unit = _cgroup_unit(proc, others[0]) if others else None
        units[row.inode] = unit or processes[1][1]
    return units


def _is_systemd(proc: str, comm: str | None) -> bool:
    """PID 1 is systemd: its name, or (booted as /sbin/init, a symlink) its executable's name."""
    if comm == "systemd":
        return True
    try:
        return os.path.basename(os.readlink(f"{proc}/1/exe")) == "systemd"
    except OSError:  # not root, or not a link (fake trees)
        return False


def _interface_name(ifindex: int) -> str | None:
    if ifindex <= 0:
        return None
    try:
        return socket.if_indextoname(ifindex)
    except OSError:  # the device went away since the dump
        return None
