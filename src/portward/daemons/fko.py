"""fwknop's SPA wire format (FKO protocol 3.0.0, fwknop 2.6.10), sans-IO: bytes in, messages out, and back.

One UDP payload, all ASCII (base64 is the standard alphabet with every trailing ``=`` stripped)::

    plaintext = rand16 ":" b64(user) ":" timestamp ":" "3.0.0" ":" msg_type ":" b64("IP,tcp/22,udp/53")
                [":" b64(server_auth)] [":" client_timeout]          (lib/fko_encode.c)
    signed    = plaintext ":" b64(SHA-256(plaintext))                 (lib/fko_digest.c, fko_decode.c)
    blob      = "Salted__" salt8 AES-256-CBC(signed, PKCS#7)          (lib/cipher_funcs.c rij_encrypt)
                key = D1‖D2, iv = D3 with D1 = MD5(key‖salt), Dn = MD5(Dn-1‖key‖salt): OpenSSL's
                EVP_BytesToKey with MD5 and one round (cipher_funcs.c rij_salt_and_iv)
    payload   = b64(blob) minus its first 10 characters "U2FsdGVkX1" (the base64 of "Salted__"),
                then b64(HMAC-SHA256(hmac_key, "U2FsdGVkX1" ‖ rest)), 43 characters
                (lib/fko_encryption.c, fko_hmac.c; the HMAC covers the string *with* the prefix)

msg_type 1 is an access request and 3 one that asks for its own timeout (client_timeout, 0..65536);
the others (0 command, 2/4/5/6 NAT) are refused here.  How portward checks a payload, cheapest first, so
garbage costs one HMAC and nothing reaches the decryptor unauthenticated (server/incoming_spa.c order):

1. size: 140..1500 bytes (fwknopd's MIN_SPA_DATA_SIZE / MAX_SPA_PACKET_LEN)          -> ``"size"``
2. HMAC: the last 43 bytes must be *exactly* the string we compute, compared in constant time; a
   different string that decodes to the same bytes (case, padding, unused bits) is a forgery -> ``"hmac"``
3. base64: the rest must be canonical unpadded base64 of ``Salted__`` + salt + whole blocks -> ``"base64"``
4. decrypt: PKCS#7 padding intact and the plaintext printable ASCII (wrong key)          -> ``"decrypt"``
5. digest: a 43-character SHA-256 digest that matches (fwknop also takes MD5/SHA-1/SHA-384/SHA-512
   digests by their length; its client sends SHA-256 unless told ``-m``, portward only SHA-256) -> ``"digest"``
6. fields (lib/fko_decode.c, fko_message.c, fko_user.c): ``"format"`` (rand is not 16 digits, bad user,
   timestamp, field count, timeout, base64), ``"version"`` (not 3.0.0), ``"type"`` (not 1 or 3),
   ``"access"`` (not ``IP,proto/port[,proto/port…]`` with tcp/udp and ports 1..65535).

Keys are bytes: KEY/--key-rijndael text as its bytes, KEY_BASE64 decoded (:func:`decode_key_base64`);
the Rijndael key is 1..32 bytes (fwknop refuses longer), an HMAC key longer than 128 bytes acts as its
first 128 (lib/hmac.c).  fwknop's field caps hold both ways: base64 user at most 64 characters (48 bytes),
base64 access message at most 256 (fko_limits.h); a stock fwknopd also drops payloads of 400 bytes or more
as "GnuPG" (STOCK_FWKNOPD_MAX_PAYLOAD).

Stricter than fwknop on purpose: exactly 16 digits of rand (fwknop takes the first 16 of a longer
field), canonical base64 everywhere, only tcp/udp (fwknop also knows icmp/none), only SHA-256 digests.
Wider on purpose: the allow IP may be IPv6 (canonical form), a portward extension the stock tools refuse.
Policy that needs a clock or configuration (timestamp within ±120 s: :func:`is_fresh`, the replay cache:
:func:`replay_digest`, which ports a door opens) belongs to the daemon.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "ACCESS_MSG",
    "CLIENT_TIMEOUT_ACCESS_MSG",
    "DEFAULT_PORT",
    "MAX_CLIENT_TIMEOUT",
    "MAX_CLOCK_SKEW",
    "MAX_ENC_KEY",
    "MAX_HMAC_KEY",
    "MAX_PAYLOAD",
    "MIN_PAYLOAD",
    "PROTOCOL_VERSION",
    "STOCK_FWKNOPD_MAX_PAYLOAD",
    "Rejected",
    "SpaMessage",
    "decode",
    "decode_key_base64",
    "encode",
    "generate_keys",
    "is_fresh",
    "new_message",
    "replay_digest",
    "seal",
    "unseal",
    "verify_hmac",
]

PROTOCOL_VERSION = "3.0.0"
ACCESS_MSG = 1  # FKO_ACCESS_MSG
CLIENT_TIMEOUT_ACCESS_MSG = 3  # FKO_CLIENT_TIMEOUT_ACCESS_MSG
DEFAULT_PORT = 62201  # fwknopd's UDPSERV_PORT / PCAP_FILTER default
MIN_PAYLOAD = 140  # fwknopd MIN_SPA_DATA_SIZE
MAX_PAYLOAD = 1500  # fwknopd MAX_SPA_PACKET_LEN
# fwknopd guesses the cipher from the payload's length: 400 characters or more is GnuPG
# (incoming_spa.c -> fko_encryption_type, MIN_GNUPG_MSG_SIZE), so a stock server drops longer Rijndael
# packets ("No stanza encryption mode match") unless the stanza has ENABLE_CMD_EXEC; measured: 396 bytes
# accepted, 417 dropped.  portward decodes up to MAX_PAYLOAD; a client talking to fwknopd stays below.
STOCK_FWKNOPD_MAX_PAYLOAD = 399
MAX_CLOCK_SKEW = 120  # fwknopd's MAX_SPA_PACKET_AGE default, seconds either way

MAX_ENC_KEY = 32  # RIJNDAEL_MAX_KEYSIZE: fwknop refuses longer keys
MAX_HMAC_KEY = 128  # MAX_DIGEST_BLOCK_LEN: fwknop's hmac.c uses only the first 128 bytes of a longer key
MAX_CLIENT_TIMEOUT = 2 << 15  # fko_decode.c parse_client_timeout's upper bound

_SALT_B64 = b"U2FsdGVkX1"  # base64 of "Salted__" without the last 4 bits
_SALTED = b"Salted__"
_HMAC_LEN = 43  # unpadded base64 of 32 bytes
_DIGEST_LEN = 43
_B64_TAIL = re.compile(rb"[A-Za-z0-9+/]{%d}" % _HMAC_LEN)
_BLOCK = 16
# fwknop's field limits in characters of the (base64) field (lib/fko_limits.h)
_MAX_USER_FIELD = 64
_MAX_MESSAGE_FIELD = 256
_MAX_TIMESTAMP_FIELD = 12
_PROTOCOLS = frozenset({"tcp", "udp"})
_USER_FORBIDDEN = frozenset('"/\\[]:;|=,+*?<>')  # fko_user.c validate_username


class Rejected(Exception):
    """A payload that is not a valid SPA packet for these keys; ``reason`` is one short word for logs
    and counters ("size", "hmac", "base64", "decrypt", "digest", "format", "version", "type", "access"),
    the message says what exactly was wrong (never anything secret)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class SpaMessage:
    """The fields of one SPA request, as fwknop's client sends them."""

    rand: str  # 16 decimal digits: makes every packet unique for the replay cache
    user: str
    timestamp: int  # unix seconds, the client's clock
    version: str  # "3.0.0"
    msg_type: int  # ACCESS_MSG or CLIENT_TIMEOUT_ACCESS_MSG
    allow_ip: str  # canonical IPv4/IPv6 text; "0.0.0.0" means "the packet's source" (client -s)
    access: tuple[tuple[str, int], ...]  # (("tcp", 22), ("udp", 53))
    client_timeout: int | None = None  # set exactly when msg_type is CLIENT_TIMEOUT_ACCESS_MSG
    nat_access: str | None = None  # always None: NAT messages are refused
    server_auth: str | None = None

    @property
    def access_message(self) -> str:
        """The SPA message string, e.g. "198.18.0.2,tcp/22,udp/53" (what fwknop logs)."""
        return ",".join([self.allow_ip, *(f"{proto}/{port}" for proto, port in self.access)])


# --- public API --------------------------------------------------------------------------------
def new_message(
    allow_ip: str,
    access: Sequence[tuple[str, int]],
    *,
    user: str | None = None,
    timeout: int | None = None,
    now: float | None = None,
) -> SpaMessage:
    """A fresh request: random rand, the clock's timestamp, msg_type 3 when a timeout is asked for.

    ``user`` defaults to the login name, as fwknop's client does; ``allow_ip`` is stored in canonical
    form.  Raises ValueError for anything :func:`decode` would refuse.
    """
    try:
        canonical_ip = str(ipaddress.ip_address(allow_ip))
    except ValueError as err:
        raise ValueError(f"allow IP {allow_ip!r} is not an IP address") from err
    message = SpaMessage(
        rand=f"{secrets.randbelow(10**16):016d}",
        user=_login_name() if user is None else user,
        timestamp=int(time.time() if now is None else now),
        version=PROTOCOL_VERSION,
        msg_type=ACCESS_MSG if timeout is None else CLIENT_TIMEOUT_ACCESS_MSG,
        allow_ip=canonical_ip,
        access=tuple((str(proto).lower(), int(port)) for proto, port in access),
        client_timeout=timeout,
    )
    _checked(message)
    return message


def encode(message: SpaMessage, key: bytes, hmac_key: bytes, *, salt: bytes | None = None) -> bytes:
    """The UDP payload for ``message``: what ``fwknop --use-hmac`` sends (Rijndael, SHA-256, CBC).

    ``salt`` (8 bytes) is random unless given (tests).  Raises ValueError for a message :func:`decode`
    would refuse, bad key lengths, or a payload over MAX_PAYLOAD.
    """
    _check_keys(key, hmac_key)
    if salt is None:
        salt = secrets.token_bytes(8)
    if len(salt) != 8:
        raise ValueError("salt must be 8 bytes")
    plaintext = _plaintext(_checked(message))
    signed = f"{plaintext}:{_b64(hashlib.sha256(plaintext.encode('ascii')).digest())}".encode("ascii")
    payload = seal(signed, key, hmac_key, salt=salt)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"SPA payload would be {len(payload)} bytes, over {MAX_PAYLOAD}: open fewer ports")
    return payload


def verify_hmac(payload: bytes, hmac_key: bytes) -> bool:
    """True when ``payload`` has a plausible size and carries exactly our HMAC: no decryption, a few µs."""
    return MIN_PAYLOAD <= len(payload) <= MAX_PAYLOAD and _hmac_matches(payload, hmac_key)


def _hmac_matches(payload: bytes, hmac_key: bytes) -> bool:
    """The payload's last 43 characters are exactly the HMAC of the rest (constant-time compare). A tail that
    is not base64 can never be one: garbage is refused without computing anything."""
    tail = payload[-_HMAC_LEN:]
    if _B64_TAIL.fullmatch(tail) is None:
        return False
    return hmac.compare_digest(tail, _hmac_b64(payload[:-_HMAC_LEN], hmac_key))


def decode(payload: bytes, key: bytes, hmac_key: bytes) -> SpaMessage:
    """The request inside ``payload``, or Rejected(reason) at the first check it fails (see module doc).

    Checks size, then HMAC, before touching anything else.  Only Rejected escapes for any payload;
    bad key lengths (configuration, not traffic) raise ValueError.
    """
    _check_keys(key, hmac_key)
    signed = unseal(payload, key, hmac_key)
    plaintext = _verified_plaintext(signed)
    return _parse(plaintext)


def replay_digest(payload: bytes) -> bytes:
    """What a replay cache keys on: SHA-256 of the whole wire payload, as fwknopd's digest.cache
    (fko_set_raw_spa_digest over the received data).  Record it only after :func:`decode` succeeds."""
    return hashlib.sha256(payload).digest()


def is_fresh(message: SpaMessage, *, now: float | None = None, max_skew: int = MAX_CLOCK_SKEW) -> bool:
    """fwknopd's packet aging (ENABLE_SPA_PACKET_AGING): the client's timestamp within ±max_skew s."""
    current = time.time() if now is None else now
    return abs(int(current) - message.timestamp) <= max_skew


def generate_keys() -> tuple[bytes, bytes]:
    """A random Rijndael key (32 bytes) and HMAC key (64 bytes), the sizes ``fwknop --key-gen`` makes."""
    return secrets.token_bytes(32), secrets.token_bytes(64)


def decode_key_base64(text: str) -> bytes:
    """Key bytes from KEY_BASE64 / HMAC_KEY_BASE64 / --key-base64-* text (padding optional).

    Plain keys (KEY, HMAC_KEY, --key-rijndael) are used as their bytes: ``text.encode()``.
    """
    stripped = text.strip().rstrip("=")
    try:
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError("key is not valid base64") from err


# --- envelope: HMAC, base64, AES ----------------------------------------------------------------
def seal(signed: bytes, key: bytes, hmac_key: bytes, *, salt: bytes) -> bytes:
    """Encrypt ``signed`` (plaintext + ":" + digest) and wrap it: the wire payload, with no checks on
    its content, so tests can build packets fwknop's client never would (bad digest, bad fields)."""
    aes_key, iv = _derive_key_iv(key, salt)
    pad = _BLOCK - len(signed) % _BLOCK
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(signed + bytes([pad]) * pad) + encryptor.finalize()
    wrapped = _b64(_SALTED + salt + ciphertext).encode("ascii")
    body = wrapped[len(_SALT_B64) :]
    return body + _hmac_b64(body, hmac_key)


def unseal(payload: bytes, key: bytes, hmac_key: bytes) -> bytes:
    """The decrypted, unpadded plaintext of a payload whose size and HMAC check out; else Rejected."""
    if not MIN_PAYLOAD <= len(payload) <= MAX_PAYLOAD:
        raise Rejected("size", f"{len(payload)} bytes, not {MIN_PAYLOAD}..{MAX_PAYLOAD}")
    if not _hmac_matches(payload, hmac_key):
        raise Rejected("hmac", "HMAC does not match")
    body = payload[:-_HMAC_LEN]
    try:
        blob = _unb64(_SALT_B64 + body)
    except ValueError as err:
        raise Rejected("base64", "encrypted data is not canonical base64") from err
    if blob[:8] != _SALTED or len(blob) < 32 or len(blob) % _BLOCK:
        raise Rejected("decrypt", "encrypted data is not a salted AES blob")
    aes_key, iv = _derive_key_iv(key, blob[8:16])
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(blob[16:]) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes([pad]) * pad:
        raise Rejected("decrypt", "bad padding (wrong key?)")
    return padded[:-pad]


def _hmac_b64(body: bytes, hmac_key: bytes) -> bytes:
    # fwknop's hmac.c copies at most MAX_DIGEST_BLOCK_LEN key bytes before RFC 2104 hashes a long key
    # down, so a 200-byte key acts as its first 128 (checked against the stock client's packets).
    mac = hmac.digest(hmac_key[:MAX_HMAC_KEY], _SALT_B64 + body, "sha256")
    return base64.b64encode(mac)[:_HMAC_LEN]


def _derive_key_iv(key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """OpenSSL EVP_BytesToKey(MD5, 1 round): 48 bytes of MD5 chain -> AES-256 key and IV."""
    d1 = hashlib.md5(key + salt).digest()
    d2 = hashlib.md5(d1 + key + salt).digest()
    d3 = hashlib.md5(d2 + key + salt).digest()
    return d1 + d2, d3


def _check_keys(key: bytes, hmac_key: bytes) -> None:
    if not 1 <= len(key) <= MAX_ENC_KEY:
        raise ValueError(f"Rijndael key must be 1..{MAX_ENC_KEY} bytes, not {len(key)}")
    if not hmac_key:
        raise ValueError("HMAC key is empty")


# --- plaintext: digest and fields ---------------------------------------------------------------
def _verified_plaintext(signed: bytes) -> str:
    """The plaintext before ":digest", once it is printable ASCII and its SHA-256 digest matches."""
    if not signed.isascii() or not signed.decode("ascii").isprintable():
        raise Rejected("decrypt", "plaintext is not printable ASCII (wrong key?)")
    plaintext, colon, digest = signed.rpartition(b":")
    if not colon:
        raise Rejected("format", "no fields")
    if len(digest) != _DIGEST_LEN:
        raise Rejected("digest", f"digest of {len(digest)} characters, not SHA-256's {_DIGEST_LEN}")
    if not hmac.compare_digest(digest, base64.b64encode(hashlib.sha256(plaintext).digest())[:_DIGEST_LEN]):
        raise Rejected("digest", "SHA-256 digest does not match")
    return plaintext.decode("ascii")


def _parse(plaintext: str) -> SpaMessage:
    """Fields of a verified plaintext, in fko_decode.c's order, into a checked SpaMessage."""
    fields = plaintext.split(":")
    if len(fields) < 6:
        raise Rejected("format", f"{len(fields)} fields, at least 6 needed")
    rand, user_b64, stamp, version, type_text, message_b64, *rest = fields
    if version != PROTOCOL_VERSION:
        raise Rejected("version", f"protocol version {version[:16]!r}, not {PROTOCOL_VERSION}")
    if not _is_digits(type_text, 2):
        raise Rejected("format", "message type is not a number")
    msg_type = int(type_text)
    if msg_type not in (ACCESS_MSG, CLIENT_TIMEOUT_ACCESS_MSG):
        raise Rejected("type", f"message type {msg_type} is not supported")
    server_auth_b64, timeout_text = _split_tail(rest, msg_type)
    if not _is_digits(stamp, _MAX_TIMESTAMP_FIELD):
        raise Rejected("format", "timestamp is not a number")
    if timeout_text is not None and not _is_digits(timeout_text, 5):
        raise Rejected("format", "client timeout is not a number")
    allow_ip, access = _parse_access(_field_text(message_b64, "message", _MAX_MESSAGE_FIELD))
    message = SpaMessage(
        rand=rand,
        user=_field_text(user_b64, "user", _MAX_USER_FIELD),
        timestamp=int(stamp),
        version=version,
        msg_type=msg_type,
        allow_ip=allow_ip,
        access=access,
        client_timeout=None if timeout_text is None else int(timeout_text),
        server_auth=None if server_auth_b64 is None else _field_text(server_auth_b64, "server_auth"),
    )
    return _check_message(message)


def _split_tail(rest: list[str], msg_type: int) -> tuple[str | None, str | None]:
    """(server_auth field, client_timeout field) from the fields after the message (fko_decode.c)."""
    wanted = 1 if msg_type == CLIENT_TIMEOUT_ACCESS_MSG else 0
    if not wanted <= len(rest) <= wanted + 1:
        raise Rejected("format", f"{len(rest)} fields after the message for type {msg_type}")
    timeout = rest.pop() if wanted else None
    return (rest[0] if rest else None), timeout


def _field_text(field: str, name: str, limit: int = _MAX_MESSAGE_FIELD) -> str:
    """A base64 field's printable ASCII text; Rejected("format") if it is anything else."""
    if not field or len(field) > limit:
        raise Rejected("format", f"{name} field is empty or over {limit} characters")
    try:
        text = _unb64(field.encode("ascii")).decode("ascii")
    except ValueError as err:  # UnicodeDecodeError and binascii.Error are ValueErrors
        raise Rejected("format", f"{name} is not canonical base64 of ASCII") from err
    if not text.isprintable():
        raise Rejected("format", f"{name} has control characters")
    return text


def _parse_access(text: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    """ "198.18.0.2,tcp/22,udp/53" -> ("198.18.0.2", (("tcp", 22), ("udp", 53))) (fko_message.c)."""
    allow_ip, _, specs = text.partition(",")
    access: list[tuple[str, int]] = []
    for spec in specs.split(","):
        proto, slash, port = spec.partition("/")
        if not slash or not _is_digits(port, 5):
            raise Rejected("access", f"{spec!r} is not proto/port")
        access.append((proto, int(port)))
    return allow_ip, tuple(access)


def _checked(message: SpaMessage) -> SpaMessage:
    """_check_message for our own callers: ValueError instead of Rejected."""
    try:
        return _check_message(message)
    except Rejected as err:
        raise ValueError(str(err)) from err


def _check_message(message: SpaMessage) -> SpaMessage:
    """Every rule a field must follow, shared by decode (Rejected) and encode (ValueError)."""
    _check_rand(message.rand)
    _check_user(message.user)
    if message.version != PROTOCOL_VERSION:
        raise Rejected("version", f"protocol version {message.version[:16]!r}, not {PROTOCOL_VERSION}")
    if message.msg_type not in (ACCESS_MSG, CLIENT_TIMEOUT_ACCESS_MSG):
        raise Rejected("type", f"message type {message.msg_type} is not supported")
    if not 0 <= message.timestamp < 10**_MAX_TIMESTAMP_FIELD:
        raise Rejected("format", "timestamp out of range")
    _check_timeout(message)
    _check_allow_ip(message.allow_ip)
    _check_access(message.access)
    if len(_b64(message.access_message.encode("ascii"))) > _MAX_MESSAGE_FIELD:
        raise Rejected("access", "access message too long for fwknop (at most 192 characters)")
    if message.nat_access is not None:
        raise Rejected("type", "NAT access is not supported")
    _check_server_auth(message.server_auth)
    return message


def _check_rand(rand: str) -> None:
    if len(rand) != 16 or not _is_digits(rand, 16):
        raise Rejected("format", "random value is not 16 digits")


def _check_user(user: str) -> None:
    """fko_user.c validate_username, and short enough that its base64 fits MAX_SPA_USERNAME_SIZE."""
    if not user or len(user) > _MAX_USER_FIELD * 3 // 4:
        raise Rejected("format", f"user must be 1..{_MAX_USER_FIELD * 3 // 4} characters")
    if not (user.isascii() and user.isprintable()) or _USER_FORBIDDEN.intersection(user):
        raise Rejected("format", f"user has characters fwknop refuses ({''.join(sorted(_USER_FORBIDDEN))})")


def _check_timeout(message: SpaMessage) -> None:
    wants = message.msg_type == CLIENT_TIMEOUT_ACCESS_MSG
    if (message.client_timeout is not None) != wants:
        raise Rejected("format", "client timeout must be set exactly for message type 3")
    if message.client_timeout is not None and not 0 <= message.client_timeout <= MAX_CLIENT_TIMEOUT:
        raise Rejected("format", f"client timeout must be 0..{MAX_CLIENT_TIMEOUT}")


def _check_allow_ip(allow_ip: str) -> None:
    """Canonical IPv4, or canonical IPv6 without zone (our extension; not IPv4-mapped: send IPv4)."""
    try:
        address = ipaddress.ip_address(allow_ip)
    except ValueError as err:
        raise Rejected("access", "allow IP is not an IP address") from err
    if isinstance(address, ipaddress.IPv6Address) and (address.ipv4_mapped or address.scope_id):
        raise Rejected("access", "allow IP is IPv4-mapped or has a zone")
    if str(address) != allow_ip:
        raise Rejected("access", "allow IP is not in canonical form")


def _check_access(access: tuple[tuple[str, int], ...]) -> None:
    if not access:
        raise Rejected("access", "no proto/port to open")
    for proto, port in access:
        if proto not in _PROTOCOLS:
            raise Rejected("access", f"protocol {proto[:8]!r} is not tcp or udp")
        if not 1 <= port <= 65535:
            raise Rejected("access", f"port {port} is not 1..65535")


def _check_server_auth(server_auth: str | None) -> None:
    if server_auth is None:
        return
    if not server_auth or not (server_auth.isascii() and server_auth.isprintable()):
        raise Rejected("format", "server_auth must be printable ASCII")
    if len(_b64(server_auth.encode("ascii"))) > _MAX_MESSAGE_FIELD:
        raise Rejected("format", "server_auth is too long")


def _plaintext(message: SpaMessage) -> str:
    """fko_encode.c's field order; the digest is added by the caller."""
    fields = [
        message.rand,
        _b64(message.user.encode("ascii")),
        str(message.timestamp),
        message.version,
        str(message.msg_type),
        _b64(message.access_message.encode("ascii")),
    ]
    if message.server_auth is not None:
        fields.append(_b64(message.server_auth.encode("ascii")))
    if message.client_timeout is not None:
        fields.append(str(message.client_timeout))
    return ":".join(fields)


# --- small helpers ------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    """fwknop's base64: standard alphabet, trailing "=" stripped (b64_encode + strip_b64_eq)."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: bytes) -> bytes:
    """Inverse of _b64 for canonical input only: ValueError for bad characters, an impossible length,
    or non-zero unused bits (two strings that decode alike must not both pass)."""
    data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    if base64.b64encode(data).rstrip(b"=") != text:
        raise ValueError("not canonical base64")
    return data


def _is_digits(text: str, max_len: int) -> bool:
    """1..max_len ASCII digits (str.isdigit alone would take other scripts' digits)."""
    return 0 < len(text) <= max_len and text.isascii() and text.isdigit()


def _login_name() -> str:
    """The user fwknop's client would send: the login name, else "NO_USER" (fko_user.c)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return "NO_USER"
    return name if name else "NO_USER"
