"""portward.daemons.fko against the stock fwknop 2.6.10 tools, both ways, plus the negative cases.

- The stock client (`fwknop -T -B FILE`, nothing sent) builds packets that we decode; re-encoding what we
  decoded with the client's own salt gives back the client's bytes exactly.
- The stock server (`fwknopd -U` in the lab's srv namespace) accepts packets we encode and adds its
  iptables rules for them; its digest.cache holds our replay_digest.
- Every check in decode has a packet that fails it, with the reason it must give; hypothesis feeds random
  bytes and mutations of valid packets (only Rejected may come out) and round-trips random messages.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portward.daemons import fko
from portward.daemons.fko import Rejected, SpaMessage
from tests.netlab import LAN4, SRV_LAN4, Lab

KEY = bytes(range(32))
HMAC_KEY = bytes(range(100, 164))
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

needs_client = pytest.mark.skipif(shutil.which("fwknop") is None, reason="fwknop client (fwknop-client) missing")
needs_server = pytest.mark.skipif(shutil.which("fwknopd") is None, reason="fwknop server (fwknop-server) missing")


# --- helpers ------------------------------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def remac(body: bytes, hmac_key: bytes = HMAC_KEY) -> bytes:
    """body + a correct HMAC, computed here independently of the module (stdlib only)."""
    return body + base64.b64encode(hmac.digest(hmac_key, b"U2FsdGVkX1" + body, "sha256"))[:43]


def packet(fields: list[str], *, digest: str | None = None) -> bytes:
    """A payload with these plaintext fields, a correct (or the given) digest, and valid crypto."""
    plaintext = ":".join(fields)
    if digest is None:
        digest = b64(hashlib.sha256(plaintext.encode()).digest())
    return fko.seal(f"{plaintext}:{digest}".encode(), KEY, HMAC_KEY, salt=b"saltsalt")


def fields(
    *,
    rand: str = "1234567890123456",
    user: str = "alice",
    stamp: str = "1795438395",
    version: str = "3.0.0",
    msg_type: str = "1",
    message: str = "198.18.0.2,tcp/22",
    tail: tuple[str, ...] = (),
) -> list[str]:
    return [rand, b64(user.encode()), stamp, version, msg_type, b64(message.encode()), *tail]


def reason(payload: bytes, key: bytes = KEY, hmac_key: bytes = HMAC_KEY) -> str:
    with pytest.raises(Rejected) as info:
        fko.decode(payload, key, hmac_key)
    return info.value.reason


def valid_payload() -> bytes:
    return fko.encode(fko.new_message("198.18.0.2", [("tcp", 22)], user="alice"), KEY, HMAC_KEY)


def salt_of(payload: bytes) -> bytes:
    body = b"U2FsdGVkX1" + payload[:-43]
    return base64.b64decode(body[:24])[8:16]


def test_round_trip_and_shape() -> None:
    message = fko.new_message("198.18.0.2", [("TCP", 22), ("udp", 53)], user="alice", timeout=60, now=1000.7)
    assert message.msg_type == fko.CLIENT_TIMEOUT_ACCESS_MSG and message.timestamp == 1000
    assert message.access == (("tcp", 22), ("udp", 53)) and re.fullmatch(r"\d{16}", message.rand)
    assert message.access_message == "198.18.0.2,tcp/22,udp/53"
    payload = fko.encode(message, KEY, HMAC_KEY)
    assert payload.isascii() and fko.MIN_PAYLOAD <= len(payload) <= fko.STOCK_FWKNOPD_MAX_PAYLOAD
    assert not payload.startswith(b"U2FsdGVkX1")  # the prefix is implied, as fwknop strips it
    assert fko.verify_hmac(payload, HMAC_KEY) and not fko.verify_hmac(payload, KEY)
    assert fko.decode(payload, KEY, HMAC_KEY) == message
    again = fko.encode(message, KEY, HMAC_KEY)
    assert again != payload and fko.replay_digest(again) != fko.replay_digest(payload)  # fresh salt
    assert fko.replay_digest(payload) == hashlib.sha256(payload).digest()
    assert fko.encode(message, KEY, HMAC_KEY, salt=b"12345678") == fko.encode(message, KEY, HMAC_KEY, salt=b"12345678")
    plain = fko.new_message("2001:DB8:0:0::5", [("udp", 500)], user="bob")
    assert plain.msg_type == fko.ACCESS_MSG and plain.client_timeout is None and plain.allow_ip == "2001:db8::5"
    assert fko.decode(fko.encode(plain, KEY, HMAC_KEY), KEY, HMAC_KEY) == plain


def test_freshness_and_keys() -> None:
    message = fko.new_message("198.18.0.2", [("tcp", 22)], user="alice", now=10_000)
    assert fko.is_fresh(message, now=10_120) and fko.is_fresh(message, now=9_880)
    assert not fko.is_fresh(message, now=10_121) and not fko.is_fresh(message, now=9_879)
    key, hmac_key = fko.generate_keys()
    assert (len(key), len(hmac_key)) == (32, 64)
    assert fko.decode_key_base64(base64.b64encode(hmac_key).decode()) == hmac_key
    assert fko.decode_key_base64(b64(key)) == key
    with pytest.raises(ValueError):
        fko.decode_key_base64("not base64!")


def test_encode_refuses_what_decode_would_reject() -> None:
    good = fko.new_message("198.18.0.2", [("tcp", 22)], user="alice")
    bad = [
        dataclasses.replace(good, access=(("icmp", 0),)),
        dataclasses.replace(good, access=(("tcp", 0),)),
        dataclasses.replace(good, access=()),
        dataclasses.replace(good, allow_ip="2001:DB8::1"),
        dataclasses.replace(good, rand="123"),
        dataclasses.replace(good, user="a/b"),
        dataclasses.replace(good, version="2.0.0"),
        dataclasses.replace(good, msg_type=0),
        dataclasses.replace(good, client_timeout=30),  # type 1 carries no timeout
        dataclasses.replace(good, nat_access="198.18.0.9,22"),
        dataclasses.replace(good, access=tuple(("tcp", port) for port in range(1000, 1030))),  # > 256 b64
    ]
    for message in bad:
        with pytest.raises(ValueError):
            fko.encode(message, KEY, HMAC_KEY)
    for args in (("nonsense", [("tcp", 22)]), ("198.18.0.2", [("sctp", 22)])):
        with pytest.raises(ValueError):
            fko.new_message(*args, user="alice")
    for key, hmac_key in ((b"", HMAC_KEY), (b"k" * 33, HMAC_KEY), (KEY, b"")):
        with pytest.raises(ValueError):
            fko.encode(good, key, hmac_key)
        with pytest.raises(ValueError):
            fko.decode(b"x" * 200, key, hmac_key)


# --- negative cases: each check and its reason --------------------------------------------------
def test_size_bounds() -> None:
    payload = valid_payload()
    assert reason(payload[:139]) == "size" and reason(b"") == "size"
    assert reason(payload + b"A" * (1501 - len(payload))) == "size"
    assert not fko.verify_hmac(payload[:139], HMAC_KEY)
    assert reason(payload[:-1]) == "hmac" and reason(payload[1:]) == "hmac"
    assert reason(payload + b"A") == "hmac"
    # the bounds are inclusive, as fwknopd's (a valid HMAC at exactly 140 and 1500 bytes gets past size)
    assert reason(remac(b"!" * 97)) == "base64"
    assert reason(remac(b"!" * 1457)) == "base64"


def test_every_tampered_byte_fails_the_hmac() -> None:
    payload = valid_payload()
    for index, byte in enumerate(payload):
        for replacement in {B64[(B64.index(chr(byte)) + 1) % 64], "=", "\x00", "é"}:
            tampered = payload[:index] + replacement.encode() + payload[index + 1 :]
            assert reason(tampered) == "hmac", (index, replacement)


def test_wrong_keys() -> None:
    payload = valid_payload()
    assert reason(payload, hmac_key=KEY) == "hmac"
    assert reason(payload, hmac_key=HMAC_KEY + b"x") == "hmac"
    # right HMAC key, wrong Rijndael key: padding or printable check fails (wrong-key garbage)
    assert {reason(valid_payload(), key=b"another key") for _ in range(20)} == {"decrypt"}


def test_hmac_must_be_the_exact_string() -> None:
    payload = valid_payload()
    body, mac = payload[:-43], payload[-43:]
    # 43 characters carry 258 bits: the last one has 2 unused bits, so a sibling decodes to the same bytes
    sibling = mac[:-1] + B64[B64.index(chr(mac[-1])) ^ 1].encode()
    assert base64.b64decode(sibling + b"=") == base64.b64decode(mac + b"=")
    assert reason(body + sibling) == "hmac"
    assert reason(body + mac + b"=") == "hmac"  # padded
    flipped = mac.swapcase()
    assert flipped != mac and reason(body + flipped) == "hmac"
    assert reason(body + base64.b64encode(base64.b64decode(mac + b"="))) == "hmac"  # 44 chars with "="


def test_base64_must_be_canonical() -> None:
    # a blob whose length is not a multiple of 3 leaves unused bits in the last character
    payloads = (
        fko.encode(fko.new_message("198.18.0.2", [("tcp", 22)], user="a" * n), KEY, HMAC_KEY) for n in range(1, 30)
    )
    body = next(p for p in payloads if (len(p) - 43 + 10) % 4)[:-43]
    assert fko.decode(remac(body), KEY, HMAC_KEY)  # re-MACing by itself changes nothing
    sibling = body[:-1] + B64[B64.index(chr(body[-1])) ^ 1].encode()
    assert reason(remac(sibling)) == "base64"
    assert reason(remac(body + b"=" * (-(len(body) + 10) % 4))) == "base64"  # padding is stripped on the wire
    assert reason(remac(body[:50] + b"-" + body[51:])) == "base64"
    assert reason(remac(body[:50] + b"\n" + body[51:])) == "base64"
    assert reason(remac(b"U2FsdGVkX1" + body)) in {"base64", "decrypt"}  # a second prefix tacked on


def openssl_encrypt(data: bytes, key: bytes, salt: bytes) -> bytes:
    """`openssl enc -aes-256-cbc -md md5 -nopad` written out independently: "Salted__" salt ciphertext."""
    chain, derived = b"", b""
    while len(derived) < 48:
        chain = hashlib.md5(chain + key + salt).digest()
        derived += chain
    encryptor = Cipher(algorithms.AES(derived[:32]), modes.CBC(derived[32:48])).encryptor()
    return b"Salted__" + salt + encryptor.update(data) + encryptor.finalize()


def wire(blob: bytes) -> bytes:
    text = b64(blob).encode()
    assert text.startswith(b"U2FsdGVkX1")
    return remac(text[10:])


def test_blob_shape_and_padding() -> None:
    signed = fko.unseal(valid_payload(), KEY, HMAC_KEY)
    pad = 16 - len(signed) % 16
    assert wire(openssl_encrypt(signed + bytes([pad]) * pad, KEY, b"12345678")) == fko.seal(
        signed, KEY, HMAC_KEY, salt=b"12345678"
    )
    blob = openssl_encrypt(signed + bytes([pad]) * pad, KEY, b"12345678")
    assert fko.decode(wire(blob), KEY, HMAC_KEY).user == "alice"
    assert reason(wire(blob[:-1])) == "decrypt"  # not whole blocks
    assert reason(remac(b64(b"Salted_\x5e" + blob[8:]).encode()[10:])) == "decrypt"  # "Salted__"'s last bits
    for bad_pad in (b"\x00" * 16, b"\x11" * 16, b"\x05\x05\x05\x04" * 4):
        assert reason(wire(openssl_encrypt(signed[: len(signed) // 16 * 16] + bad_pad, KEY, b"abcdefgh"))) == "decrypt"
    assert reason(fko.seal(signed + b"\x00" * 16, KEY, HMAC_KEY, salt=b"12345678")) == "decrypt"  # not printable
    assert reason(fko.seal(signed[:-1] + b"\x7f", KEY, HMAC_KEY, salt=b"12345678")) == "decrypt"


def test_digest() -> None:
    assert fko.decode(packet(fields()), KEY, HMAC_KEY).user == "alice"
    good = b64(hashlib.sha256(b"something else").digest())
    assert reason(packet(fields(), digest=good)) == "digest"
    assert reason(packet(fields(), digest=good[:42])) == "digest"
    assert reason(packet(fields(), digest=b64(hashlib.md5(":".join(fields()).encode()).digest()))) == "digest"
    assert reason(fko.seal(b"no colon at all here " * 5, KEY, HMAC_KEY, salt=b"12345678")) == "format"


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"version": "2.0.2"}, "version"),
        ({"version": "3.0.0.0"}, "version"),
        ({"msg_type": "0"}, "type"),
        ({"msg_type": "2"}, "type"),
        ({"msg_type": "4"}, "type"),
        ({"msg_type": "7"}, "type"),
        ({"msg_type": "x"}, "format"),
        ({"msg_type": "001"}, "format"),
        ({"rand": "123456789012345"}, "format"),
        ({"rand": "12345678901234567"}, "format"),
        ({"rand": "123456789012345a"}, "format"),
        ({"rand": "１２３４５６７８９０１２３４５６"}, "decrypt"),  # fullwidth digits: not ASCII at all
        ({"user": ""}, "format"),
        ({"user": "a/b"}, "format"),
        ({"user": "x" * 49}, "format"),
        ({"stamp": "17954383x5"}, "format"),
        ({"stamp": "-1795438395"}, "format"),
        ({"stamp": "1234567890123"}, "format"),
        ({"message": "198.18.0.2,icmp/0"}, "access"),
        ({"message": "198.18.0.2,none/0"}, "access"),
        ({"message": "198.18.0.2,TCP/22"}, "access"),
        ({"message": "198.18.0.2,tcp/0"}, "access"),
        ({"message": "198.18.0.2,tcp/65536"}, "access"),
        ({"message": "198.18.0.2,tcp/22x"}, "access"),
        ({"message": "198.18.0.2,tcp/"}, "access"),
        ({"message": "198.18.0.2"}, "access"),
        ({"message": "198.18.0.2,"}, "access"),
        ({"message": "198.18.0.2,tcp/22,"}, "access"),
        ({"message": "1.2.3,tcp/22"}, "access"),
        ({"message": "198.018.0.2,tcp/22"}, "access"),
        ({"message": "198.18.0.256,tcp/22"}, "access"),
        ({"message": "2001:DB8::1,tcp/22"}, "access"),
        ({"message": "::ffff:198.18.0.2,tcp/22"}, "access"),
        ({"message": "fe80::1%eth0,tcp/22"}, "access"),
        ({"message": "host.example,tcp/22"}, "access"),
        ({"msg_type": "3"}, "format"),  # type 3 needs its timeout field
        ({"msg_type": "3", "tail": ("x",)}, "format"),
        ({"msg_type": "3", "tail": ("65537",)}, "format"),
        ({"msg_type": "3", "tail": ("-5",)}, "format"),
        ({"msg_type": "3", "tail": (b64(b"auth"), "30", "30")}, "format"),
        ({"tail": (b64(b"auth"), "30")}, "format"),  # type 1 has at most server_auth after the message
        ({"tail": ("",)}, "format"),
        ({"tail": ("YQ=",)}, "format"),
    ],
)
def test_field_rejections(kw: dict[str, object], why: str) -> None:
    assert reason(packet(fields(**kw))) == why  # type: ignore[arg-type]


def test_non_canonical_field_base64() -> None:
    user = b64(b"alice")  # "YWxpY2U": 7 characters, 2 unused bits in the last
    sibling = user[:-1] + B64[B64.index(user[-1]) ^ 1]
    base = fields()
    assert fko.decode(packet(base), KEY, HMAC_KEY).user == "alice"
    assert reason(packet([base[0], sibling, *base[2:]])) == "format"
    assert reason(packet([base[0], user + "=", *base[2:]])) == "format"


def test_optional_fields_decode() -> None:
    auth = fko.decode(packet(fields(tail=(b64(b"crypt,secret"),))), KEY, HMAC_KEY)
    assert auth.server_auth == "crypt,secret" and auth.client_timeout is None
    both = fko.decode(packet(fields(msg_type="3", tail=(b64(b"pw"), "45"))), KEY, HMAC_KEY)
    assert (both.server_auth, both.client_timeout, both.msg_type) == ("pw", 45, 3)
    several = fko.decode(packet(fields(message="198.18.0.2,tcp/22,udp/53,tcp/0443")), KEY, HMAC_KEY)
    assert several.access == (("tcp", 22), ("udp", 53), ("tcp", 443))
    six = fko.decode(packet(fields(message="2001:db8::2,udp/53")), KEY, HMAC_KEY)
    assert six.allow_ip == "2001:db8::2"
    assert fko.decode(fko.encode(both, KEY, HMAC_KEY), KEY, HMAC_KEY) == both


def test_long_hmac_keys_use_their_first_128_bytes() -> None:
    long_key = bytes(range(256)) * 2
    payload = fko.encode(fko.new_message("198.18.0.2", [("tcp", 22)], user="a"), KEY, long_key)
    assert fko.decode(payload, KEY, long_key[:128]).user == "a"
    assert reason(payload, hmac_key=long_key[:127]) == "hmac"


# --- hypothesis ---------------------------------------------------------------------------------
USER_CHARS = "".join(c for c in map(chr, range(0x20, 0x7F)) if c not in '"/\\[]:;|=,+*?<>')
ipv4 = st.ip_addresses(v=4).map(str)


def not_ipv4_mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped)


ipv6 = st.ip_addresses(v=6).filter(not_ipv4_mapped).map(str)  # IPv4-mapped are refused: send IPv4
access_lists = st.lists(st.tuples(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535)), min_size=1, max_size=8)
messages = st.builds(
    lambda ip, access, user, timeout, now, auth: dataclasses.replace(
        fko.new_message(ip, access, user=user, timeout=timeout, now=now), server_auth=auth
    ),
    st.one_of(ipv4, ipv6),
    access_lists,
    st.text(USER_CHARS, min_size=1, max_size=48),
    st.none() | st.integers(0, fko.MAX_CLIENT_TIMEOUT),
    st.integers(0, 10**12 - 1),
    st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip_random_messages(message: SpaMessage) -> None:
    payload = fko.encode(message, KEY, HMAC_KEY)
    assert fko.verify_hmac(payload, HMAC_KEY)
    assert fko.decode(payload, KEY, HMAC_KEY) == message


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1600))
def test_random_bytes_never_decode(data: bytes) -> None:
    assert not fko.verify_hmac(data, HMAC_KEY)
    with pytest.raises(Rejected) as info:
        fko.decode(data, KEY, HMAC_KEY)
    assert info.value.reason in {"size", "hmac"}


@settings(max_examples=300, deadline=None)
@given(st.text(B64, min_size=140, max_size=1500))
def test_random_base64_never_decodes(text: str) -> None:
    assert reason(text.encode()) == "hmac"


VALID = valid_payload()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_packets_never_decode(data: st.DataObject) -> None:
    payload = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        if not payload:
            break
        kind = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, len(payload) - 1))
        if kind == "replace":
            payload[at] ^= data.draw(st.integers(1, 255))  # any other byte
        elif kind == "insert":
            payload[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del payload[at : at + data.draw(st.integers(1, 8))]
        else:
            del payload[at:]
    if bytes(payload) == VALID:  # an insert then delete can restore it
        return
    with pytest.raises(Rejected):
        fko.decode(bytes(payload), KEY, HMAC_KEY)


# --- the stock client ---------------------------------------------------------------------------
def run_client(tmp_path: Path, args: list[str]) -> tuple[bytes, str]:
    """fwknop's packet (-T: built, not sent; -B: saved) and its -v dump, with HOME kept in tmp_path."""
    out = tmp_path / "spa.pkt"
    cp = subprocess.run(
        [
            "fwknop",
            "--no-rc-file",
            "--no-save-args",
            "-D",
            "127.0.0.1",
            "--use-hmac",
            "-T",
            "-v",
            "-B",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"HOME": str(tmp_path), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LOGNAME": "spauser"},
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    return out.read_bytes().rstrip(b"\n"), cp.stdout


def key_gen(tmp_path: Path) -> tuple[str, str]:
    cp = subprocess.run(
        ["fwknop", "--key-gen", "--no-rc-file"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    found = dict(re.findall(r"^(KEY_BASE64|HMAC_KEY_BASE64):\s+(\S+)$", cp.stdout, re.MULTILINE))
    return found["KEY_BASE64"], found["HMAC_KEY_BASE64"]


def client_cases(tmp_path: Path) -> Iterator[tuple[list[str], bytes, bytes, dict[str, object]]]:
    """(client args, key, hmac key, fields the decoded message must have): 24 packets, 6 shapes."""
    for round_ in range(4):
        k64, h64 = key_gen(tmp_path)
        keys = ["--key-base64-rijndael", k64, "--key-base64-hmac", h64]
        key, hmac_key = fko.decode_key_base64(k64), fko.decode_key_base64(h64)
        ip = f"198.18.0.{10 + round_}"
        yield (["-A", "tcp/22", "-a", ip, *keys], key, hmac_key, {"allow_ip": ip, "access": (("tcp", 22),)})
        yield (["-A", "tcp/22", "-s", *keys], key, hmac_key, {"allow_ip": "0.0.0.0", "msg_type": 1})
        yield (
            ["-A", "tcp/22,udp/53,tcp/8443", "-a", ip, *keys],
            key,
            hmac_key,
            {"access": (("tcp", 22), ("udp", 53), ("tcp", 8443))},
        )
        yield (
            ["-A", "udp/500", "-a", ip, "--fw-timeout", str(60 + round_), *keys],
            key,
            hmac_key,
            {"msg_type": 3, "client_timeout": 60 + round_, "access": (("udp", 500),)},
        )
        yield (
            ["-A", "tcp/22", "-a", ip, "-U", f"alice.b-{round_}@x y", *keys],
            key,
            hmac_key,
            {"user": f"alice.b-{round_}@x y"},
        )
        # plain keys are used as their bytes; a long HMAC key acts as its first 128 bytes
        plain, plain_hmac = f"pass phrase {round_}", "h" * (60 + 40 * round_)
        yield (
            ["-A", "tcp/22", "-a", ip, "--key-rijndael", plain, "--key-hmac", plain_hmac],
            plain.encode(),
            plain_hmac.encode(),
            {"user": "spauser"},
        )


@needs_client
def test_decodes_stock_client_packets(tmp_path: Path) -> None:
    count = 0
    for args, key, hmac_key, expected in client_cases(tmp_path):
        before = int(time.time())
        payload, dump = run_client(tmp_path, args)
        message = fko.decode(payload, key, hmac_key)
        for name, value in expected.items():
            assert getattr(message, name) == value, (args, message)
        assert message.version == "3.0.0" and before - 1 <= message.timestamp <= time.time() + 1
        assert f"Random Value: {message.rand}" in dump and f"Message String: {message.access_message}" in dump
        # byte-compatible both ways: our encoder, given the client's salt, rebuilds the client's packet
        assert fko.encode(message, key, hmac_key, salt=salt_of(payload)) == payload
        assert reason(payload, key=key, hmac_key=b"!" + hmac_key[1:]) == "hmac"
        count += 1
    assert count == 24


# --- the stock server ---------------------------------------------------------------------------
SENDER = "import socket,sys; socket.socket(2, 2).sendto(sys.stdin.buffer.read(), (sys.argv[1], 62201))"  # INET, DGRAM


def start_fwknopd(lab: Lab, tmp_path: Path, k64: str, h64: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    conf, access, log = tmp_path / "fwknopd.conf", tmp_path / "access.conf", tmp_path / "fwknopd.log"
    conf.write_text(f"ENABLE_UDP_SERVER Y;\nUDPSERV_PORT {fko.DEFAULT_PORT};\nFWKNOP_RUN_DIR {run};\nLOCALE C;\n")
    access.write_text(
        f"SOURCE ANY\nKEY_BASE64 {k64}\nHMAC_KEY_BASE64 {h64}\nOPEN_PORTS tcp/22, udp/53\nFW_ACCESS_TIMEOUT 30\n"
    )
    conf.chmod(0o600)
    access.chmod(0o600)
    argv = ["fwknopd", "-f", "-U", "--verbose", "-c", conf, "-a", access, "-r", run]
    argv += ["-d", run / "digest.cache", "-p", run / "fwknopd.pid"]
    with log.open("wb") as output:
        lab.popen("srv", [str(arg) for arg in argv], stdout=output, stderr=subprocess.STDOUT)
    wait_for(lambda: "Kicking off UDP server" in log.read_text(errors="replace"), what="fwknopd to listen", log=log)
    return log


def wait_for(check: object, *, what: str, log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; fwknopd said:\n{log.read_text(errors='replace')[-3000:]}")


def send(lab: Lab, payload: bytes) -> None:
    cp = lab.run("lan", [sys.executable, "-I", "-S", "-c", SENDER, SRV_LAN4], input=payload, text=False)
    assert cp.returncode == 0, cp.stderr


def fwknop_rules(lab: Lab) -> list[str]:
    cp = lab.run("srv", ["iptables", "-S", "FWKNOP_INPUT"])
    return [line for line in cp.stdout.splitlines() if line.startswith("-A FWKNOP_INPUT")]


@needs_server
def test_stock_server_accepts_our_packets(lab: Lab, tmp_path: Path) -> None:
    key, hmac_key = fko.generate_keys()
    log = start_fwknopd(lab, tmp_path, b64(key) + "=", base64.b64encode(hmac_key).decode())
    plain = fko.encode(fko.new_message("198.18.0.5", [("tcp", 22)], user="alice"), key, hmac_key)
    source = fko.encode(fko.new_message("0.0.0.0", [("udp", 53)], user="bob"), key, hmac_key)
    timed = fko.encode(
        fko.new_message("198.18.0.6", [("tcp", 22), ("udp", 53)], user="carol", timeout=45), key, hmac_key
    )
    forged = fko.encode(fko.new_message("198.18.0.7", [("tcp", 22)], user="mallory"), key, b"not the hmac key")
    for payload in (forged, plain, source, timed):
        send(lab, payload)
    expected = {
        "-s 198.18.0.5/32 -p tcp -m tcp --dport 22",
        f"-s {LAN4}/32 -p udp -m udp --dport 53",  # 0.0.0.0: the packet's source
        "-s 198.18.0.6/32 -p tcp -m tcp --dport 22",
        "-s 198.18.0.6/32 -p udp -m udp --dport 53",
    }

    def added() -> bool:
        return all(any(want in rule for rule in fwknop_rules(lab)) for want in expected)

    wait_for(added, what="fwknopd's iptables rules", log=log)
    text = log.read_text(errors="replace")
    assert len(fwknop_rules(lab)) == 4 and "198.18.0.7" not in "\n".join(fwknop_rules(lab))
    assert text.count("SPA Decode (res=0)") == 3 and "Client Timeout: 45" in text
    assert "Message String: 198.18.0.6,tcp/22,udp/53" in text
    # fwknopd's replay cache holds our replay_digest (base64, "=" stripped) for each accepted packet
    cache = (tmp_path / "run" / "digest.cache").read_text()
    for payload in (plain, source, timed):
        assert b64(fko.replay_digest(payload)) in cache
    assert b64(fko.replay_digest(forged)) not in cache
    send(lab, plain)  # a replay: refused by digest
    wait_for(lambda: "Replay detected" in log.read_text(errors="replace"), what="the replay to be refused", log=log)
    # a payload of STOCK_FWKNOPD_MAX_PAYLOAD is still taken for Rijndael; one just over it for GnuPG
    big = [
        fko.encode(fko.new_message("198.18.0.8", [("tcp", 22)] * n, user="dave"), key, hmac_key) for n in range(1, 26)
    ]
    fits = max((p for p in big if len(p) <= fko.STOCK_FWKNOPD_MAX_PAYLOAD), key=len)
    over = min((p for p in big if len(p) > fko.STOCK_FWKNOPD_MAX_PAYLOAD), key=len)
    send(lab, fits)
    wait_for(lambda: any("198.18.0.8" in rule for rule in fwknop_rules(lab)), what="the largest packet", log=log)
    send(lab, over)
    wait_for(
        lambda: "No stanza encryption mode match" in log.read_text(errors="replace"),
        what="the oversized packet to be taken for GnuPG",
        log=log,
    )
