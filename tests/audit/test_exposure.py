"""The live-ruleset evaluator on nft-JSON listings (what `nft -j list ruleset` prints)."""

from __future__ import annotations

from typing import Any

import pytest

from portward.audit import spans as sp
from portward.audit.exposure import REMOTE, Evaluator, Question, Ruleset
from portward.audit.report import classify
from portward.policy.addresses import parse_address

IFACES = ["eth-lan", "eth-wan"]
DADDR4 = parse_address("198.18.0.1")[1]
DADDR6 = parse_address("2001:db8:0:1::1")[1]


def table(family: str = "inet", name: str = "t") -> dict[str, Any]:
    return {"table": {"family": family, "name": name}}


def chain(name: str, hook: str | None = "input", policy: str = "accept", family: str = "inet", table_name: str = "t",
          prio: int = 0, kind: str = "filter") -> dict[str, Any]:
    body: dict[str, Any] = {"family": family, "table": table_name, "name": name}
    if hook:
        body.update({"type": kind, "hook": hook, "prio": prio, "policy": policy})
    return {"chain": body}


def rule(chain_name: str, *expr: dict[str, Any], family: str = "inet", table_name: str = "t") -> dict[str, Any]:
    return {"rule": {"family": family, "table": table_name, "chain": chain_name, "expr": list(expr)}}


def match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
SADDR6 = {"payload": {"protocol": "ip6", "field": "saddr"}}
DPORT = {"payload": {"protocol": "tcp", "field": "dport"}}
IIFNAME = {"meta": {"key": "iifname"}}
ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}


def admitted(listing: list[dict[str, Any]], port: int = 22, family: int = 4, proto: str = "tcp") -> dict[str, Any]:
    answer = Evaluator(Ruleset(listing), IFACES).answer(
        Question(family, proto, port, DADDR4 if family == 4 else DADDR6)
    )
    return {"admitted": answer.admitted, "unknown": answer.unknown, "range": answer.port_range}


def exposure(listing: list[dict[str, Any]], port: int = 22, family: int = 4) -> tuple[str, list[str]]:
    found = admitted(listing, port, family)
    result = classify({family: found["admitted"]}, IFACES)
    return ("unknown" if found["unknown"] else result.exposure), result.allowed_from


def net(text: str) -> sp.Spans:
    return sp.from_text(4 if ":" not in text else 6, text)


def test_no_ruleset_is_world() -> None:
    assert exposure([]) == ("world", ["any"])


def test_default_drop_with_one_source() -> None:
    listing = [table(), chain("input", policy="drop"), rule("input", match(SADDR, {"prefix": {"addr": "198.18.0.0",
                                                                                                "len": 24}}), ACCEPT)]
    assert exposure(listing) == ("restricted", ["198.18.0.0/24"])
    assert exposure(listing, family=6) == ("blocked", [])


def test_two_halves_make_the_world() -> None:
    listing = [
        table(), chain("input", policy="drop"),
        rule("input", match(SADDR, {"prefix": {"addr": "0.0.0.0", "len": 1}}), ACCEPT),
        rule("input", match(SADDR, {"prefix": {"addr": "128.0.0.0", "len": 1}}), ACCEPT),
    ]
    assert exposure(listing) == ("world", ["any"])


def test_port_match_and_cache_range() -> None:
    listing = [table(), chain("input", policy="drop"),
               rule("input", match(DPORT, {"set": [22, {"range": [8000, 8100]}]}), ACCEPT)]
    assert exposure(listing, 22)[0] == "world"
    assert exposure(listing, 8050)[0] == "world"
    assert exposure(listing, 23)[0] == "blocked"
    assert admitted(listing, 8050)["range"] == (8000, 8100)
    assert admitted(listing, 100)["range"] == (23, 7999)


def test_udp_port_match_does_not_apply_to_tcp() -> None:
    listing = [table(), chain("input", policy="drop"),
               rule("input", match({"payload": {"protocol": "udp", "field": "dport"}}, 22), ACCEPT)]
    assert exposure(listing, 22)[0] == "blocked"


def test_any_base_chain_can_drop_and_accept_does_not_stop_the_next() -> None:
    listing = [
        table(), chain("a", prio=-10), rule("a", ACCEPT),
        table("ip", "filter"), chain("INPUT", family="ip", table_name="filter"),
        rule("INPUT", match(DPORT, 22), DROP, family="ip", table_name="filter"),
    ]
    assert exposure(listing, 22)[0] == "blocked"
    assert exposure(listing, 22, family=6)[0] == "world"  # an ip-family table never sees IPv6


def test_established_and_invalid_rules_do_not_match_a_new_connection() -> None:
    listing = [
        table(), chain("input", policy="drop"),
        rule("input", match({"ct": {"key": "state"}}, ["established", "related"], "in"), ACCEPT),
        rule("input", match({"ct": {"key": "state"}}, "invalid", "in"), DROP),
        rule("input", match({"ct": {"key": "state"}}, "new", "in"), match(DPORT, 22), ACCEPT),
    ]
    assert exposure(listing, 22)[0] == "world"
    assert exposure(listing, 80)[0] == "blocked"


def test_interfaces_split_and_named_sets() -> None:
    listing = [
        table(), chain("input", policy="drop"),
        {"set": {"family": "inet", "table": "t", "name": "lan4", "type": "ipv4_addr", "flags": ["interval"],
                 "elem": [{"prefix": {"addr": "198.18.0.0", "len": 24}}, "198.19.0.7",
                          {"range": ["198.19.0.10", "198.19.0.20"]}]}},
        rule("input", match(IIFNAME, "eth-wan"), match(SADDR, "@lan4"), ACCEPT),
        rule("input", match(IIFNAME, "eth-l*"), ACCEPT),
    ]
    found = admitted(listing)
    assert found["admitted"]["eth-lan"] == REMOTE[4]
    assert found["admitted"]["eth-wan"] == sp.normalize(
        [*net("198.18.0.0/24"), *net("198.19.0.7"), (parse_address("198.19.0.10")[1], parse_address("198.19.0.20")[1])]
    )
    result = classify({4: found["admitted"]}, IFACES)
    assert result.exposure == "restricted"
    assert result.allowed_from == ["any via eth-lan", "198.18.0.0/24 via eth-wan", "198.19.0.7/32 via eth-wan",
                                   "198.19.0.10/31 via eth-wan", "198.19.0.12/30 via eth-wan",
                                   "198.19.0.16/30 via eth-wan", "198.19.0.20/32 via eth-wan"]
    lan_only = classify({4: {"eth-lan": found["admitted"]["eth-lan"]}}, IFACES)
    assert lan_only.allowed_from == ["any"] and lan_only.via == ["eth-lan"]


def test_jump_return_and_goto() -> None:
    listing = [
        table(), chain("input", policy="drop"), chain("svc", hook=None), chain("deny", hook=None),
        rule("input", match(DPORT, 22), {"jump": {"target": "svc"}}),
        rule("input", match(SADDR, {"prefix": {"addr": "198.19.0.0", "len": 16}}), ACCEPT),
        rule("svc", match(SADDR, {"prefix": {"addr": "198.18.0.0", "len": 16}}), {"return": None}),
        rule("svc", {"goto": {"target": "deny"}}),
        rule("deny", match(SADDR, "198.20.0.1"), ACCEPT),
    ]
    # 198.18/16 returns to input where no rule accepts it -> policy drop; the rest goes to deny, which accepts
    # 198.20.0.1; what deny lets fall through returns to where svc would have (input, after the jump), and
    # input's next rule accepts 198.19/16
    assert exposure(listing, 22) == ("restricted", ["198.19.0.0/16", "198.20.0.1/32"])
    assert exposure(listing, 80) == ("restricted", ["198.19.0.0/16"])


def test_block_set_minus_from_world_reads_as_any_except() -> None:
    listing = [table(), chain("input"), rule("input", match(SADDR, {"prefix": {"addr": "198.19.0.0", "len": 24}}),
                                             DROP)]
    found = admitted(listing)
    result = classify({4: found["admitted"]}, IFACES)
    assert result.exposure == "restricted"
    assert result.allowed_from == ["0.0.0.0/0"] and result.denied_from == ["198.19.0.0/24"]


def test_rate_meter_over_and_limit_over_do_not_fire() -> None:
    listing = [
        table(), chain("input", policy="drop"),
        rule("input", match(DPORT, 22), {"set": {"op": "update", "elem": SADDR, "set": "@m",
                                                 "stmt": [{"limit": {"rate": 10, "per": "minute", "inv": True}}]}},
             DROP),
        rule("input", match(DPORT, 22), {"limit": {"rate": 5, "per": "second", "inv": True}}, DROP),
        rule("input", match(DPORT, 22), {"limit": {"rate": 5, "per": "second"}}, ACCEPT),
    ]
    assert exposure(listing, 22)[0] == "world"


def test_verdict_map_on_source() -> None:
    listing = [
        table(), chain("input", policy="accept"),
        rule("input", {"vmap": {"key": SADDR, "data": {"set": [
            [{"prefix": {"addr": "198.18.0.0", "len": 15}}, ACCEPT],
            [{"prefix": {"addr": "0.0.0.0", "len": 0}}, DROP],
        ]}}}),
    ]
    assert exposure(listing) == ("restricted", ["198.18.0.0/15"])


def test_concatenated_set_of_source_and_port() -> None:
    listing = [
        table(), chain("input", policy="drop"),
        {"set": {"family": "inet", "table": "t", "name": "pairs", "type": ["ipv4_addr", "inet_service"],
                 "elem": [{"concat": ["198.18.0.2", 22]}, {"concat": ["198.18.0.3", 80]}]}},
        rule("input", match({"concat": [SADDR, DPORT]}, "@pairs"), ACCEPT),
    ]
    assert exposure(listing, 22) == ("restricted", ["198.18.0.2/32"])
    assert exposure(listing, 80) == ("restricted", ["198.18.0.3/32"])


def test_tcp_flags_syn_and_fib_and_sport() -> None:
    flags = {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["fin", "syn", "rst", "ack"]]}
    listing = [
        table(), chain("input", policy="drop"),
        rule("input", match(flags, "syn", "!="), DROP),  # not a SYN: never our new connection
        rule("input", match({"fib": {"result": "oif", "flags": ["saddr", "iif"]}}, False), DROP),  # rpfilter
        rule("input", match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
             match({"payload": {"protocol": "tcp", "field": "sport"}}, 53), ACCEPT),
    ]
    assert exposure(listing, 22)[0] == "world"  # a client can pick source port 53


def test_unknown_is_said_with_the_rule() -> None:
    listing = [table("ip", "filter"), chain("INPUT", family="ip", table_name="filter"),
               rule("INPUT", {"xt": {"type": "match", "name": "recent"}}, DROP, family="ip", table_name="filter")]
    found = admitted(listing)
    assert found["unknown"] and "recent" in found["unknown"][0] and "chain INPUT" in found["unknown"][0]


def test_dnat_in_prerouting_diverts() -> None:
    listing = [table("ip", "nat"), chain("PREROUTING", hook="prerouting", family="ip", table_name="nat", kind="nat",
                                         prio=-100),
               rule("PREROUTING", match(DPORT, 8080), {"dnat": {"addr": "198.18.5.5", "port": 80}}, family="ip",
                    table_name="nat")]
    answer = Evaluator(Ruleset(listing), IFACES).answer(Question(4, "tcp", 8080, DADDR4))
    assert answer.admitted == {} and answer.diverted


@pytest.mark.parametrize(("a", "b"), [((), ()), (((1, 5),), ((3, 9),)), (((1, 2), (5, 9)), ((0, 6),))])
def test_span_algebra(a: sp.Spans, b: sp.Spans) -> None:
    union = sp.union(a, b)
    assert sp.union(sp.subtract(a, b), sp.intersect(a, b)) == sp.normalize(list(a))
    assert sp.size(union) == sp.size(a) + sp.size(b) - sp.size(sp.intersect(a, b))
