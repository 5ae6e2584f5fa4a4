"""Addresses, networks and ports as plain integers.

Block lists hold 100,000 entries and more, so parsing here avoids `ipaddress` objects on the hot path
(`socket.inet_pton` + `int.from_bytes` is several times faster) and keeps networks as (first, last)
integer intervals, which is also how an nftables interval set stores them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

V4_MAX = (1 << 32) - 1
V6_MAX = (1 << 128) - 1
PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True, order=True)
class Net:
    """An address range of one family: first..last inclusive."""

    family: int  # 4 or 6
    first: int
    last: int

    def __str__(self) -> str:
        return format_interval(self.family, self.first, self.last)

    def contains(self, family: int, address: int) -> bool:
        return family == self.family and self.first <= address <= self.last


def parse_address(text: str) -> tuple[int, int]:
    """'198.18.0.1' or '2001:db8::1' -> (family, integer). Raises ValueError."""
    text = text.strip()
    if ":" in text:
        try:
            return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text.strip("[]")), "big")
        except OSError:
            raise ValueError(f"{text!r} is not an IPv6 address — write e.g. 2001:db8::1") from None
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except OSError:
        raise ValueError(f"{text!r} is not an IPv4 address — write e.g. 198.18.0.1") from None
    return 4, int.from_bytes(packed, "big")


def parse_net(text: str) -> Net:
    """An address or CIDR (v4 or v6) -> Net. Host bits must be zero, as nftables and iptables expect.

    Raises ValueError with a message that says what to write instead.
    """
    text = text.strip()
    address, slash, length_text = text.partition("/")
    family, value = parse_address(address)
    width = 32 if family == 4 else 128
    if not slash:
        return Net(family, value, value)
    if not length_text.isdigit() or not 0 <= int(length_text) <= width:
        raise ValueError(f"{text!r}: the prefix length must be 0..{width} — fix the number after /")
    length = int(length_text)
    host_bits = width - length
    mask = (1 << host_bits) - 1
    if value & mask:
        network = value & ~mask
        fixed = format_address(family, network)
        raise ValueError(f"{text!r} has host bits set — write the network, {fixed}/{length}")
    return Net(family, value, value | mask)


def parse_span(text: str) -> tuple[int, int, int]:
    """Like parse_net but returns a plain (family, first, last) tuple: the block-list hot path."""
    address, slash, length_text = text.partition("/")
    if slash and ":" not in address and length_text.isdigit():
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
        except OSError:
            value = -1
        length = int(length_text)
        if value >= 0 and length <= 32:
            mask = (1 << (32 - length)) - 1
            if not value & mask:
                return 4, value, value | mask
    net = parse_net(text)  # slow path: v6, single addresses, and every error message
    return net.family, net.first, net.last


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge overlapping and adjacent (first, last) ranges of one family."""
    spans.sort()
    out: list[tuple[int, int]] = []
    append = out.append
    current_first = current_last = -2
    for first, last in spans:
        if first <= current_last + 1:
            if last > current_last:
                current_last = last
            continue
        if current_first >= 0:
            append((current_first, current_last))
        current_first, current_last = first, last
    if current_first >= 0:
        append((current_first, current_last))
    return out


def is_loopback(net: Net) -> bool:
    """Inside 127.0.0.0/8, or ::1: what portward admits before any rule, so no list needs to name it."""
    if net.family == 4:
        return net.first >> 24 == 127 and net.last >> 24 == 127
    return net.first == net.last == 1


def format_address(family: int, value: int) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def prefix_length(family: int, first: int, last: int) -> int | None:
    """The prefix length when first..last is exactly one CIDR, else None."""
    size = last - first + 1
    if size & (size - 1) or first & (size - 1):
        return None
    width = 32 if family == 4 else 128
    return width - (size.bit_length() - 1)


def format_interval(family: int, first: int, last: int) -> str:
    if first == last:
        return format_address(family, first)
    length = prefix_length(family, first, last)
    if length is not None:
        return f"{format_address(family, first)}/{length}"
    return f"{format_address(family, first)}-{format_address(family, last)}"


def merge(nets: Iterable[Net]) -> tuple[Net, ...]:
    """Sort and merge overlapping and adjacent ranges of each family (v4 first)."""
    items = list(nets)
    out: list[Net] = []
    for family in (4, 6):
        spans = [(n.first, n.last) for n in items if n.family == family]
        out.extend(Net(family, first, last) for first, last in merge_spans(spans))
    return tuple(out)


def to_cidrs(net: Net) -> Iterator[str]:
    """A range as the fewest CIDRs (for dialects that cannot say 'a-b')."""
    address_type = ipaddress.IPv4Address if net.family == 4 else ipaddress.IPv6Address
    for network in ipaddress.summarize_address_range(address_type(net.first), address_type(net.last)):
        yield str(network)


@dataclass(frozen=True, order=True)
class PortRange:
    proto: str
    first: int
    last: int

    def __str__(self) -> str:
        if self.first == self.last:
            return f"{self.first}/{self.proto}"
        return f"{self.first}-{self.last}/{self.proto}"


def parse_port_spec(text: str) -> PortRange:
    """'22/tcp', '1000-2000/udp' -> PortRange. Raises ValueError saying what is wrong."""
    number, slash, proto = text.strip().partition("/")
    if not slash:
        raise ValueError(f'{text!r} has no protocol — write it as "{number}/tcp" (tcp, udp or sctp)')
    proto = proto.lower()
    if proto not in PROTOCOLS:
        raise ValueError(f"{text!r}: unknown protocol {proto!r} — use tcp, udp or sctp")
    low, dash, high = number.partition("-")
    if not low.isdigit() or (dash and not high.isdigit()):
        raise ValueError(f'{text!r} is not a port — write a number 1-65535 or a range "N-M/{proto}"')
    first = int(low)
    last = int(high) if dash else first
    for port in (first, last):
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} is out of range — use a port from 1 to 65535")
    if last < first:
        raise ValueError(f'{text!r}: the range is reversed — write "{last}-{first}/{proto}"')
    return PortRange(proto, first, last)


def merge_ports(ranges: Iterable[PortRange]) -> dict[str, tuple[tuple[int, int], ...]]:
    """Group by protocol, sort, merge overlapping and adjacent ranges."""
    by_proto: dict[str, list[tuple[int, int]]] = {}
    for port_range in ranges:
        by_proto.setdefault(port_range.proto, []).append((port_range.first, port_range.last))
    merged: dict[str, tuple[tuple[int, int], ...]] = {}
    for proto in PROTOCOLS:
        spans = sorted(by_proto.get(proto, []))
        if not spans:
            continue
        out: list[tuple[int, int]] = []
        for first, last in spans:
            if out and first <= out[-1][1] + 1:
                out[-1] = (out[-1][0], max(out[-1][1], last))
            else:
                out.append((first, last))
        merged[proto] = tuple(out)
    return merged
