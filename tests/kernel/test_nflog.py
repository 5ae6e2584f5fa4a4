"""NFLOG: parse_packet on hand-built packets, then the real kernel in a throw-away namespace (`pw-nl-*`).

Addresses: 198.18.0.0/15 and 2001:db8::/32 only (and loopback inside the test namespace).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import subprocess
import time

import pytest

from portward.kernel.nflog import TCP_ACK, TCP_FIN, TCP_SYN, NflogSocket, PacketEvent, parse_packet
from portward.kernel.nfnetlink import NetlinkError
from tests.kernel.nsutil import netns_available, scratch_netns

SRC4, DST4 = "198.18.0.2", "198.18.0.1"
SRC6, DST6 = "2001:db8:0:1::2", "2001:db8:0:1::1"


def tcp(sport: int, dport: int, flags: int, options: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, offset << 4, flags, 65535, 0, 0) + options


def udp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data


def ipv4(proto: int, l4: bytes, *, options: bytes = b"", frag: int = 0, src: str = SRC4, dst: str = DST4) -> bytes:
    ihl = (20 + len(options)) // 4
    header = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(l4), 7, frag, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)  # fmt: skip
    return header + options + l4


def ipv6(next_header: int, rest: bytes, *, src: str = SRC6, dst: str = DST6) -> bytes:
    return (
        struct.pack(">IHBB", 6 << 28, len(rest), next_header, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + rest
    )


def test_ipv4_tcp_syn() -> None:
    event = parse_packet(ipv4(6, tcp(40000, 7000, TCP_SYN)), 4, time=5.0, iface="eth0", prefix="knock")
    assert event == PacketEvent(5.0, 4, SRC4, DST4, "tcp", 40000, 7000, TCP_SYN, "eth0", "knock")


def test_ipv4_with_options_and_udp() -> None:
    options = b"\x94\x04\x00\x00" + b"\x01\x01\x01\x00"  # router alert, NOPs, end: 8 bytes
    event = parse_packet(ipv4(17, udp(5353, 8000, b"hello"), options=options), 4)
    assert event is not None
    assert (event.proto, event.sport, event.dport, event.tcp_flags) == ("udp", 5353, 8000, 0)


def test_ipv6_tcp_and_udp() -> None:
    event = parse_packet(ipv6(6, tcp(40001, 9000, TCP_SYN | TCP_ACK)), 6)
    assert event is not None
    assert (event.family, event.src, event.dst, event.proto, event.dport) == (6, SRC6, DST6, "tcp", 9000)
    assert event.tcp_flags == TCP_SYN | TCP_ACK
    event = parse_packet(ipv6(17, udp(1, 8000)), 6)
    assert event is not None and (event.proto, event.sport, event.dport) == ("udp", 1, 8000)


def test_ipv6_extension_headers() -> None:
    hop_by_hop = bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00"  # next: destination options; PadN
    destination = bytes([44, 1]) + b"\x01\x0c" + bytes(12)  # next: fragment; 16 bytes
    first_fragment = bytes([6, 0]) + struct.pack(">H", 1) + b"\x00\x00\x00\x2a"  # offset 0, more fragments
    event = parse_packet(ipv6(0, hop_by_hop + destination + first_fragment + tcp(2, 7000, TCP_FIN)), 6)
    assert event is not None and (event.proto, event.dport, event.tcp_flags) == ("tcp", 7000, TCP_FIN)
    later_fragment = bytes([17, 0]) + struct.pack(">H", 185 << 3) + b"\x00\x00\x00\x2a"
    event = parse_packet(ipv6(44, later_fragment + udp(1, 2)), 6)
    assert event is not None and (event.proto, event.sport, event.dport) == ("udp", 0, 0)


def test_fragments_truncation_and_junk() -> None:
    later = parse_packet(ipv4(6, tcp(1, 2, TCP_SYN), frag=100), 4)  # not the first fragment: no header
    assert later is not None and (later.sport, later.dport, later.tcp_flags) == (0, 0, 0)
    cut = parse_packet(ipv4(6, tcp(1, 7000, TCP_SYN))[:30], 4)  # copy range cut inside the TCP header
    assert cut is not None and (cut.dport, cut.tcp_flags) == (7000, 0)
    icmp = parse_packet(ipv4(1, b"\x08\x00\x00\x00"), 4)
    assert icmp is not None and (icmp.proto, icmp.dport) == ("icmp", 0)
    assert parse_packet(ipv4(253, b"x"), 4).proto == "253"  # type: ignore[union-attr]
    assert parse_packet(ipv4(6, tcp(1, 2, 0))[:19], 4) is None
    assert parse_packet(ipv6(6, tcp(1, 2, 0)), 4) is None  # an IPv6 packet is not IPv4
    assert parse_packet(ipv4(6, tcp(1, 2, 0)), 6) is None
    assert parse_packet(b"\x4f" + bytes(30), 4) is None  # header length beyond the packet
    assert parse_packet(b"", 4) is None and parse_packet(b"", 6) is None and parse_packet(b"x" * 60, 5) is None
    endless = ipv6(0, bytes([0, 0]) + bytes(6) + bytes([0, 0]) + bytes(6))  # hop-by-hop after hop-by-hop, cut
    assert parse_packet(endless, 6) is not None


def test_every_cut_of_a_packet_is_safe() -> None:
    packets = [
        (ipv4(6, tcp(1, 2, TCP_SYN), options=bytes(40)), 4),
        (ipv6(0, bytes([6, 0]) + bytes(6) + tcp(1, 2, 2)), 6),
    ]
    for data, family in packets:
        for n in range(len(data) + 1):
            parse_packet(data[:n], family)


# --- the kernel ----------------------------------------------------------------------------------

GROUP = 7690
RULES = f"""
table inet t {{
    chain pre {{
        type filter hook prerouting priority -300; policy accept;
        tcp dport 7000 log group {GROUP} prefix "knock"
        udp dport 8000 log group {GROUP} prefix "udp knock"
        tcp dport 7001 drop
    }}
}}
"""

needs_netns = pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))


def _syn(family: int, address: str, port: int) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        sock.connect_ex((address, port))


def _capture_loopback() -> list[PacketEvent]:
    """In the namespace: bind, knock over loopback v4/v6, read."""
    with NflogSocket(GROUP) as nflog:
        _syn(socket.AF_INET, "127.0.0.1", 7000)
        _syn(socket.AF_INET6, "::1", 7000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"x", ("127.0.0.1", 8000))
        _syn(socket.AF_INET, "127.0.0.1", 7001)  # not logged
        events: list[PacketEvent] = []
        deadline = time.monotonic() + 2
        while len(events) < 3 and time.monotonic() < deadline:
            events += nflog.read_events()
            time.sleep(0.001)
        # nothing is held back: qthresh 1 sends each packet at once
        return events + nflog.read_events()


def _second_bind() -> str:
    with NflogSocket(GROUP):
        try:
            NflogSocket(GROUP)
        except NetlinkError as error:
            return f"{error.errno} {error}"
    with NflogSocket(GROUP):  # released on close: bindable again
        return "unexpected"


def _overflow(count: int) -> tuple[int, int, int]:
    """Log ``count`` packets into a tiny receive buffer without reading, then read: nothing raises."""
    with NflogSocket(GROUP, rcvbuf=4096) as nflog:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(count):
                sock.sendto(b"x", ("127.0.0.1", 8000))
        events = nflog.read_events()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"x", ("127.0.0.1", 8000))  # the reader still works afterwards
        time.sleep(0.05)
        after = nflog.read_events()
        return len(events), nflog.dropped, len(after)


@needs_netns
def test_live_loopback_v4_v6() -> None:
    with scratch_netns() as ns:
        subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
        ns.nft("-f", "-", stdin=RULES)
        events = ns.call(_capture_loopback)
    assert len(events) == 3, events
    v4, v6, datagram = sorted(events, key=lambda e: (e.proto, e.family))
    assert (v4.family, v4.src, v4.dst, v4.proto, v4.dport, v4.tcp_flags) == (
        4,
        "127.0.0.1",
        "127.0.0.1",
        "tcp",
        7000,
        TCP_SYN,
    )
    assert (v6.family, v6.src, v6.dport, v6.tcp_flags, v6.prefix) == (6, "::1", 7000, TCP_SYN, "knock")
    assert (datagram.proto, datagram.dport, datagram.prefix) == ("udp", 8000, "udp knock")
    assert all(e.iface == "lo" and abs(e.time - time.time()) < 60 for e in events)


@needs_netns
def test_live_group_is_exclusive() -> None:
    with scratch_netns() as ns:
        outcome = ns.call(_second_bind)
    code, _, message = outcome.partition(" ")
    assert int(code) in (errno.EPERM, errno.EBUSY) and "another process holds this group" in message


@needs_netns
def test_live_overflow_counts_drops() -> None:
    with scratch_netns() as ns:
        subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
        ns.nft("-f", "-", stdin=RULES)
        received, dropped, after = ns.call(_overflow, 2000)
    assert dropped > 0 and received + dropped == 2000
    assert after == 1
