"""Prober helper for the network-namespace test lab (stdlib only).

Usage: prober.py [--timeout SECONDS] TARGET[,TARGET...] PORT/PROTO [PORT/PROTO ...]

Probes every port of every target (IPv4 or IPv6 literal) concurrently, one asyncio
task each, and prints one JSON object on stdout:
``{"198.18.0.1": {"22/tcp": ["open", "connected"], ...}, ...}`` — state and the
reason behind it.  States follow nmap:

* TCP: connect() succeeds → open; ECONNREFUSED (RST, or ICMP port-unreachable)
  → closed; timeout or any other error (ICMP admin-prohibited, host/net
  unreachable, …) → filtered.
* UDP (connected socket, one datagram): any reply → open; ECONNREFUSED (ICMP
  port-unreachable) → closed; silence or any other error → filtered.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import json
import socket
import struct
import sys

PAYLOAD = b"portward-probe"
# Linux values; the socket module does not export them all.
IP_RECVERR = 11
IPV6_RECVERR = 25
MSG_ERRQUEUE = 0x2000


def parse_port(spec: str) -> tuple[int, str]:
    port_s, sep, proto = spec.partition("/")
    if not sep or proto not in ("tcp", "udp"):
        raise ValueError(f"{spec!r}: expected PORT/tcp or PORT/udp")
    port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"{spec!r}: port out of range")
    return port, proto


def reason_of(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def drain_errqueue(sock: socket.socket) -> int:
    """Pop queued ICMP errors (IP_RECVERR/IPV6_RECVERR); return the last ee_errno, 0 if none."""
    found = 0
    while True:
        try:
            _, ancdata, _, _ = sock.recvmsg(1, 512, MSG_ERRQUEUE)
        except OSError:  # EAGAIN: queue empty
            return found
        for level, kind, data in ancdata:
            recverr = (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR))
            if recverr and len(data) >= 4:  # struct sock_extended_err starts with u32 ee_errno
                found = struct.unpack_from("=I", data)[0] or found


def wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def probe_tcp(family: int, target: str, port: int, timeout: float) -> tuple[str, str]:
    """Non-blocking connect() that also watches the socket's ICMP error queue.

    Why not ``loop.sock_connect``: an ICMP error arriving while connect() still holds
    the socket lock (easy on veth, where the reply comes back within the syscall) is
    only recorded as a *soft* error and the kernel keeps waiting for the SYN
    retransmit — the probe would time out and call a rejected port "filtered".
    With IP(V6)_RECVERR the error is also queued, which wakes us with POLLERR.
    """
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        err = sock.connect_ex((target, port))
        deadline = loop.time() + timeout
        while err == errno.EINPROGRESS:
            woke: asyncio.Future[None] = loop.create_future()
            loop.add_writer(sock.fileno(), wake, woke)
            try:
                await asyncio.wait_for(woke, max(0.0, deadline - loop.time()))
            except TimeoutError:
                return "filtered", "timeout"
            finally:
                loop.remove_writer(sock.fileno())
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or drain_errqueue(sock)
            if err:
                break
            try:
                sock.getpeername()
            except OSError:  # woken, but neither connected nor failed yet: keep waiting
                err = errno.EINPROGRESS
        if err == 0:
            return "open", "connected"
        reason = errno.errorcode.get(err, str(err))
        return ("closed", reason) if err == errno.ECONNREFUSED else ("filtered", reason)


async def probe_udp(family: int, target: str, port: int, timeout: float) -> tuple[str, str]:
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.connect((target, port))
            sock.send(PAYLOAD)
            await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
        except TimeoutError:
            return "filtered", "timeout"
        except ConnectionRefusedError:
            return "closed", "ECONNREFUSED"
        except OSError as exc:
            return "filtered", reason_of(exc)
        return "open", "reply"


async def probe_target(target: str, specs: list[str], timeout: float) -> dict[str, list[str]]:
    family = socket.AF_INET6 if ipaddress.ip_address(target).version == 6 else socket.AF_INET
    keys: list[str] = []
    tasks = []
    for spec in dict.fromkeys(specs):
        port, proto = parse_port(spec)
        probe = probe_tcp if proto == "tcp" else probe_udp
        keys.append(f"{port}/{proto}")
        tasks.append(probe(family, target, port, timeout))
    results = await asyncio.gather(*tasks)
    return {k: list(r) for k, r in zip(keys, results, strict=True)}


async def main(targets: list[str], specs: list[str], timeout: float) -> dict[str, dict[str, list[str]]]:
    targets = list(dict.fromkeys(targets))
    results = await asyncio.gather(*(probe_target(t, specs, timeout) for t in targets))
    return dict(zip(targets, results, strict=True))


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prober.py")
    ap.add_argument("--timeout", type=float, default=0.5)
    ap.add_argument("targets", help="comma-separated IPv4/IPv6 literals")
    ap.add_argument("ports", nargs="+")
    ns = ap.parse_args(argv)
    targets = [t.strip().strip("[]") for t in str(ns.targets).split(",") if t.strip()]
    try:
        if not targets:
            raise ValueError("no target")
        for target in targets:
            ipaddress.ip_address(target)
        for spec in ns.ports:
            parse_port(spec)
    except ValueError as exc:
        print(f"prober: {exc}", file=sys.stderr)
        return 2
    out = asyncio.run(main(targets, list(ns.ports), float(ns.timeout)))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
