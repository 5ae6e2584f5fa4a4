"""`portward spa HOST --open 22/tcp …`: the SPA client, fwknop's wire format, IPv4 and IPv6.

The packet asks the server to open ports for one address: `--allow IP`, or `--source` (0.0.0.0, "whatever
address the packet comes from", like `fwknop -s`), or by default the address this host uses to reach HOST
(what the kernel picks as the source of a UDP socket connected to it; fwknop would make you say `-a`).
One UDP datagram, nothing to wait for: the server never answers.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from portward.daemons import fko
from portward.errors import InputError
from portward.verify.scan import ResolveError, resolve

DEFAULT_PORT = 62201


@dataclass(frozen=True)
class Sent:
    host: str
    address: str  # where the packet went
    port: int
    allow: str  # the address the packet asks access for ("0.0.0.0" with --source)
    access: tuple[tuple[str, int], ...]
    timeout: int | None
    size: int


def parse_access(items: list[str]) -> list[tuple[str, int]]:
    """`22/tcp`, `tcp/22` (fwknop's order) or comma lists of them -> [("tcp", 22), …]."""
    out: list[tuple[str, int]] = []
    for item in items:
        for part in item.split(","):
            text = part.strip().lower()
            left, sep, right = text.partition("/")
            port_text, proto = (left, right) if left.isdigit() else (right, left)
            if not sep or proto not in ("tcp", "udp") or not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise InputError(f"{part!r}: ask for PORT/PROTO (tcp or udp, 1-65535) — e.g. --open 22/tcp")
            out.append((proto, int(port_text)))
    if not out:
        raise InputError("nothing to open — e.g. --open 22/tcp")
    return out


def load_key(inline: str | None, path: str | Path | None, fwknop_name: str, *, missing: str) -> bytes:
    """A key given as base64 inline or in a file; ``missing`` says how to give it when neither is.

    A key file holds the base64 key, or is `fwknop --key-gen --key-gen-file F` output (`KEY_BASE64: …` and
    `HMAC_KEY_BASE64: …` lines), from which the line named ``fwknop_name`` is taken."""
    text = inline
    if text is None and path is not None:
        try:
            content = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise InputError(f"{path}: cannot read the key: {error.strerror} — check the path") from None
        text = content.strip()
        for line in content.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == fwknop_name:
                text = value.strip()
    if not text:
        raise InputError(missing)
    try:
        key = fko.decode_key_base64(text)
    except ValueError:
        raise InputError(f"{fwknop_name.lower()} is not base64 — make keys with `fwknop --key-gen`") from None
    limit = fko.MAX_ENC_KEY if fwknop_name == "KEY_BASE64" else fko.MAX_HMAC_KEY
    if not 1 <= len(key) <= limit:
        raise InputError(f"{fwknop_name.lower()} has {len(key)} bytes; fwknop takes 1-{limit} — use `fwknop --key-gen`")
    return key


def local_address(family: int, address: str, port: int) -> str:
    """The source address the kernel would use for a datagram to (address, port)."""
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, port))
        except OSError as error:
            raise InputError(f"no route to {address}: {error.strerror} — give --allow IP or --source") from None
        return str(probe.getsockname()[0]).partition("%")[0]


def send(
    host: str,
    access: list[tuple[str, int]],
    key: bytes,
    hmac_key: bytes,
    *,
    allow: str | None = None,
    source: bool = False,
    family: int | None = None,
    port: int = DEFAULT_PORT,
    timeout: int | None = None,
) -> Sent:
    """Build and send one SPA packet; returns what was sent."""
    try:
        found, address = resolve(host, family)
    except ResolveError as error:
        raise InputError(f"{host}: {error}") from None
    if source:
        allowed = "0.0.0.0"
    elif allow is not None:
        try:
            allowed = ipaddress.ip_address(allow).compressed
        except ValueError:
            raise InputError(f"--allow {allow!r} is not an IP address") from None
    else:
        allowed = local_address(found, address, port)
    message = fko.new_message(allowed, access, timeout=timeout)
    payload = fko.encode(message, key, hmac_key)
    af = socket.AF_INET6 if found == 6 else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(payload, (address, port))
        except OSError as error:
            raise InputError(f"cannot send to {address}:{port}: {error.strerror}") from None
    return Sent(host, address, port, allowed, tuple(access), timeout, len(payload))
