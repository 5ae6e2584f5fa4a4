"""`portward verify`: scan a host from here and compare every answer with what the policy says this vantage
point may reach.  Our own source address towards the target decides which zone we are in."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from portward.policy.addresses import parse_port_spec
from portward.policy.evaluate import Decision, inbound_decision
from portward.policy.toml import LoadedPolicy

Json = dict[str, Any]
FULL_RANGE_ABOVE = 4096  # when the policy admits more ports than this from here, scan all of them


@dataclass(frozen=True)
class Expectation:
    port: int
    proto: str
    decision: Decision

    @property
    def expected(self) -> str:
        if self.decision.admitted:
            return "open"
        if self.decision.action == "reject":
            return "closed"
        return "filtered"


def source_towards(family: int, address: str) -> str | None:
    """Our source address for packets to `address` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


def mentioned_ports(loaded: LoadedPolicy, proto: str) -> set[int]:
    """Every port the policy names for `proto`: rules, door openings, knock sequences and SPA ports."""
    policy = loaded.policy
    specs: list[str] = []
    for rule in policy.inbound:
        specs += rule.ports or []
    for door in policy.knock:
        specs += door.open + door.sequence
    for spa in policy.spa:
        specs += [*spa.open, spa.port]
    ports: set[int] = set()
    for spec in specs:
        parsed = parse_port_spec(spec)
        if parsed.proto == proto:
            ports.update(range(parsed.first, parsed.last + 1))
    return ports


def admitted_everything(loaded: LoadedPolicy, source: str, proto: str, interface: str | None) -> bool:
    """True when some rule (or the default) admits every port: then only a full scan proves anything."""
    policy = loaded.policy
    if policy.defaults.inbound == "accept":
        return True
    return any(rule.ports is None and inbound_decision(loaded, source, 1, proto, interface).admitted
               for rule in policy.inbound)


def ports_to_scan(loaded: LoadedPolicy, source: str, proto: str, interface: str | None, full: bool) -> list[int]:
    if full or admitted_everything(loaded, source, proto, interface):
        return list(range(1, 65536))
    ports = mentioned_ports(loaded, proto)
    if len(ports) > FULL_RANGE_ABOVE:
        return list(range(1, 65536))
    return sorted(ports)


def compare(state: str, expectation: Expectation) -> str | None:
    """A sentence when what we saw contradicts the policy, else None."""
    expected = expectation.expected
    admitted = expectation.decision.admitted
    if admitted:
        # admitted and closed = nothing listens there: the firewall did its part
        if state in ("open", "closed", "open|filtered"):
            return None
        return "filtered but policy says open"
    if state == "open":
        return f"open but policy says {expected}"
    if state == expected or (expected == "filtered" and state == "open|filtered"):
        return None
    if expected == "closed" and state in ("filtered", "open|filtered") and expectation.proto == "udp":
        return None  # an ICMP error for a rejected datagram may be rate limited: not a contradiction
    return f"{state} but policy says {expected}"


def verify(
    loaded: LoadedPolicy,
    target: str,
    *,
    ports: list[int] | None = None,
    udp: bool = False,
    full: bool = False,
    interface: str | None = None,
    family: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Json, list[str], int]:
    from portward.verify.scan import resolve, scan

    address_family, address = resolve(target, family)
    source = source_towards(address_family, address) or ("0.0.0.0" if address_family == 4 else "::")
    notes: list[str] = []
    if source == address or address.startswith("127.") or address == "::1":
        notes.append(
            "this scan runs on the target itself and goes over loopback, which the policy always admits: "
            "it proves nothing — run verify from another host"
        )
    if interface is None and any(rule.interface for rule in loaded.policy.inbound):
        notes.append(
            "rules bound to an interface are taken as not applying to us — pass --interface NAME "
            "(the target's interface our packets arrive on) to count them"
        )
    tcp_ports = ports if ports is not None else ports_to_scan(loaded, source, "tcp", interface, full)
    udp_ports: list[int] = []
    if udp:
        udp_ports = sorted(set(ports) if ports is not None else mentioned_ports(loaded, "udp"))
    result = scan(target, tcp_ports, udp_ports, family=address_family, progress=progress)
    differences: list[Json] = []
    counted: dict[str, int] = {}
    for item in result.ports:
        expectation = Expectation(item.port, item.proto, inbound_decision(loaded, source, item.port, item.proto,
                                                                          interface))
        counted[item.state] = counted.get(item.state, 0) + 1
        problem = compare(item.state, expectation)
        if problem:
            differences.append(
                {
                    "port": item.port,
                    "proto": item.proto,
                    "state": item.state,
                    "expected": expectation.expected,
                    "problem": problem,
                    "policy": expectation.decision.reason,
                }
            )
    data: Json = {
        "target": target,
        "address": address,
        "source": source,
        "policy": str(loaded.path),
        "scanned": {"tcp": len(tcp_ports), "udp": len(udp_ports)},
        "states": counted,
        "differences": differences,
        "ok": not differences,
        "notes": notes,
        "seconds": round(result.seconds, 2),
    }
    lines = [f"note: {note}" for note in notes]
    lines.append(
        f"scanned {len(tcp_ports)} tcp" + (f" + {len(udp_ports)} udp" if udp_ports else "")
        + f" ports of {address} from {source} in {result.seconds:.1f}s: "
        + ", ".join(f"{n} {state}" for state, n in sorted(counted.items()))
    )
    if differences:
        for group in _grouped(differences):
            lines.append(f"DIFFERENCE {group}")
        lines.append(f"{len(differences)} port(s) differ from {loaded.path}")
    else:
        lines.append(f"every answer matches {loaded.path}")
    return data, lines, (3 if differences else 0)


def _grouped(differences: list[Json]) -> list[str]:
    """Runs of consecutive ports with the same problem become one line."""
    out: list[str] = []
    run: list[Json] = []

    def flush() -> None:
        if run:
            first, last = run[0], run[-1]
            ports = str(first["port"]) if first is last else f"{first['port']}-{last['port']}"
            out.append(f"{ports}/{first['proto']}: {first['problem']} ({first['policy']})")

    for item in differences:
        if run and (item["proto"], item["problem"], item["port"]) == (run[-1]["proto"], run[-1]["problem"],
                                                                      run[-1]["port"] + 1):
            run.append(item)
            continue
        flush()
        run = [item]
    flush()
    return out
