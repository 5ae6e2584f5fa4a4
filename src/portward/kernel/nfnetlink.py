"""Raw nfnetlink for the two hot paths: the ruleset generation id and set element batches.

libnftables loads every element of every set in a table into its cache before any element
command, which costs seconds once a set holds ~100k intervals. This module talks to nf_tables
directly, so its cost is proportional to the change, not to the size of the sets.

A batch is one nfnetlink transaction (BATCH_BEGIN ... BATCH_END): the kernel applies every
message of it or none. Messages and attributes follow linux/netfilter/nf_tables.h and the way
libnftnl/nftables 1.0.6 encode them. Pure stdlib; the namespace is the caller's.
"""

from __future__ import annotations

import errno as errno_codes
import itertools
import os
import select
import socket
import struct
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ElementOp",
    "NetlinkError",
    "apply_element_batch",
    "concat_key",
    "get_generation",
    "interval_ops",
]

# --- netlink / nfnetlink constants (linux/netlink.h, linux/netfilter/nfnetlink.h) -------------
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors do not echo our (up to 64 KiB) message back
NETLINK_EXT_ACK = 11  # errors carry the offset of the offending attribute
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NLMSG_ERROR = 2
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an error reply: our message was not echoed
NLM_F_ACK_TLVS = 0x200  # in an error reply: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 16
NFNL_MSG_BATCH_END = 17
NFNL_BATCH_GENID = 1  # optional attribute of BATCH_BEGIN: refuse if the generation moved

# --- nf_tables (linux/netfilter/nf_tables.h) ---------------------------------------------------
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_FLAGS = 3
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_USERDATA = 6
NFTA_SET_ELEM_KEY_END = 10
NFTA_DATA_VALUE = 1
NFT_SET_ELEM_INTERVAL_END = 0x1

NFPROTO = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}

# libnftnl userdata TLV NFTNL_UDATA_SET_ELEM_FLAGS (type 1, len 4) holding
# NFTNL_SET_ELEM_F_INTERVAL_OPEN (1) in host byte order. The kernel ignores it; nft reads it back
# to print "a.b.c.d/n" for an interval with no end element, so we write exactly what nft writes.
OPEN_INTERVAL_USERDATA = b"\x01\x04" + struct.pack("=I", 1)

# The ELEMENTS nest has a 16-bit length, so one message can carry < 64 KiB of elements; stay
# well below, as libnftnl does, and start a new message (same batch) when full.
MAX_ELEMENTS_PAYLOAD = 60 * 1024
NAME_MAXLEN = 255  # NFT_NAME_MAXLEN (256) includes the NUL
NFT_DATA_VALUE_MAXLEN = 64
REPLY_TIMEOUT_S = 5.0  # replies are queued before sendto() returns; this is only a safety net

NLMSGHDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, portid
NFGENMSG = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (res_id stored big-endian)
NLATTR = struct.Struct("=HH")  # nlattr: len, type
_ERR = struct.Struct("=i")  # nlmsgerr.error (negative errno or 0), then the original nlmsghdr
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")

_ERRNO_HINTS = {
    errno_codes.ENOENT: "no such element, set or table",
    # the kernel reports an interval overlap (ENOTEMPTY inside) as EEXIST
    errno_codes.EEXIST: "overlaps an existing interval or element",
    errno_codes.ENFILE: "set is full (its size limit)",
    errno_codes.ERESTART: "the ruleset generation changed since it was read",
    errno_codes.EPERM: "needs CAP_NET_ADMIN in this network namespace",
    errno_codes.EINVAL: "element does not fit the set (key length, flags or timeout)",
}


class NetlinkError(OSError):
    """The kernel refused a request, or a reply was lost.

    ``errno`` is the kernel's errno; ``set_name``/``op`` name the message that failed
    (op is "add", "delete", "batch" or "getgen"); ``index`` is the position of the refused element
    in that set's ops when the kernel pointed at it. ``errors`` lists every failure reported for
    the batch as (errno, set_name, op, index): later messages may fail only because an earlier one
    did. ``outcome_unknown`` is True when replies were lost, so whether the batch committed is
    unknown: re-read the generation and the set.
    """

    def __init__(
        self,
        err: int,
        message: str,
        *,
        set_name: str | None = None,
        op: str | None = None,
        index: int | None = None,
        kernel_message: str | None = None,
        errors: Sequence[tuple[int, str | None, str | None, int | None]] = (),
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(err, message)
        self.set_name = set_name
        self.op = op
        self.index = index
        self.kernel_message = kernel_message
        self.errors = list(errors)
        self.outcome_unknown = outcome_unknown

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[object, ...]:
        # OSError pickles as cls(*args); keyword state must travel separately (tests fork+pickle).
        state = {
            "set_name": self.set_name,
            "op": self.op,
            "index": self.index,
            "kernel_message": self.kernel_message,
            "errors": self.errors,
            "outcome_unknown": self.outcome_unknown,
        }
        return (_rebuild_error, (self.errno, self.strerror, state))


def _rebuild_error(err: int, message: str, state: dict[str, object]) -> NetlinkError:
    error = NetlinkError(err, message)
    error.__dict__.update(state)
    return error


@dataclass(frozen=True)
class ElementOp:
    """One set element to add or delete, already in kernel key encoding (network byte order)."""

    op: Literal["add", "delete"]
    key: bytes  # 4 for ipv4_addr, 16 for ipv6_addr, concatenations: see concat_key()
    key_end: bytes | None = None  # NFTA_SET_ELEM_KEY_END, only for concatenated-range sets
    interval_end: bool = False  # NFT_SET_ELEM_INTERVAL_END: this key closes an interval
    open_interval: bool = False  # start element of an interval reaching the top of the space
    timeout_ms: int | None = None  # NFTA_SET_ELEM_TIMEOUT, sets with "flags timeout"

    # No __post_init__ validation: it would double the cost of building 200k of these;
    # apply_element_batch validates each element while encoding it.


def concat_key(*fields: bytes) -> bytes:
    """Key of a concatenated type: each field in network order, zero-padded to 4 bytes like nft."""
    return b"".join(f + b"\0" * (-len(f) % 4) for f in fields)


def interval_ops(op: Literal["add", "delete"], first: int, last: int, width_bytes: int) -> list[ElementOp]:
    """Elements nft uses for the interval [first, last] of an rbtree interval set.

    A start element at ``first`` and an INTERVAL_END element at ``last + 1``; when ``last`` is the
    top of the address space there is no ``last + 1``, so only the start element is sent, marked
    open in its userdata. (nft also adds an end element at 0 when filling an empty set; the kernel
    does not need it and listings are the same without it.)
    """
    top = (1 << (8 * width_bytes)) - 1
    if width_bytes <= 0 or not 0 <= first <= last <= top:
        raise ValueError(f"bad interval [{first}, {last}] for a {width_bytes}-byte key")
    start = first.to_bytes(width_bytes, "big")
    if last == top:
        return [_op(op, start, False, True)]
    return [_op(op, start, False, False), _op(op, (last + 1).to_bytes(width_bytes, "big"), True, False)]


def _op(op: Literal["add", "delete"], key: bytes, interval_end: bool, open_interval: bool) -> ElementOp:
    # Same object as ElementOp(...), built ~40% faster: a frozen dataclass __init__ goes through
    # object.__setattr__ per field, which dominates building 200k elements. (Tested for equality.)
    element: ElementOp = object.__new__(ElementOp)
    element.__dict__.update(
        op=op, key=key, key_end=None, interval_end=interval_end, open_interval=open_interval, timeout_ms=None
    )
    return element


# --- encoding ----------------------------------------------------------------------------------


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes (shared with kernel/nflog.py)."""
    return NLATTR.pack(4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _nest(kind: int, payload: bytes) -> bytes:
    # payload is a sequence of attributes, hence already 4-aligned
    return NLATTR.pack(4 + len(payload), kind | NLA_F_NESTED) + payload


def _strz(kind: int, name: str, what: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) > NAME_MAXLEN or b"\0" in raw:
        raise ValueError(f"bad {what} name {name!r}")
    return nla(kind, raw + b"\0")


_FLAGS_END = nla(NFTA_SET_ELEM_FLAGS, _BE32.pack(NFT_SET_ELEM_INTERVAL_END))
_USERDATA_OPEN = nla(NFTA_SET_ELEM_USERDATA, OPEN_INTERVAL_USERDATA)
_PACK_NLA = NLATTR.pack
_KEY_4 = _PACK_NLA(12, NFTA_SET_ELEM_KEY | NLA_F_NESTED) + _PACK_NLA(8, NFTA_DATA_VALUE)
# NFTA_LIST_ELEM header + key attributes of a 4-byte key, without and with the end flag after it
_START_4 = _PACK_NLA(16, NFTA_LIST_ELEM | NLA_F_NESTED) + _KEY_4
_END_4 = _PACK_NLA(16 + len(_FLAGS_END), NFTA_LIST_ELEM | NLA_F_NESTED) + _KEY_4


def _encode_element(e: ElementOp) -> bytes:
    """One NFTA_LIST_ELEM nest; ValueError if the element cannot be encoded."""
    key = e.key
    if len(key) == 4:  # fast path: ipv4 keys are most of a 100k batch
        body = _KEY_4 + key
    elif 0 < len(key) <= NFT_DATA_VALUE_MAXLEN:
        body = _nest(NFTA_SET_ELEM_KEY, nla(NFTA_DATA_VALUE, key))
    else:
        raise ValueError(f"key must be 1..{NFT_DATA_VALUE_MAXLEN} bytes, got {len(key)}")
    if e.key_end is not None:
        if not 0 < len(e.key_end) <= NFT_DATA_VALUE_MAXLEN:
            raise ValueError(f"key_end must be 1..{NFT_DATA_VALUE_MAXLEN} bytes, got {len(e.key_end)}")
        body += _nest(NFTA_SET_ELEM_KEY_END, nla(NFTA_DATA_VALUE, e.key_end))
    if e.interval_end:
        if e.open_interval:
            raise ValueError("an interval end element cannot open an interval")
        body += _FLAGS_END
    if e.timeout_ms is not None:
        if not 0 <= e.timeout_ms < 2**64:
            raise ValueError(f"timeout_ms out of range: {e.timeout_ms}")
        body += nla(NFTA_SET_ELEM_TIMEOUT, _BE64.pack(e.timeout_ms))
    if e.open_interval:
        body += _USERDATA_OPEN
    return _PACK_NLA(4 + len(body), NFTA_LIST_ELEM | NLA_F_NESTED) + body


def nfnl_message(msg_type: int, flags: int, seq: int, family: int, res_id: int, payload: bytes) -> bytes:
    nfgen = NFGENMSG.pack(family, 0, socket.htons(res_id))
    return NLMSGHDR.pack(NLMSGHDR.size + len(nfgen) + len(payload), msg_type, flags, seq, 0) + nfgen + payload


@dataclass
class _Sent:
    """What one message of a batch carried, to name it when the kernel refuses it.

    The elements are those of ``ops[lo:hi]`` whose op is ``op``; their offsets are worked out
    only when needed, so a 200k-element batch does no per-element bookkeeping.
    """

    set_name: str | None = None
    op: str = "batch"
    ops: Sequence[ElementOp] = ()
    lo: int = 0
    hi: int = 0
    base: int = 0  # offset of the first NFTA_LIST_ELEM from the start of the message

    def indices(self) -> list[int]:
        return [i for i in range(self.lo, self.hi) if self.ops[i].op == self.op]

    def offsets(self) -> list[int]:
        offsets = []
        offset = self.base
        for i in self.indices():
            offsets.append(offset)
            offset += len(_encode_element(self.ops[i]))
        return offsets

    def element_at(self, offset: int) -> int | None:
        """Index in ops of the element at (or containing) this offset of the message."""
        pos = bisect_right(self.offsets(), offset) - 1
        return self.indices()[pos] if pos >= 0 else None


def _build_batch(
    family: str,
    table: str,
    changes: Sequence[tuple[str, Sequence[ElementOp]]],
    seq0: int,
    expected_generation: int | None = None,
) -> tuple[list[bytes], dict[int, _Sent]]:
    """Encode the whole transaction; returns the messages and, per sequence number, what it was."""
    try:
        nfproto = NFPROTO[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(NFPROTO)}") from None
    table_attr = _strz(NFTA_SET_ELEM_LIST_TABLE, table, "table")
    names = [name for name, _ops in changes]
    if len(set(names)) != len(names):
        raise ValueError("each set may appear only once in changes")

    messages: list[bytes] = []
    sent: dict[int, _Sent] = {}
    seqs = (((seq0 + n) & 0xFFFFFFFF) or 1 for n in itertools.count(1))

    begin = next(seqs)
    genid = b"" if expected_generation is None else nla(NFNL_BATCH_GENID, _BE32.pack(expected_generation))
    messages.append(nfnl_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin, 0, NFNL_SUBSYS_NFTABLES, genid))
    sent[begin] = _Sent()

    # Deletes of every set first, so an add may reuse keys or space freed in the same transaction.
    for op, msg_type, flags in (
        ("delete", NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        ("add", NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
    ):
        for set_name, ops in changes:
            head = table_attr + _strz(NFTA_SET_ELEM_LIST_SET, set_name, "set")
            # where the first element starts: nlmsghdr + nfgenmsg + names + ELEMENTS nest header
            base = NLMSGHDR.size + NFGENMSG.size + len(head) + 4
            for chunk, lo, hi in _chunks(set_name, op, ops):
                seq = next(seqs)
                payload = head + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, b"".join(chunk))
                msg = nfnl_message((NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, seq, nfproto, 0, payload)
                messages.append(msg)
                sent[seq] = _Sent(set_name, op, ops, lo, hi, base)

    end = next(seqs)
    messages.append(nfnl_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES, b""))
    sent[end] = _Sent()
    return messages, sent


def _chunks(set_name: str, op: str, ops: Sequence[ElementOp]) -> Iterator[tuple[list[bytes], int, int]]:
    """The encoded ``op`` elements of ``ops`` in order, split so each message's ELEMENTS nest
    stays under MAX_ELEMENTS_PAYLOAD; each chunk with the slice ``lo:hi`` of ops it covers."""
    chunk: list[bytes] = []
    size = 0
    lo = 0
    for index, element in enumerate(ops):
        if element.op != op:
            if element.op not in ("add", "delete"):
                raise ValueError(f"set {set_name} element #{index}: op must be 'add' or 'delete'")
            continue
        key = element.key
        # inline fast path for plain ipv4 interval elements: most of a 100k batch
        if len(key) == 4 and element.key_end is None and element.timeout_ms is None and not element.open_interval:
            encoded = _END_4 + key + _FLAGS_END if element.interval_end else _START_4 + key
        else:
            try:
                encoded = _encode_element(element)
            except ValueError as error:
                raise ValueError(f"set {set_name} element #{index}: {error}") from None
        if size + len(encoded) > MAX_ELEMENTS_PAYLOAD and chunk:
            yield chunk, lo, index
            chunk, size, lo = [], 0, index
        chunk.append(encoded)
        size += len(encoded)
    if chunk:
        yield chunk, lo, len(ops)


# --- socket ------------------------------------------------------------------------------------


def _open_socket(send_bytes: int, replies: int) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    except OSError as error:  # e.g. EPROTONOSUPPORT: no nfnetlink in this kernel
        err = error.errno or errno_codes.EIO
        raise NetlinkError(err, f"cannot open an nfnetlink socket: {os.strerror(err)}") from None
    try:
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        # The whole batch goes in one sendto (the kernel needs BEGIN..END in one skb), and a
        # netlink send larger than the send buffer fails with EMSGSIZE.
        _grow_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, send_bytes + 65536)
        # Every ACK is queued before sendto() returns; an overflow would lose them (ENOBUFS).
        _grow_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, replies * 2048 + 65536)
    except BaseException:
        sock.close()
        raise
    return sock


def _grow_buffer(sock: socket.socket, option: int, force_option: int, wanted: int) -> None:
    # The kernel reports twice the value set; compare against what it reports.
    if sock.getsockopt(socket.SOL_SOCKET, option) >= 2 * wanted:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_option, wanted)  # beyond [rw]mem_max; CAP_NET_ADMIN
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, option, wanted)


def _send(sock: socket.socket, data: bytes, what: str) -> None:
    try:
        n = sock.sendto(data, (0, 0))
    except OSError as error:
        err = error.errno or errno_codes.EIO
        raise NetlinkError(err, f"cannot send {what} to nf_tables: {os.strerror(err)}", op=what) from None
    if n != len(data):
        message = f"short netlink send of {what}: {n} of {len(data)} bytes"
        raise NetlinkError(errno_codes.EMSGSIZE, message, op=what)


@dataclass
class _Reply:
    seq: int
    msg_type: int
    flags: int
    payload: bytes


def _parse(data: bytes) -> list[_Reply]:
    replies = []
    pos = 0
    while pos + NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _pid = NLMSGHDR.unpack_from(data, pos)
        if length < NLMSGHDR.size or pos + length > len(data):
            break
        replies.append(_Reply(seq, msg_type, flags, data[pos + NLMSGHDR.size : pos + length]))
        pos += (length + 3) & ~3
    return replies


def parse_nlas(data: bytes, pos: int = 0) -> dict[int, bytes]:
    """The netlink attributes from ``pos`` on, by type (flag bits masked off); a short attribute ends it."""
    found = {}
    while pos + 4 <= len(data):
        length, kind = NLATTR.unpack_from(data, pos)
        if length < 4 or pos + length > len(data):
            break
        found[kind & NLA_TYPE_MASK] = data[pos + 4 : pos + length]
        pos += (length + 3) & ~3
    return found


def _receive(sock: socket.socket, whole: set[int], pending: set[int]) -> list[_Reply]:
    """Read replies until every sequence number in ``pending`` got one, or an error came for one
    in ``whole`` (an error for BATCH_BEGIN answers for the whole batch), then drain the rest."""
    replies: list[_Reply] = []
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    buf = bytearray(1 << 17)
    while True:
        try:
            n = sock.recv_into(buf, len(buf), socket.MSG_DONTWAIT)
        except BlockingIOError:
            if not pending or whole & {r.seq for r in replies if _error_code(r)}:
                return replies
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise NetlinkError(
                    errno_codes.ETIMEDOUT,
                    "nf_tables did not answer every message; whether the batch committed is unknown",
                    op="batch",
                    outcome_unknown=True,
                ) from None
            continue
        except OSError as error:
            err = error.errno or errno_codes.EIO
            raise NetlinkError(
                err,
                f"lost nf_tables replies ({os.strerror(err)}); whether the batch committed is unknown",
                op="batch",
                outcome_unknown=True,
            ) from None
        for reply in _parse(bytes(buf[:n])):
            replies.append(reply)
            pending.discard(reply.seq)


def _error_code(reply: _Reply) -> int:
    """Positive errno of an NLMSG_ERROR reply, 0 for an ACK or any other message."""
    if reply.msg_type != NLMSG_ERROR or len(reply.payload) < _ERR.size:
        return 0
    return -int(_ERR.unpack_from(reply.payload)[0])


def _error_details(reply: _Reply) -> tuple[int | None, str | None]:
    """(offset of the bad attribute in our message, kernel's text) from an extended ACK."""
    if not reply.flags & NLM_F_ACK_TLVS:
        return None, None
    pos = _ERR.size + NLMSGHDR.size
    if not reply.flags & NLM_F_CAPPED:  # our whole message was echoed before the TLVs
        pos = _ERR.size + NLMSGHDR.unpack_from(reply.payload, _ERR.size)[0]
    tlvs = parse_nlas(reply.payload, pos)
    raw_offset = tlvs.get(NLMSGERR_ATTR_OFFS, b"")
    offset = int(struct.unpack("=I", raw_offset)[0]) if len(raw_offset) == 4 else None
    raw_text = tlvs.get(NLMSGERR_ATTR_MSG)
    text = raw_text.rstrip(b"\0").decode(errors="replace") if raw_text is not None else None
    return offset, text


def _seq0() -> int:
    return int(time.time()) & 0x7FFFFFFF


# --- public API --------------------------------------------------------------------------------


def get_generation() -> int:
    """The nf_tables ruleset generation of the current network namespace (bumped by every commit)."""
    seq = _seq0() or 1
    request = nfnl_message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, NLM_F_REQUEST, seq, 0, 0, b"")
    with _open_socket(len(request), 2) as sock:
        _send(sock, request, "getgen")
        for reply in _receive(sock, {seq}, {seq}):
            if reply.seq != seq:
                continue
            err = _error_code(reply)
            if err:
                raise NetlinkError(err, f"nf_tables refused GETGEN: {os.strerror(err)}", op="getgen")
            if reply.msg_type == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
                gen_id = parse_nlas(reply.payload, NFGENMSG.size).get(NFTA_GEN_ID)
                if gen_id is not None and len(gen_id) == 4:
                    return int(_BE32.unpack(gen_id)[0])
    raise NetlinkError(errno_codes.EPROTO, "nf_tables sent no generation id", op="getgen")


def apply_element_batch(
    family: str,
    table: str,
    changes: Sequence[tuple[str, Sequence[ElementOp]]],
    *,
    expected_generation: int | None = None,
) -> None:
    """Add and delete set elements of one table in ONE kernel transaction.

    ``changes`` is ``[(set_name, ops), ...]``; each set at most once. All deletes (of all sets,
    in order) go before all adds, so "delete 198.18.0.0/24, add 198.18.0.0/23" works. The kernel
    applies the whole batch or nothing; on refusal this raises NetlinkError naming the set, the op
    and, when the kernel says, the index of the refused element in that set's ops.

    Order matters in interval sets: keep each interval's start element immediately followed by
    its end element, as interval_ops returns them. The kernel pairs them by arrival order and
    refuses interleaved intervals (EEXIST on add, ENOENT on delete). Keys in ascending order
    make the kernel's part ~30% faster.

    Adding an element that exists is not an error (no NLM_F_EXCL, like ``nft add element``);
    an add overlapping an existing interval is (EEXIST), and so is deleting an element or
    interval that does not exist exactly (ENOENT). Unlike nft, nothing here checks overlaps
    against the set's contents, and the kernel misses overlaps involving an open interval (one
    reaching the top of the address space; 6.18 accepted several, and the set then lists wrong):
    send only intervals that do not overlap what the set holds after the deletes.

    ``expected_generation`` (from get_generation) makes the commit conditional: if any other
    commit happened since, the kernel refuses with ERESTART and nothing changes.
    """
    if not any(ops for _name, ops in changes):
        return  # an empty transaction would still bump the generation
    messages, sent = _build_batch(family, table, changes, _seq0(), expected_generation)
    data = b"".join(messages)
    acked = {seq for seq, info in sent.items() if info.op != "batch"}
    begin_seq = next(iter(sent))
    with _open_socket(len(data), len(messages)) as sock:
        _send(sock, data, "batch")
        replies = _receive(sock, {begin_seq}, set(acked))

    failures: list[tuple[int, str | None, str | None, int | None]] = []
    first: NetlinkError | None = None
    for reply in sorted(replies, key=lambda r: (r.seq - begin_seq) & 0xFFFFFFFF):
        err = _error_code(reply)
        if not err:
            continue
        info = sent.get(reply.seq, _Sent())
        offset, text = _error_details(reply)
        index = info.element_at(offset) if offset is not None else None
        failures.append((err, info.set_name, info.op, index))
        if first is None:
            first = _refusal(err, family, table, info, index, text)
    if first is not None:
        first.errors = failures
        raise first


def _refusal(err: int, family: str, table: str, info: _Sent, index: int | None, text: str | None) -> NetlinkError:
    hint = _ERRNO_HINTS.get(err)
    reason = f"{os.strerror(err)} ({errno_codes.errorcode.get(err, err)}{': ' + hint if hint else ''})"
    if info.set_name is None:
        where = f"nf_tables refused the batch for table {family} {table}"
    else:
        element = f" of element #{index}" if index is not None else ""
        where = f"nf_tables refused {info.op}{element} in set {family} {table} {info.set_name}"
    detail = f" [kernel: {text}]" if text else ""
    return NetlinkError(
        err,
        f"{where}: {reason}{detail}; nothing was changed",
        set_name=info.set_name,
        op=info.op,
        index=index,
        kernel_message=text,
    )
