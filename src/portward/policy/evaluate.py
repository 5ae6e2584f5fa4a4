"""Answer "would this policy admit a new connection from SRC to PORT/PROTO?" from the model alone.

Used by the lockout guard (before anything reaches the kernel) and by verify/audit to say what a
policy intends. Mirrors the order of the compiled input chain: loopback, block, rules in order, default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from portward.policy.addresses import format_interval, parse_address, parse_port_spec

if TYPE_CHECKING:
    from portward.policy.toml import LoadedPolicy


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: str
    rule: str | None = None
    door: str | None = None  # a knock/SPA door that can open it
    action: str = "accept"  # accept | drop | reject: what the client sees (reject: a reset or ICMP error)


def interface_matches(pattern: str | None, interface: str | None) -> bool | None:
    """None when the answer depends on an interface we do not know."""
    if pattern is None:
        return True
    if interface is None:
        return None
    if pattern.endswith("*"):
        return interface.startswith(pattern[:-1])
    return interface == pattern


def inbound_decision(
    loaded: LoadedPolicy, source: str, port: int, proto: str, interface: str | None = None
) -> Decision:
    policy = loaded.policy
    family, address = parse_address(source)
    if (family == 4 and address >> 24 == 127) or (family == 6 and address == 1):
        return Decision(True, "loopback is always admitted")
    blocked = loaded.blocked(family, address)
    if blocked:
        return Decision(False, f"{source} is in [block] ({format_interval(family, *blocked)})", action="drop")
    for rule in policy.inbound:
        if rule.ports is not None and not any(
            spec.proto == proto and spec.first <= port <= spec.last for spec in map(parse_port_spec, rule.ports)
        ):
            continue
        is_any, nets = policy.resolve(rule.from_)
        if not is_any and not any(net.contains(family, address) for net in nets):
            continue
        on_interface = interface_matches(rule.interface, interface)
        if on_interface is False:
            continue
        if on_interface is None and rule.action == "accept":
            # only on interface X, and we cannot tell which interface the client comes in on: be careful
            continue
        if rule.action == "accept":
            return Decision(True, f"inbound rule {rule.name!r}", rule.name)
        return Decision(False, f"inbound rule {rule.name!r} says {rule.action}", rule.name, action=rule.action)
    door = next(
        (
            f"{kind} {item.name!r}"
            for kind, doors in (("knock", policy.knock), ("spa", policy.spa))
            for item in doors
            if any(spec.proto == proto and spec.first <= port <= spec.last for spec in map(parse_port_spec, item.open))
        ),
        None,
    )
    if policy.defaults.inbound == "accept":
        return Decision(True, "default inbound = accept")
    reason = f"no rule admits it and the default is {policy.defaults.inbound}"
    if door:
        reason += f" (only {door} can open it)"
    return Decision(False, reason, door=door, action=policy.defaults.inbound)
