"""Listener helper for the network-namespace test lab (stdlib only).

Usage: listener.py SPEC [SPEC ...]

SPEC is ``PORT/PROTO`` (bind ``0.0.0.0`` and ``::`` with IPV6_V6ONLY=1) or
``ADDR:PORT/PROTO`` / ``[V6ADDR]:PORT/PROTO`` (bind exactly that address), PROTO
being ``tcp`` or ``udp``.  TCP connections get b"ok" and are closed; UDP
datagrams are echoed back.

Once every socket is bound the helper prints ``ready`` on stdout.  It exits on
SIGTERM/SIGINT or when its stdin reaches EOF (so it dies with its parent even if
the parent is killed without cleaning up).  Bind errors go to stderr, exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
from typing import cast

Bind = tuple[str, int, str]  # (address, port, "tcp" | "udp")


def parse_spec(spec: str) -> list[Bind]:
    """Turn one SPEC into the list of (address, port, proto) to bind."""
    rest, sep, proto = spec.rpartition("/")
    if not sep or proto not in ("tcp", "udp"):
        raise ValueError(f"{spec!r}: expected PORT/tcp or PORT/udp")
    if rest.startswith("["):
        host, close, port_s = rest[1:].partition("]:")
        if not close:
            raise ValueError(f"{spec!r}: expected [V6ADDR]:PORT/{proto}")
        if ipaddress.ip_address(host).version != 6:
            raise ValueError(f"{spec!r}: bracketed address must be IPv6")
        hosts = [host]
    elif ":" in rest:
        host, _, port_s = rest.rpartition(":")
        if ipaddress.ip_address(host).version != 4:
            raise ValueError(f"{spec!r}: IPv6 addresses must be bracketed")
        hosts = [host]
    else:
        port_s, hosts = rest, ["0.0.0.0", "::"]
    port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"{spec!r}: port out of range")
    return [(h, port, proto) for h in hosts]


def make_socket(host: str, port: int, proto: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if proto == "tcp":
            sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Echo(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (the selector loop's datagram transport is not a registered DatagramTransport subclass)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors for our replies
        pass


async def handle_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"ok")
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def wait_stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError):  # stdin is a tty, a regular file or /dev/null: no watchdog
        await asyncio.Event().wait()
    while await reader.read(4096):
        pass


async def main(specs: list[str]) -> int:
    binds = [b for spec in specs for b in parse_spec(spec)]
    sockets: list[socket.socket] = []
    try:
        for host, port, proto in binds:
            sockets.append(make_socket(host, port, proto))
    except OSError as exc:
        print(f"listener: cannot bind {host} {port}/{proto}: {exc}", file=sys.stderr, flush=True)
        for s in sockets:
            s.close()
        return 2
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    for sock in sockets:
        if sock.type == socket.SOCK_STREAM:
            servers.append(await asyncio.start_server(handle_tcp, sock=sock))
        else:
            await loop.create_datagram_endpoint(Echo, sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    eof = asyncio.ensure_future(wait_stdin_eof())
    eof.add_done_callback(lambda _: stop.set())
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stop.wait()
    eof.cancel()
    for server in servers:
        server.close()
    return 0


if __name__ == "__main__":
    try:
        args = sys.argv[1:]
        if not args:
            raise ValueError("usage: listener.py PORT/PROTO ...")
        for a in args:
            parse_spec(a)
    except ValueError as exc:
        print(f"listener: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(asyncio.run(main(args)))
