"""Raw nf_tables netlink: encoding checks anywhere, kernel checks inside throw-away namespaces.

Kernel tests compare what the raw path writes with what `nft` itself writes into a twin set,
as `nft -j list set` shows both. Addresses: 198.18.0.0/15, 240.0.0.0/4, 2001:db8::/32 only
(plus the edges of the address space, which only exist inside the test namespace's sets).
"""

from __future__ import annotations

import errno
import ipaddress
import pickle
import random
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest

from portward.kernel import nfnetlink as nl
from portward.kernel.nfnetlink import ElementOp, NetlinkError, concat_key, interval_ops
from tests.kernel.nsutil import Netns, netns_available, scratch_netns

Op = Literal["add", "delete"]


def ivl(op: Op, text: str) -> list[ElementOp]:
    """interval_ops for "a.b.c.d/n" or "first-last" (v4 or v6)."""
    if "-" in text:
        first_text, last_text = text.split("-")
        first, last = ipaddress.ip_address(first_text), ipaddress.ip_address(last_text)
        return interval_ops(op, int(first), int(last), first.max_prefixlen // 8)
    net = ipaddress.ip_network(text)
    return interval_ops(op, int(net.network_address), int(net.broadcast_address), net.max_prefixlen // 8)


def ivls(op: Op, texts: list[str]) -> list[ElementOp]:
    return [element for text in texts for element in ivl(op, text)]


# --- encoding (no kernel needed) ---------------------------------------------------------------


def test_interval_ops_match_nft_debug_output() -> None:
    # nft --debug=netlink add element ... { 198.18.0.0/24 }:
    #   element 000012c6 : 0 [end]   element 000112c6 : 1 [end]
    assert ivl("add", "198.18.0.0/24") == [
        ElementOp("add", bytes([198, 18, 0, 0])),
        ElementOp("add", bytes([198, 18, 1, 0]), interval_end=True),
    ]
    # 255.0.0.0/8: element 000000ff : 0 [end] userdata = { \x01\x04\x01\x00\x00\x00 }
    assert ivl("add", "255.0.0.0/8") == [ElementOp("add", bytes([255, 0, 0, 0]), open_interval=True)]
    assert ivl("delete", "0.0.0.0/8") == [
        ElementOp("delete", bytes(4)),
        ElementOp("delete", bytes([1, 0, 0, 0]), interval_end=True),
    ]
    assert ivl("add", "198.18.3.7-198.18.3.7") == [
        ElementOp("add", bytes([198, 18, 3, 7])),
        ElementOp("add", bytes([198, 18, 3, 8]), interval_end=True),
    ]
    six = ivl("add", "2001:db8::/64")
    assert six == [
        ElementOp("add", ipaddress.IPv6Address("2001:db8::").packed),
        ElementOp("add", ipaddress.IPv6Address("2001:db8:0:1::").packed, interval_end=True),
    ]
    assert ivl("add", "ffff::/16") == [
        ElementOp("add", ipaddress.IPv6Address("ffff::").packed, open_interval=True)
    ]
    # TLV type 1 (NFTNL_UDATA_SET_ELEM_FLAGS), length 4, value 1 in host order (x86: 01 00 00 00)
    userdata = nl.OPEN_INTERVAL_USERDATA
    assert userdata == b"\x01\x04" + (1).to_bytes(4, sys.byteorder)
    for bad in ((5, 4, 4), (-1, 4, 4), (0, 2**32, 4), (0, 1, 0)):
        with pytest.raises(ValueError):
            interval_ops("add", *bad)


def test_fast_constructor_builds_the_same_dataclass() -> None:
    made = nl._op("delete", b"\x01\x02\x03\x04", True, False)
    assert made == ElementOp("delete", b"\x01\x02\x03\x04", interval_end=True)
    assert hash(made) == hash(ElementOp("delete", b"\x01\x02\x03\x04", interval_end=True))
    assert repr(made) == repr(ElementOp("delete", b"\x01\x02\x03\x04", interval_end=True))


def test_concat_key_pads_each_field_to_four_bytes() -> None:
    # nft --debug=netlink: 198.18.0.1 . tcp . 22 -> element 010012c6 00000006 00001600
    key = concat_key(socket.inet_aton("198.18.0.1"), bytes([6]), struct.pack(">H", 22))
    assert key == bytes.fromhex("c61200010600000000160000")


def test_element_encoding() -> None:
    start = nl._encode_element(ElementOp("add", bytes([198, 18, 0, 0])))
    # LIST_ELEM(nested, 16) { KEY(nested, 12) { DATA_VALUE(8) c6120000 } }
    assert start == bytes.fromhex("1000 0180 0c00 0180 0800 0100 c6120000")
    end = nl._encode_element(ElementOp("add", bytes([198, 18, 1, 0]), interval_end=True))
    assert end == bytes.fromhex("1800 0180 0c00 0180 0800 0100 c6120100 0800 0300 00000001")
    opened = nl._encode_element(ElementOp("add", bytes([255, 0, 0, 0]), open_interval=True))
    assert opened[16:] == bytes.fromhex("0a00 0600") + nl.OPEN_INTERVAL_USERDATA + b"\0\0"
    timed = nl._encode_element(ElementOp("add", bytes(12), timeout_ms=1500))
    assert timed[-12:] == bytes.fromhex("0c00 0400 00000000000005dc")
    ranged = nl._encode_element(ElementOp("add", bytes(4), key_end=bytes([1, 2, 3, 4])))
    assert ranged[16:] == bytes.fromhex("0c00 0a80 0800 0100 01020304")
    odd = nl._encode_element(ElementOp("add", b"\x00\x16"))  # inet_service: 2 bytes, padded
    assert odd == bytes.fromhex("1000 0180 0c00 0180 0600 0100 0016 0000")


def test_fast_path_encodes_like_the_general_encoder() -> None:
    ops = [
        *ivl("add", "198.18.0.0/24"),
        *ivl("add", "255.0.0.0/8"),
        *ivl("add", "2001:db8::/64"),
        ElementOp("add", bytes(12), timeout_ms=5),
        ElementOp("add", bytes(4), key_end=bytes([9, 9, 9, 9])),
        ElementOp("add", bytearray(b"\x01\x02\x03\x04"), interval_end=True),  # type: ignore[arg-type]
    ]
    ((chunk, lo, hi),) = nl._chunks("s", "add", ops)
    assert (lo, hi) == (0, len(ops))
    assert chunk == [nl._encode_element(element) for element in ops]


@pytest.mark.parametrize(
    "bad",
    [
        ElementOp("add", b""),
        ElementOp("add", bytes(65)),
        ElementOp("add", bytes(4), interval_end=True, open_interval=True),
        ElementOp("add", bytes(4), timeout_ms=-1),
        ElementOp("add", bytes(4), key_end=b""),
        ElementOp("insert", bytes(4)),  # type: ignore[arg-type]
    ],
)
def test_bad_elements_are_refused_before_sending(bad: ElementOp) -> None:
    with pytest.raises(ValueError, match=r"set s element #1"):
        nl._build_batch("inet", "t", [("s", [ElementOp("add", bytes(4)), bad])], 1)


def test_bad_arguments_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="family"):
        nl._build_batch("ipv4", "t", [("s", ivl("add", "198.18.0.0/24"))], 1)
    with pytest.raises(ValueError, match="once"):
        nl._build_batch("ip", "t", [("s", []), ("s", [])], 1)
    with pytest.raises(ValueError, match="table name"):
        nl._build_batch("ip", "", [("s", [])], 1)
    with pytest.raises(ValueError, match="set name"):
        nl._build_batch("ip", "t", [("x" * 256, [])], 1)


def _split(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each netlink message in data."""
    out = []
    pos = 0
    while pos < len(data):
        length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
        out.append((kind, flags, seq, data[pos + 16 : pos + length]))
        pos += (length + 3) & ~3
    assert pos == len(data)
    return out


def test_batch_layout_split_and_error_offsets() -> None:
    adds_a = ivls("add", [f"240.{i >> 8}.{i & 255}.0/24" for i in range(6000)])  # ~120 KB of elements
    mixed_b = ivl("add", "198.18.4.0/24") + ivl("delete", "198.18.0.0/24") + ivl("add", "255.0.0.0/8")
    messages, sent = nl._build_batch("ip", "tbl", [("a", adds_a), ("b", mixed_b)], 0xFFFFFFF0)
    parsed = _split(b"".join(messages))
    kinds = [(kind, flags) for kind, flags, _seq, _payload in parsed]
    nft = nl.NFNL_SUBSYS_NFTABLES << 8
    new = (nft | nl.NFT_MSG_NEWSETELEM, nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE)
    assert kinds[0] == (nl.NFNL_MSG_BATCH_BEGIN, nl.NLM_F_REQUEST)
    assert kinds[1] == (nft | nl.NFT_MSG_DELSETELEM, nl.NLM_F_REQUEST | nl.NLM_F_ACK)  # deletes first
    assert kinds[2:-1] == [new] * (len(parsed) - 3)
    assert kinds[-1] == (nl.NFNL_MSG_BATCH_END, nl.NLM_F_REQUEST)
    assert len(parsed) >= 6  # set a needed several messages, all in the one batch
    # BEGIN/END: AF_UNSPEC, version 0, res_id = NFNL_SUBSYS_NFTABLES in network order
    assert parsed[0][3] == bytes([0, 0, 0, 10]) and parsed[-1][3] == bytes([0, 0, 0, 10])
    seqs = [seq for _kind, _flags, seq, _payload in parsed]
    assert len(set(seqs)) == len(seqs) and 0 not in seqs and list(sent) == seqs

    for kind, _flags, seq, payload in parsed[1:-1]:
        assert payload[0] == 2  # NFPROTO_IPV4
        attrs = nl.parse_nlas(payload, 4)
        assert attrs[nl.NFTA_SET_ELEM_LIST_TABLE] == b"tbl\0"
        elements_len = len(attrs[nl.NFTA_SET_ELEM_LIST_ELEMENTS]) + 4
        assert elements_len <= nl.MAX_ELEMENTS_PAYLOAD + 4 < 65536
        # every recorded offset points at an NFTA_LIST_ELEM holding that op's key
        info = sent[seq]
        ops = adds_a if info.set_name == "a" else mixed_b
        message = struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload
        offsets, indices = info.offsets(), info.indices()
        assert offsets[-1] < len(message)
        for offset, index in zip(offsets, indices, strict=True):
            elem_len, elem_type = struct.unpack_from("=HH", message, offset)
            assert elem_type == nl.NFTA_LIST_ELEM | nl.NLA_F_NESTED
            key = nl.parse_nlas(nl.parse_nlas(message[offset + 4 : offset + elem_len])[nl.NFTA_SET_ELEM_KEY])
            assert key[nl.NFTA_DATA_VALUE] == ops[index].key
        for offset, index in list(zip(offsets, indices, strict=True))[:: max(1, len(offsets) // 5)]:
            assert info.element_at(offset) == index
            assert info.element_at(offset + 8) == index  # an attribute inside it still names it
    assert [sent[s].indices() for s in seqs if sent[s].set_name == "b"] == [[2, 3], [0, 1, 4]]
    assert sum(len(sent[s].indices()) for s in seqs if sent[s].set_name == "a") == len(adds_a)

    with_gen, _ = nl._build_batch("ip", "tbl", [("b", mixed_b)], 1, expected_generation=0x01020304)
    assert with_gen[0][20:] == bytes.fromhex("0800 0100 01020304")  # NFNL_BATCH_GENID, be32


def test_netlink_error_survives_pickle() -> None:
    error = NetlinkError(2, "refused", set_name="s", op="delete", index=3, errors=[(2, "s", "delete", 3)])
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, NetlinkError) and isinstance(copy, OSError)
    assert (copy.errno, str(copy), copy.set_name, copy.op, copy.index) == (2, "refused", "s", "delete", 3)
    assert copy.errors == [(2, "s", "delete", 3)] and copy.outcome_unknown is False


def test_empty_change_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("no socket expected")

    monkeypatch.setattr(nl, "_open_socket", fail)
    nl.apply_element_batch("inet", "t", [])
    nl.apply_element_batch("inet", "t", [("s", []), ("t", [])])


# --- kernel, inside throw-away namespaces ------------------------------------------------------

kernel = pytest.mark.netns
_why_not = netns_available()
needs_netns = pytest.mark.skipif(_why_not is not None, reason=f"netns tests: {_why_not}")


@pytest.fixture
def ns() -> Iterator[Netns]:
    with scratch_netns("pw-nl") as netns:
        yield netns


def elements(ns: Netns, family: str, table: str, name: str) -> list[Any]:
    listing = ns.nft_json("list", "set", family, table, name)
    sets = [item["set"] for item in listing["nftables"] if "set" in item]
    assert len(sets) == 1
    return list(sets[0].get("elem", []))


def make_twin_sets(ns: Netns, family: str, table: str, spec: str) -> None:
    ns.nft("add", "table", family, table)
    for name in ("raw", "nft"):
        ns.nft("add", "set", family, table, name, f"{{ {spec} }}")


@kernel
@needs_netns
def test_generation_increases_after_each_commit(ns: Netns) -> None:
    first = ns.call(nl.get_generation)
    ns.nft("add table inet t")
    second = ns.call(nl.get_generation)
    assert second > first
    ns.nft("add set inet t s { type ipv4_addr; flags interval; }")
    third = ns.call(nl.get_generation)
    ns.call(nl.apply_element_batch, "inet", "t", [("s", ivl("add", "198.18.0.0/24"))])
    assert ns.call(nl.get_generation) == third + 1  # one batch, one commit
    assert ns.call(nl.get_generation) == third + 1  # reading does not commit


V4_FIRST = ["198.18.0.0/24", "198.18.4.0/22", "198.19.0.7-198.19.0.200", "240.0.0.0/8"]
V4_EDGES = ["0.0.0.0/8", "255.255.255.0/24", "198.18.9.1-198.18.9.1", "198.18.10.0/23"]


@kernel
@needs_netns
def test_ipv4_intervals_list_like_nft(ns: Netns) -> None:
    make_twin_sets(ns, "ip", "t", "type ipv4_addr; flags interval;")
    # first fill of an empty set: nft also sends its "end at 0" marker; we do not need it
    ns.call(nl.apply_element_batch, "ip", "t", [("raw", ivls("add", V4_FIRST))])
    ns.nft("add", "element", "ip", "t", "nft", "{ " + ", ".join(V4_FIRST) + " }")
    assert elements(ns, "ip", "t", "raw") == elements(ns, "ip", "t", "nft")

    # the edges: starting at 0.0.0.0 and ending at 255.255.255.255 (open interval)
    ns.call(nl.apply_element_batch, "ip", "t", [("raw", ivls("add", V4_EDGES))])
    ns.nft("add", "element", "ip", "t", "nft", "{ " + ", ".join(V4_EDGES) + " }")
    listed = elements(ns, "ip", "t", "raw")
    assert listed == elements(ns, "ip", "t", "nft")
    assert {"prefix": {"addr": "0.0.0.0", "len": 8}} in listed
    assert {"prefix": {"addr": "255.255.255.0", "len": 24}} in listed
    assert {"range": ["198.19.0.7", "198.19.0.200"]} in listed
    # and the kernel's own lookup agrees at the very edges
    found = ns.nft("get", "element", "ip", "t", "raw", "{ 0.0.0.0, 255.255.255.255, 198.18.9.1 }")
    assert "0.0.0.0/8" in found and "255.255.255.0/24" in found and "198.18.9.1" in found
    assert ns.nft("get", "element", "ip", "t", "raw", "{ 198.18.9.2 }", check=False) == ""

    gone = ["0.0.0.0/8", "255.255.255.0/24", "198.18.4.0/22", "198.19.0.7-198.19.0.200"]
    ns.call(nl.apply_element_batch, "ip", "t", [("raw", ivls("delete", gone))])
    ns.nft("delete", "element", "ip", "t", "nft", "{ " + ", ".join(gone) + " }")
    listed = elements(ns, "ip", "t", "raw")
    assert listed == elements(ns, "ip", "t", "nft")
    assert len(listed) == len(V4_FIRST) + len(V4_EDGES) - len(gone)


V6_FIRST = ["2001:db8::/64", "2001:db8:1::/48", "2001:db8:2::5-2001:db8:2::9"]
V6_EDGES = ["::/16", "ffff:ffff::/32", "2001:db8:3::1-2001:db8:3::1"]


@kernel
@needs_netns
def test_ipv6_intervals_list_like_nft(ns: Netns) -> None:
    make_twin_sets(ns, "ip6", "t", "type ipv6_addr; flags interval;")
    for batch in (V6_FIRST, V6_EDGES):
        ns.call(nl.apply_element_batch, "ip6", "t", [("raw", ivls("add", batch))])
        ns.nft("add", "element", "ip6", "t", "nft", "{ " + ", ".join(batch) + " }")
        assert elements(ns, "ip6", "t", "raw") == elements(ns, "ip6", "t", "nft")
    listed = elements(ns, "ip6", "t", "raw")
    assert {"prefix": {"addr": "::", "len": 16}} in listed
    assert {"prefix": {"addr": "ffff:ffff::", "len": 32}} in listed

    gone = ["::/16", "ffff:ffff::/32", "2001:db8:2::5-2001:db8:2::9"]
    ns.call(nl.apply_element_batch, "ip6", "t", [("raw", ivls("delete", gone))])
    ns.nft("delete", "element", "ip6", "t", "nft", "{ " + ", ".join(gone) + " }")
    assert elements(ns, "ip6", "t", "raw") == elements(ns, "ip6", "t", "nft")
    assert len(elements(ns, "ip6", "t", "raw")) == 3


@kernel
@needs_netns
def test_inet_family_and_sets_filled_by_nft(ns: Netns) -> None:
    # The raw path also edits sets nft filled (with its "end at 0" marker element).
    ns.nft("add table inet t")
    ns.nft("add set inet t s { type ipv4_addr; flags interval; elements = { 198.18.0.0/24 } }")
    ns.call(nl.apply_element_batch, "inet", "t", [("s", ivls("add", ["0.0.0.0/8", "198.18.1.0/24"]))])
    assert elements(ns, "inet", "t", "s") == [
        {"prefix": {"addr": "0.0.0.0", "len": 8}},
        {"prefix": {"addr": "198.18.0.0", "len": 24}},
        {"prefix": {"addr": "198.18.1.0", "len": 24}},
    ]
    ns.call(nl.apply_element_batch, "inet", "t", [("s", ivls("delete", ["0.0.0.0/8", "198.18.0.0/24"]))])
    assert elements(ns, "inet", "t", "s") == [{"prefix": {"addr": "198.18.1.0", "len": 24}}]


@kernel
@needs_netns
def test_delete_and_wider_add_in_one_batch(ns: Netns) -> None:
    ns.nft("add table inet t")
    ns.nft("add set inet t s { type ipv4_addr; flags interval; }")
    ns.nft("add set inet t s6 { type ipv6_addr; flags interval; }")
    ns.call(nl.apply_element_batch, "inet", "t", [("s", ivls("add", ["198.18.0.0/24", "198.18.8.0/24"]))])
    ns.call(nl.apply_element_batch, "inet", "t", [("s6", ivl("add", "2001:db8::/64"))])
    before = ns.call(nl.get_generation)
    # adds listed before deletes on purpose: the batch still sends every delete first
    changes = [
        ("s", ivl("add", "198.18.0.0/23") + ivl("delete", "198.18.0.0/24")),
        ("s6", ivl("delete", "2001:db8::/64") + ivl("add", "2001:db8::/63")),
    ]
    ns.call(nl.apply_element_batch, "inet", "t", changes)
    assert ns.call(nl.get_generation) == before + 1
    assert elements(ns, "inet", "t", "s") == [
        {"prefix": {"addr": "198.18.0.0", "len": 23}},
        {"prefix": {"addr": "198.18.8.0", "len": 24}},
    ]
    assert elements(ns, "inet", "t", "s6") == [{"prefix": {"addr": "2001:db8::", "len": 63}}]


@kernel
@needs_netns
def test_refused_batch_changes_nothing(ns: Netns) -> None:
    ns.nft("add table inet t")
    ns.nft("add set inet t a { type ipv4_addr; flags interval; elements = { 198.18.0.0/24 } }")
    ns.nft("add set inet t b { type ipv4_addr; flags interval; elements = { 198.19.0.0/24 } }")
    ns.nft("add set inet t h { type ipv4_addr; }")
    before = {name: elements(ns, "inet", "t", name) for name in ("a", "b", "h")}
    generation = ns.call(nl.get_generation)
    changes = [
        ("a", ivl("delete", "198.18.0.0/24") + ivl("add", "198.18.2.0/24")),
        ("h", [ElementOp("add", bytes([198, 18, 7, 7]))]),
        # element #2, #3: an interval that is not in set b
        ("b", ivl("add", "198.19.8.0/24") + ivl("delete", "198.19.4.0/24")),
    ]
    with pytest.raises(NetlinkError) as refused:
        ns.call(nl.apply_element_batch, "inet", "t", changes)
    error = refused.value
    assert error.errno == errno.ENOENT
    assert (error.set_name, error.op, error.index) == ("b", "delete", 2)
    assert "delete of element #2 in set inet t b" in str(error) and "nothing was changed" in str(error)
    assert not error.outcome_unknown
    assert {name: elements(ns, "inet", "t", name) for name in ("a", "b", "h")} == before
    assert ns.call(nl.get_generation) == generation  # an aborted batch is no commit

    # missing set / table: the message as a whole is refused
    with pytest.raises(NetlinkError) as missing:
        ns.call(
            nl.apply_element_batch,
            "inet",
            "t",
            [("a", ivl("add", "198.18.9.0/24")), ("nope", ivl("add", "198.18.9.0/24"))],
        )
    assert (missing.value.errno, missing.value.set_name, missing.value.op) == (errno.ENOENT, "nope", "add")
    with pytest.raises(NetlinkError) as no_table:
        ns.call(nl.apply_element_batch, "ip", "t", [("a", ivl("add", "198.18.9.0/24"))])
    assert no_table.value.errno == errno.ENOENT
    # overlapping an existing interval: the kernel says EEXIST
    with pytest.raises(NetlinkError) as overlap:
        ns.call(nl.apply_element_batch, "inet", "t", [("a", ivl("add", "198.18.0.0/23"))])
    assert (overlap.value.errno, overlap.value.index) == (errno.EEXIST, 1)
    assert {name: elements(ns, "inet", "t", name) for name in ("a", "b", "h")} == before


@kernel
@needs_netns
def test_expected_generation_makes_the_commit_conditional(ns: Netns) -> None:
    ns.nft("add table inet t")
    ns.nft("add set inet t s { type ipv4_addr; flags interval; }")
    seen = ns.call(nl.get_generation)
    ns.nft("add set inet t other { type ipv4_addr; }")  # someone else commits meanwhile
    with pytest.raises(NetlinkError) as stale:
        ns.call(
            nl.apply_element_batch,
            "inet",
            "t",
            [("s", ivl("add", "198.18.0.0/24"))],
            expected_generation=seen,
        )
    assert (stale.value.errno, stale.value.op, stale.value.set_name) == (errno.ERESTART, "batch", None)
    assert elements(ns, "inet", "t", "s") == []
    current = ns.call(nl.get_generation)
    ns.call(
        nl.apply_element_batch, "inet", "t", [("s", ivl("add", "198.18.0.0/24"))], expected_generation=current
    )
    assert elements(ns, "inet", "t", "s") == [{"prefix": {"addr": "198.18.0.0", "len": 24}}]


def _service_key(addr: str, proto: int, port: int) -> bytes:
    return concat_key(socket.inet_aton(addr), bytes([proto]), struct.pack(">H", port))


@kernel
@needs_netns
def test_timeout_elements_in_a_concatenated_hash_set(ns: Netns) -> None:
    spec = "type ipv4_addr . inet_proto . inet_service; flags timeout;"
    make_twin_sets(ns, "inet", "t", spec)
    ns.call(
        nl.apply_element_batch,
        "inet",
        "t",
        [
            (
                "raw",
                [
                    ElementOp("add", _service_key("198.18.0.1", 6, 22), timeout_ms=2000),
                    ElementOp("add", _service_key("198.18.0.2", 17, 53), timeout_ms=60_000),
                ],
            )
        ],
    )
    ns.nft("add element inet t nft { 198.18.0.1 . tcp . 22 timeout 2s, 198.18.0.2 . udp . 53 timeout 60s }")

    def view(name: str) -> list[tuple[Any, Any]]:
        return sorted(
            (elem["elem"]["val"]["concat"], elem["elem"]["timeout"])
            for elem in elements(ns, "inet", "t", name)
        )

    assert view("raw") == view("nft") == [(["198.18.0.1", "tcp", 22], 2), (["198.18.0.2", "udp", 53], 60)]
    text = ns.nft("list", "set", "inet", "t", "raw")
    assert "198.18.0.1 . tcp . 22 timeout 2s expires" in text

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(elements(ns, "inet", "t", "raw")) > 1:
        time.sleep(0.25)
    assert view("raw") == [(["198.18.0.2", "udp", 53], 60)]

    ns.call(
        nl.apply_element_batch,
        "inet",
        "t",
        [("raw", [ElementOp("delete", _service_key("198.18.0.2", 17, 53))])],
    )
    assert elements(ns, "inet", "t", "raw") == []


def _bulk_add(count: int, seed: int) -> dict[str, float]:
    """Runs inside the namespace: add `count` random /24s of 240.0.0.0/4 in one batch."""
    rng = random.Random(seed)
    slots = rng.sample(range(1 << 20), count)  # the 2**20 /24s of 240.0.0.0/4, unsorted
    base = 240 << 24
    started = time.perf_counter()
    ops: list[ElementOp] = []
    for slot in slots:
        first = base | slot << 8
        ops += interval_ops("add", first, first | 255, 4)
    built = time.perf_counter()
    nl.apply_element_batch("ip", "t", [("big", ops)])
    applied = time.perf_counter()
    singles = []
    for i in range(10):
        single = ivl("add", f"198.18.{i}.0/24")
        before = time.perf_counter()
        nl.apply_element_batch("ip", "t", [("big", single)])
        singles.append(time.perf_counter() - before)
    return {
        "interval_ops": built - started,
        "apply": applied - built,
        "single_median": sorted(singles)[len(singles) // 2],
    }


@kernel
@needs_netns
def test_hundred_thousand_intervals_in_one_batch(ns: Netns, capsys: pytest.CaptureFixture[str]) -> None:
    ns.nft("add table ip t")
    ns.nft("add set ip t big { type ipv4_addr; flags interval; }")
    count = 100_000
    timing = ns.call(_bulk_add, count, 20240518)
    with capsys.disabled():
        print(
            f"\n[nfnetlink] {count} intervals ({2 * count} elements): apply_element_batch "
            f"{timing['apply']:.3f} s (+ {timing['interval_ops']:.3f} s building ElementOps); "
            f"1-interval batch into that set: {timing['single_median'] * 1000:.1f} ms median"
        )
    assert timing["apply"] < 10
    listed = elements(ns, "ip", "t", "big")
    assert len(listed) == count + 10
    assert all(item["prefix"]["len"] == 24 for item in listed)
    first_octets = {int(item["prefix"]["addr"].split(".")[0]) for item in listed}
    assert first_octets <= set(range(240, 256)) | {198}
