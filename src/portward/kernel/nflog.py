"""NFLOG over raw netlink: the packets an nftables `log group N` rule copies to user space.

One `NflogSocket(group)` binds one nfnetlink_log group of the current network namespace and yields parsed
`PacketEvent`s; it is non-blocking and has a `fileno()`, so an asyncio loop drives it with `add_reader`.
Only the network and transport headers are copied (copy_range), and every packet is sent at once (qthresh 1,
timeout 0): the kernel's defaults batch up to 100 packets for up to one second.

Messages and attributes follow linux/netfilter/nfnetlink_log.h. Pure stdlib, like nfnetlink.py.
"""

from __future__ import annotations

import errno as errno_codes
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from types import TracebackType

from portward.kernel.nfnetlink import (
    NETLINK_NETFILTER,
    NFGENMSG,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSGHDR,
    SO_RCVBUFFORCE,
    NetlinkError,
    nfnl_message,
    nla,
    parse_nlas,
)

__all__ = [
    "TCP_ACK",
    "TCP_FIN",
    "TCP_PSH",
    "TCP_RST",
    "TCP_SYN",
    "TCP_URG",
    "NflogSocket",
    "PacketEvent",
    "parse_packet",
]

# --- nfnetlink_log (linux/netfilter/nfnetlink_log.h) -------------------------------------------
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1

NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4  # in 1/100 s
NFULA_CFG_QTHRESH = 5
NFULA_CFG_FLAGS = 6

NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_PF_BIND = 3
NFULNL_CFG_CMD_PF_UNBIND = 4
NFULNL_COPY_PACKET = 2
NFULNL_CFG_F_SEQ = 0x0001  # number the messages of this group: gaps are packets the kernel could not deliver

NFULA_PACKET_HDR = 1
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_SEQ = 12

NLMSG_DONE = 3
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 58: "icmpv6", 132: "sctp", 136: "udplite"}
_FAMILIES = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}  # nfgenmsg family of the packet -> 4 or 6
_WITH_PORTS = frozenset({6, 17, 33, 132, 136})  # transport headers that start with source and destination port
# IPv6 extension headers walked to reach the transport header: hop-by-hop, routing, destination options;
# fragment (44) and AH (51) have their own length rules below.
_IPV6_OPTIONS = frozenset({0, 43, 60})

_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">QQ")  # struct nfulnl_msg_packet_timestamp: sec, usec
_MODE = struct.Struct(">IBB")  # struct nfulnl_msg_config_mode (packed): copy_range, copy_mode, pad

DEFAULT_COPY_RANGE = 128  # IPv4 with options (60) or IPv6 with an extension header, plus a TCP header
DEFAULT_RCVBUF = 8 << 20  # a burst of ~30k small messages before the kernel drops any
REPLY_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class PacketEvent:
    """One logged packet. ``time`` is the kernel's timestamp when it sent one, else the receive time
    (both wall clock, seconds); ports and flags are 0 when the packet has none (or a later fragment)."""

    time: float
    family: int  # 4 or 6
    src: str
    dst: str
    proto: str  # "tcp", "udp", "icmp", ... or the protocol number as text
    sport: int
    dport: int
    tcp_flags: int  # TCP_SYN | TCP_ACK ...; 0 unless proto == "tcp"
    iface: str  # input interface, "" when unknown (output hooks) or gone
    prefix: str  # the rule's `log prefix`
    data: bytes = b""  # a UDP datagram's payload, as far as the copy range reached (SPA packets)


def parse_packet(
    payload: bytes, family: int, *, time: float = 0.0, iface: str = "", prefix: str = ""
) -> PacketEvent | None:
    """The addresses, protocol, ports and TCP flags of a packet starting at its network header.

    ``family`` is 4 or 6. None when the bytes are not a whole IP header of that family; a transport header
    cut short by the copy range gives ports 0 rather than None, so the packet is still seen.
    """
    if family == 4:
        if len(payload) < 20 or payload[0] >> 4 != 4:
            return None
        header_length = (payload[0] & 0x0F) * 4
        if header_length < 20 or header_length > len(payload):
            return None
        number = payload[9]
        later_fragment = _BE16.unpack_from(payload, 6)[0] & 0x1FFF != 0
        src, dst = _ntop(socket.AF_INET, payload[12:16]), _ntop(socket.AF_INET, payload[16:20])
        offset: int | None = None if later_fragment else header_length
    elif family == 6:
        if len(payload) < 40 or payload[0] >> 4 != 6:
            return None
        src, dst = _ntop(socket.AF_INET6, payload[8:24]), _ntop(socket.AF_INET6, payload[24:40])
        number, offset = _ipv6_transport(payload)
    else:
        return None
    sport = dport = flags = 0
    data = b""
    if offset is not None and number in _WITH_PORTS and offset + 4 <= len(payload):
        sport, dport = struct.unpack_from(">HH", payload, offset)
        if number == 6:
            flags = payload[offset + 13] if offset + 14 <= len(payload) else 0
        elif number == 17 and len(payload) > offset + 8:
            data = payload[offset + 8 :]
    proto = PROTOCOLS.get(number, str(number))
    return PacketEvent(time, family, src, dst, proto, sport, dport, flags, iface, prefix, data)


_ntop = socket.inet_ntop  # RFC 5952 text like ipaddress's, 10x faster


def _ipv6_transport(payload: bytes) -> tuple[int, int | None]:
    """(upper-layer protocol, offset of its header or None when unreachable) past IPv6 extension headers."""
    number, offset = payload[6], 40
    for _ in range(8):  # a real packet has a few at most; a crafted chain must not keep us busy
        if number in _IPV6_OPTIONS:
            if offset + 2 > len(payload):
                return number, None
            number, offset = payload[offset], offset + (payload[offset + 1] + 1) * 8
        elif number == 44:  # fragment header: only the first fragment carries the transport header
            if offset + 8 > len(payload):
                return number, None
            if _BE16.unpack_from(payload, offset + 2)[0] >> 3:
                return payload[offset], None
            number, offset = payload[offset], offset + 8
        elif number == 51:  # AH: length in 4-octet units, minus 2
            if offset + 2 > len(payload):
                return number, None
            number, offset = payload[offset], offset + (payload[offset + 1] + 2) * 4
        else:
            return number, offset
    return number, None


# --- netlink encoding ---------------------------------------------------------------------------


def _config(seq: int, family: int, group: int, attributes: bytes) -> bytes:
    return nfnl_message(
        (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, family, group, attributes
    )


_names: dict[int, tuple[str, float]] = {}
NAME_TTL_S = 1.0


def _interface_name(index: int) -> str:
    # if_indextoname() opens a socket for one ioctl (~10 us, a quarter of the work per packet), so names are
    # cached -- for a second only, since an index can name another interface after a rename or re-create.
    now = time.monotonic()
    cached = _names.get(index)
    if cached is not None and cached[1] > now:
        return cached[0]
    try:
        name = socket.if_indextoname(index)
    except OSError:
        name = ""
    if len(_names) > 4096:
        _names.clear()
    _names[index] = (name, now + NAME_TTL_S)
    return name


class NflogSocket:
    """One NFLOG group of the current network namespace, read without blocking.

    ``dropped`` counts packets the kernel logged but could not deliver (gaps in the group's sequence
    numbers); ``overruns`` counts the ENOBUFS reports behind them. Neither stops the reader.
    Raises NetlinkError when the group cannot be bound (EBUSY: another process holds it).

    ``bind_pf`` sends PF_UNBIND/PF_BIND for AF_INET and AF_INET6 first, as libnetfilter_log's examples do.
    nft's `log group` finds nfnetlink_log by logger type and does not need it, while PF_BIND replaces the
    namespace's default logger (the one nf_conntrack_log_invalid uses), so it is off unless asked for.
    """

    def __init__(
        self,
        group: int,
        *,
        copy_range: int = DEFAULT_COPY_RANGE,
        rcvbuf: int = DEFAULT_RCVBUF,
        bind_pf: bool = False,
    ) -> None:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"NFLOG group must be 0-65535, got {group}")
        if not 1 <= copy_range <= 0xFFFF:
            raise ValueError(f"copy_range must be 1-65535, got {copy_range}")
        self.group = group
        self.dropped = 0
        self.overruns = 0
        self._next_seq: int | None = None
        self._pending: list[PacketEvent] = []
        self._buffer = bytearray(1 << 16)
        try:
            self._sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, NETLINK_NETFILTER
            )
        except OSError as error:
            err = error.errno or errno_codes.EIO
            raise NetlinkError(err, f"cannot open an nfnetlink socket: {os.strerror(err)}") from None
        try:
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            try:  # beyond net.core.rmem_max: a burst must not cost packets (CAP_NET_ADMIN)
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._bind(group, copy_range, bind_pf)
        except BaseException:
            self._sock.close()
            raise

    def _bind(self, group: int, copy_range: int, bind_pf: bool) -> None:
        seq = int(time.time()) & 0x7FFFFFFF
        messages: list[tuple[int, str]] = []
        data = b""
        if bind_pf:
            for family in (socket.AF_INET, socket.AF_INET6):
                for command, what in ((NFULNL_CFG_CMD_PF_UNBIND, "PF_UNBIND"), (NFULNL_CFG_CMD_PF_BIND, "PF_BIND")):
                    seq += 1
                    data += _config(seq, family, 0, nla(NFULA_CFG_CMD, bytes([command])))
                    messages.append((seq, f"{what} {family}"))
        seq += 1
        # One message: the kernel creates the instance for BIND, then applies the other attributes to it.
        data += _config(
            seq,
            socket.AF_UNSPEC,
            group,
            nla(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))
            + nla(NFULA_CFG_MODE, _MODE.pack(copy_range, NFULNL_COPY_PACKET, 0))
            + nla(NFULA_CFG_QTHRESH, _BE32.pack(1))
            + nla(NFULA_CFG_TIMEOUT, _BE32.pack(0))
            + nla(NFULA_CFG_FLAGS, _BE16.pack(NFULNL_CFG_F_SEQ)),
        )
        messages.append((seq, f"BIND group {group}"))
        try:
            self._sock.sendto(data, (0, 0))
        except OSError as error:
            err = error.errno or errno_codes.EIO
            raise NetlinkError(err, f"cannot configure NFLOG group {group}: {os.strerror(err)}") from None
        waiting: dict[int, str] = dict(messages)
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                raise NetlinkError(errno_codes.ETIMEDOUT, f"nfnetlink_log did not answer binding group {group}")
            n = self._sock.recv_into(self._buffer)
            for reply_seq, err in self._parse(memoryview(self._buffer)[:n]):
                what = waiting.pop(reply_seq, "")
                if what and err:
                    # EPERM (6.x) or EBUSY (older kernels): the group is bound by another socket of this namespace
                    busy = err in (errno_codes.EPERM, errno_codes.EBUSY)
                    hint = " (another process holds this group in this network namespace?)" if busy else ""
                    raise NetlinkError(err, f"nfnetlink_log refused {what}: {os.strerror(err)}{hint}")

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_events(self, limit: int = 4096) -> list[PacketEvent]:
        """Every packet queued now (at most ``limit`` datagrams read), without blocking."""
        events, self._pending = self._pending, []
        view = memoryview(self._buffer)
        for _ in range(limit):
            try:
                n = self._sock.recv_into(self._buffer)
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno == errno_codes.ENOBUFS:  # the queue overflowed; the sequence gap says by how much
                    self.overruns += 1
                    continue
                raise
            if n == 0:
                break
            self._parse(view[:n], events)
        return events

    def _parse(self, data: memoryview, events: list[PacketEvent] | None = None) -> list[tuple[int, int]]:
        """Packets into ``events`` (or the pending list); returns (seq, errno) of the ACKs and errors."""
        replies: list[tuple[int, int]] = []
        sink = self._pending if events is None else events
        pos = 0
        while pos + NLMSGHDR.size <= len(data):
            length, kind, _flags, seq, _portid = NLMSGHDR.unpack_from(data, pos)
            if length < NLMSGHDR.size or pos + length > len(data):
                break
            body = bytes(data[pos + NLMSGHDR.size : pos + length])
            pos += (length + 3) & ~3
            if kind == NLMSG_ERROR and len(body) >= 4:
                replies.append((seq, -int(struct.unpack_from("=i", body)[0])))
            elif kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET and len(body) >= NFGENMSG.size:
                event = self._packet(body)
                if event is not None:
                    sink.append(event)
            # NLMSG_DONE ends a multi-message batch (qthresh > 1); nothing else is expected here.
        return replies

    def _packet(self, body: bytes) -> PacketEvent | None:
        family = _FAMILIES.get(body[0])
        attributes = parse_nlas(body, NFGENMSG.size)
        raw_seq = attributes.get(NFULA_SEQ)
        if raw_seq is not None and len(raw_seq) == 4:
            seq = int(_BE32.unpack(raw_seq)[0])
            if self._next_seq is not None:
                self.dropped += (seq - self._next_seq) & 0xFFFFFFFF
            self._next_seq = (seq + 1) & 0xFFFFFFFF
        payload = attributes.get(NFULA_PAYLOAD)
        if family is None or payload is None:
            return None  # bridge/arp/netdev families carry other headers
        stamp = attributes.get(NFULA_TIMESTAMP)
        if stamp is not None and len(stamp) == _TIMESTAMP.size:
            seconds, micros = _TIMESTAMP.unpack(stamp)
            when = seconds + micros / 1e6
        else:  # the kernel sends one only when something enabled skb timestamps
            when = time.time()
        indev = attributes.get(NFULA_IFINDEX_INDEV)
        iface = _interface_name(int(_BE32.unpack(indev)[0])) if indev is not None and len(indev) == 4 else ""
        prefix = attributes.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode(errors="replace")
        return parse_packet(payload, family, time=when, iface=iface, prefix=prefix)

    def close(self) -> None:
        # Closing releases the group: the kernel drops the instances of a netlink port that goes away.
        self._sock.close()

    def __enter__(self) -> NflogSocket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
