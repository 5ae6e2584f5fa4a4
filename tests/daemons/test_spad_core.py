"""SpaServer (spad's sans-IO core): fwknopd's checks in its order, on packets made by portward's encoder."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from portward.daemons import fko
from portward.daemons.spad import Door, ReplayCache, SpaServer, grant_commands, load_doors
from portward.errors import InputError
from portward.policy.addresses import parse_port_spec
from portward.policy.toml import load_policy_text

KEY = os.urandom(32)
HMAC_KEY = os.urandom(64)
NOW = 1_790_000_000.0
LAN = "198.18.0.2"


def door(name: str = "ssh", **changes: object) -> Door:
    values: dict[str, object] = {
        "name": name, "proto": "udp", "port": 62201, "open": (parse_port_spec("22/tcp"), parse_port_spec("53/udp")),
        "senders": None, "key": KEY, "hmac_key": HMAC_KEY, "open_for": 30, "max_open_for": 300,
        "require_source_address": False,
    }
    values.update(changes)
    return Door(**values)  # type: ignore[arg-type]


def packet(allow: str = LAN, access: list[tuple[str, int]] | None = None, *, now: float = NOW,
           timeout: int | None = None, key: bytes = KEY, hmac_key: bytes = HMAC_KEY) -> bytes:
    message = fko.new_message(allow, access or [("tcp", 22)], timeout=timeout, now=now)
    return fko.encode(message, key, hmac_key)


def server(*doors: Door, replay: ReplayCache | None = None, now: float = NOW) -> SpaServer:
    cache = ReplayCache(clock=lambda: now) if replay is None else replay  # an empty cache is falsy (len 0)
    return SpaServer(list(doors) or [door()], cache, clock=lambda: now)


def test_a_valid_packet_grants_exactly_what_it_asks_for_the_address_inside() -> None:
    outcome = server().feed("198.19.0.2", 4, "udp", 62201, packet(LAN))
    assert outcome.verdict == "granted" and outcome.grant is not None
    assert outcome.grant.address == LAN and outcome.grant.access == (("tcp", 22),) and outcome.grant.timeout == 30
    (add, delete, again) = grant_commands(outcome.grant)
    element = add["add"]["element"]
    assert element["name"] == "spa_ssh_open_v4" and delete["delete"]["element"] == element == again["add"]["element"]
    assert element["elem"] == [{"elem": {"val": {"concat": [LAN, "tcp", 22]}, "timeout": 30}}]


def test_source_flag_means_the_packets_source_unless_the_door_requires_an_address() -> None:
    outcome = server().feed(LAN, 4, "udp", 62201, packet("0.0.0.0"))
    assert outcome.grant is not None and outcome.grant.address == LAN
    strict = server(door(require_source_address=True)).feed(LAN, 4, "udp", 62201, packet("0.0.0.0"))
    assert (strict.verdict, strict.reason) == ("rejected", "source")


def test_ipv6_allow_addresses_go_to_the_v6_set() -> None:
    outcome = server().feed("2001:db8:0:1::2", 6, "udp", 62201, packet("2001:db8:0:1::2", [("udp", 53)]))
    assert outcome.grant is not None and outcome.grant.family == 6
    assert grant_commands(outcome.grant)[0]["add"]["element"]["name"] == "spa_ssh_open_v6"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lambda: packet(now=NOW - 121), "stale"),
        (lambda: packet(now=NOW + 121), "stale"),
        (lambda: packet(access=[("tcp", 23)]), "access"),
        (lambda: packet(access=[("tcp", 22), ("tcp", 80)]), "access"),  # one refused port refuses the packet
        (lambda: packet(hmac_key=os.urandom(64)), "hmac"),
        (lambda: b"x" * 139, "size"),
        (lambda: b"x" * 1501, "size"),
    ],
)
def test_what_fwknopd_refuses_is_refused(payload: object, reason: str) -> None:
    outcome = server().feed(LAN, 4, "udp", 62201, payload())  # type: ignore[operator]
    assert (outcome.verdict, outcome.reason) == ("rejected", reason)


def test_a_wrong_encryption_key_with_the_right_hmac_key_fails_after_the_hmac() -> None:
    outcome = server().feed(LAN, 4, "udp", 62201, packet(key=os.urandom(32)))
    assert outcome.verdict == "rejected" and outcome.reason not in ("hmac", "ok")


def test_client_timeouts_are_capped_by_max_open_for() -> None:
    asked = server().feed(LAN, 4, "udp", 62201, packet(timeout=60))
    assert asked.grant is not None and asked.grant.timeout == 60
    capped = server(door(max_open_for=90)).feed(LAN, 4, "udp", 62201, packet(timeout=600))
    assert capped.grant is not None and capped.grant.timeout == 90


def test_replays_are_refused_also_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "spa-replay"
    sent = packet()
    first = server(replay=ReplayCache(path, clock=lambda: NOW))
    assert first.feed(LAN, 4, "udp", 62201, sent).verdict == "granted"
    assert first.feed(LAN, 4, "udp", 62201, sent).reason == "replay"
    first.replay.close()
    restarted = server(replay=ReplayCache(path, clock=lambda: NOW + 5))
    assert restarted.feed(LAN, 4, "udp", 62201, sent).reason == "replay"
    assert restarted.feed(LAN, 4, "udp", 62201, packet()).verdict == "granted"  # a fresh packet still works
    restarted.replay.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # once a digest's packet would be stale anyway, a restart forgets it
    later = ReplayCache(path, clock=lambda: NOW + 1000)
    assert len(later) == 0
    later.close()


def test_garbage_and_rejected_packets_leave_no_state() -> None:
    core = server()
    for size in range(140, 1500, 7):
        assert core.feed(LAN, 4, "udp", 62201, os.urandom(size)).verdict == "rejected"
    assert core.feed(LAN, 4, "udp", 62201, packet(now=NOW - 500)).reason == "stale"
    assert len(core.replay) == 0


def test_doors_on_one_port_are_told_apart_by_key_and_sender() -> None:
    other_key, other_hmac = os.urandom(32), os.urandom(64)
    wan_only = door("wan", key=other_key, hmac_key=other_hmac, open=(parse_port_spec("2222/tcp"),),
                    senders={4: [(int.from_bytes(bytes([198, 19, 0, 0])), int.from_bytes(bytes([198, 19, 255, 255])))],
                             6: []})
    core = server(door(), wan_only)
    wan_packet = packet("198.19.0.2", [("tcp", 2222)], key=other_key, hmac_key=other_hmac)
    granted = core.feed("198.19.0.2", 4, "udp", 62201, wan_packet)
    assert granted.door == "wan" and granted.verdict == "granted"
    # the same door's packet from a sender outside its `from` has no door to try
    lan_try = core.feed(LAN, 4, "udp", 62201, packet(LAN, [("tcp", 2222)], key=other_key, hmac_key=other_hmac))
    assert (lan_try.verdict, lan_try.reason) == ("rejected", "hmac")
    assert core.feed(LAN, 4, "udp", 62202, packet()).reason == "port"


def test_keys_come_from_the_policy_or_files_next_to_it(tmp_path: Path) -> None:
    key_b64 = base64.b64encode(KEY).decode()
    (tmp_path / "keys").write_text(f"KEY_BASE64: {key_b64}\nHMAC_KEY_BASE64: {base64.b64encode(HMAC_KEY).decode()}\n")
    loaded = load_policy_text(
        '[[spa]]\nname = "ssh"\nopen = ["22/tcp"]\nfrom = ["198.18.0.0/24"]\n'
        'key_file = "keys"\nhmac_key_file = "keys"\n',
        str(tmp_path / "p.toml"),
    )
    (loaded_door,) = load_doors(loaded)
    assert loaded_door.key == KEY and loaded_door.hmac_key == HMAC_KEY
    assert loaded_door.admits_sender(4, int.from_bytes(bytes([198, 18, 0, 9])))
    assert not loaded_door.admits_sender(4, int.from_bytes(bytes([198, 19, 0, 9])))
    missing = load_policy_text(f'[[spa]]\nname = "x"\nopen = ["22/tcp"]\nkey_base64 = "{key_b64}"\n',
                               str(tmp_path / "q.toml"))
    with pytest.raises(InputError, match="hmac_key_base64"):
        load_doors(missing)
