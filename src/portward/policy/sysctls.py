"""Network sysctl profiles: what a host and a router should have, and why.

Seed 002's list (source routing, forwarding, redirects, rp_filter, their IPv6 twins) plus the network items
of CIS Benchmarks 3.2/3.3 and Lynis' KRNL-6000 that are safe to enforce remotely.  Left out on purpose:
`accept_ra = 0` (it would cut IPv6 on hosts that get their address by SLAAC — set it as an override when you
configure IPv6 statically) and `rp_filter` on routers with asymmetric paths (override it to 2 there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portward.policy.model import Sysctl


@dataclass(frozen=True)
class Expectation:
    key: str
    value: str
    why: str
    settable: bool = True  # False: read-only in /proc/sys (audited, never written)


def _pair(key: str, value: str, why: str) -> list[Expectation]:
    """The `all` and `default` twins: `all` changes existing interfaces, `default` new ones."""
    return [Expectation(key.format("all"), value, why), Expectation(key.format("default"), value, why)]


COMMON: list[Expectation] = [
    *_pair("net.ipv4.conf.{}.accept_source_route", "0", "source-routed packets choose their own path past filters"),
    *_pair("net.ipv4.conf.{}.accept_redirects", "0", "ICMP redirects let a neighbour rewrite the routing table"),
    *_pair("net.ipv4.conf.{}.secure_redirects", "0", "redirects from gateways are still redirects"),
    *_pair("net.ipv4.conf.{}.rp_filter", "1", "drop packets whose source would not route back (spoofing)"),
    *_pair("net.ipv4.conf.{}.log_martians", "1", "log impossible source addresses"),
    Expectation("net.ipv4.icmp_echo_ignore_broadcasts", "1", "no smurf amplification"),
    Expectation("net.ipv4.icmp_ignore_bogus_error_responses", "1", "no log noise from bogus ICMP errors"),
    Expectation("net.ipv4.tcp_syncookies", "1", "survive SYN floods"),
    Expectation("net.ipv4.conf.all.mc_forwarding", "0", "no multicast routing unless a daemon needs it", False),
    *_pair("net.ipv6.conf.{}.accept_source_route", "0", "IPv6 routing headers choose their own path"),
    *_pair("net.ipv6.conf.{}.accept_redirects", "0", "ICMPv6 redirects rewrite the routing table"),
    Expectation("net.ipv6.conf.all.mc_forwarding", "0", "no IPv6 multicast routing unless a daemon needs it", False),
]

HOST: list[Expectation] = [
    Expectation("net.ipv4.ip_forward", "0", "a host does not route between its interfaces"),
    *_pair("net.ipv6.conf.{}.forwarding", "0", "a host does not route IPv6"),
    *_pair("net.ipv4.conf.{}.send_redirects", "0", "only routers send redirects"),
]

ROUTER: list[Expectation] = [
    Expectation("net.ipv4.ip_forward", "1", "a router forwards IPv4"),
    *_pair("net.ipv6.conf.{}.forwarding", "1", "a router forwards IPv6"),
]

PROFILES = {"host": COMMON + HOST, "router": COMMON + ROUTER}


def expectations(sysctl: Sysctl | None = None, profile: str | None = None) -> list[Expectation]:
    """The profile's expectations with the policy's overrides applied (overrides may add keys)."""
    chosen = profile or (sysctl.profile if sysctl else "host")
    items = {item.key: item for item in PROFILES[chosen]}
    for key, value in (sysctl.overrides if sysctl else {}).items():
        items[key] = Expectation(key, str(value), "override in the policy")
    return list(items.values())


def wanted(sysctl: Sysctl) -> dict[str, str]:
    """What apply writes: every settable expectation."""
    return {item.key: item.value for item in expectations(sysctl) if item.settable}
