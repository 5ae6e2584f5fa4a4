"""`portward knock HOST PORT[:tcp|udp]… [-d MS] [-u] [-4|-6]`: the knock client, with knockd's `knock` syntax.

A TCP knock is one SYN: a non-blocking connect() has sent it by the time it returns EINPROGRESS, and we
close at once (the kernel answers a late SYN-ACK with a reset).  A UDP knock is one empty datagram.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from dataclasses import dataclass

from portward.errors import InputError
from portward.verify.scan import resolve


@dataclass(frozen=True)
class Knock:
    port: int
    proto: str


def parse_knocks(items: list[str], default_proto: str = "tcp") -> list[Knock]:
    knocks = []
    for item in items:
        port_text, _sep, proto = item.partition(":")
        proto = (proto or default_proto).lower()
        if proto not in ("tcp", "udp") or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InputError(f"{item!r}: a knock is PORT or PORT:tcp or PORT:udp (1-65535) — e.g. 7000 8000:udp")
        knocks.append(Knock(int(port_text), proto))
    if not knocks:
        raise InputError("no knock given — e.g. portward knock HOST 7000 8000 9000:udp")
    return knocks


def send_knock(family: int, address: str, knock: Knock) -> None:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    if knock.proto == "udp":
        with socket.socket(af, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"", (address, knock.port))
        return
    sock = socket.socket(af, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        code = sock.connect_ex((address, knock.port))
        if code not in (0, errno.EINPROGRESS, errno.ECONNREFUSED, errno.EAGAIN):
            raise OSError(code, f"cannot send a SYN to {address} port {knock.port}: {errno.errorcode.get(code)}")
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def knock(host: str, knocks: list[Knock], *, delay_ms: int = 0, family: int | None = None) -> tuple[str, float]:
    """Send the sequence; returns (address, time of the last knock from time.monotonic())."""
    resolved_family, address = resolve(host, family)
    last = time.monotonic()
    for index, item in enumerate(knocks):
        if index and delay_ms:
            time.sleep(delay_ms / 1000)
        send_knock(resolved_family, address, item)
        last = time.monotonic()
    return address, last
