"""Address and port parsing agrees with the standard library, and merging keeps exactly the same addresses."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portward.policy.addresses import Net, format_interval, merge, merge_ports, parse_net, parse_port_spec


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_v4_networks_match_ipaddress(address: ipaddress.IPv4Address, length: int) -> None:
    network = ipaddress.ip_network(f"{address}/{length}", strict=False)
    net = parse_net(str(network))
    assert (net.family, net.first, net.last) == (4, int(network.network_address), int(network.broadcast_address))
    assert format_interval(4, net.first, net.last) == (str(network) if length < 32 else str(network.network_address))


@given(st.ip_addresses(v=6), st.integers(0, 128))
def test_v6_networks_match_ipaddress(address: ipaddress.IPv6Address, length: int) -> None:
    network = ipaddress.ip_network(f"{address}/{length}", strict=False)
    net = parse_net(str(network))
    assert (net.family, net.first, net.last) == (6, int(network.network_address), int(network.broadcast_address))


@given(st.lists(st.tuples(st.integers(0, 2**12), st.integers(0, 64)), max_size=40))
def test_merge_covers_exactly_the_same_addresses(spans: list[tuple[int, int]]) -> None:
    nets = [Net(4, first, first + size) for first, size in spans]
    merged = merge(nets)
    covered = {a for n in nets for a in range(n.first, n.last + 1)}
    assert {a for n in merged for a in range(n.first, n.last + 1)} == covered
    for left, right in itertools.pairwise(merged):
        assert left.last + 1 < right.first  # neither overlapping nor adjacent


@pytest.mark.parametrize("bad", ["1.2.3", "1.2.3.4/33", "::g", "1.2.3.4/8", "", "1.2.3.4/-1"])
def test_bad_networks(bad: str) -> None:
    with pytest.raises(ValueError, match=" — "):
        parse_net(bad)


@given(st.integers(1, 65535), st.integers(0, 100), st.sampled_from(["tcp", "udp", "sctp"]))
def test_port_specs(first: int, extra: int, proto: str) -> None:
    last = min(65535, first + extra)
    spec = f"{first}-{last}/{proto}" if last != first else f"{first}/{proto}"
    parsed = parse_port_spec(spec)
    assert (parsed.proto, parsed.first, parsed.last) == (proto, first, last)
    assert str(parsed) == spec


def test_merge_ports() -> None:
    specs = [parse_port_spec(s) for s in ["80/tcp", "81-90/tcp", "85/tcp", "443/tcp", "53/udp"]]
    assert merge_ports(specs) == {"tcp": ((80, 90), (443, 443)), "udp": ((53, 53),)}
