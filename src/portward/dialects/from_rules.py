"""Rules in nft-JSON form (from `dialects/iptables.parse_save`, or an nft listing) -> a portward policy.

Reads the input chain of a filter table the way a person would port it by hand: the chain policy becomes
`[defaults] inbound`, accept/drop/reject rules on ports and sources become `[[inbound]]` rules in order,
source-only drops become `[block]`, and what portward always does by itself (loopback, established,
essential ICMP) is dropped with a note.  Every rule that cannot be said in a policy is named in a note;
nothing is silently lost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from portward.dialects import Converted, read_input

Json = dict[str, Any]
NAME_CLEAN = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class Imported:
    inbound_default: str = "accept"
    rules: list[Json] = field(default_factory=list)  # {"name", "ports", "from", "interface", "action", "comment"}
    block: list[str] = field(default_factory=list)
    ping: bool | None = None
    notes: list[str] = field(default_factory=list)


class _Skip(Exception):
    """This rule has no place in a policy; the message says why."""


def _address_text(right: Any) -> list[str]:
    if isinstance(right, str):
        return [right]
    if isinstance(right, dict) and "prefix" in right:
        return [f"{right['prefix']['addr']}/{right['prefix']['len']}"]
    if isinstance(right, dict) and "range" in right:
        return [f"{right['range'][0]}-{right['range'][1]}"]
    if isinstance(right, dict) and "set" in right:
        out: list[str] = []
        for item in right["set"]:
            out += _address_text(item)
        return out
    raise _Skip(f"source {json.dumps(right)}")


def _ports_text(right: Any, proto: str) -> list[str]:
    if isinstance(right, int):
        return [f"{right}/{proto}"]
    if isinstance(right, dict) and "range" in right:
        return [f"{right['range'][0]}-{right['range'][1]}/{proto}"]
    if isinstance(right, dict) and "set" in right:
        out: list[str] = []
        for item in right["set"]:
            out += _ports_text(item, proto)
        return out
    raise _Skip(f"ports {json.dumps(right)}")


def _rule(expr: list[Json], number: int, comment: str | None, result: Imported) -> None:
    sources: list[str] = []
    ports: list[str] = []
    protocols: list[str] = []
    interface: str | None = None
    verdict: str | None = None
    for item in expr:
        kind = next(iter(item))
        body = item[kind]
        if kind == "match":
            left, right, op = body["left"], body["right"], body["op"]
            if op not in ("==", "in"):
                raise _Skip(f"a negated match ({op})")
            if isinstance(left, dict) and "meta" in left and left["meta"]["key"] in ("iifname", "iif"):
                if right == "lo":
                    raise _Skip("loopback is always admitted by portward")
                interface = str(right)
            elif isinstance(left, dict) and "payload" in left and left["payload"]["field"] == "saddr":
                sources += _address_text(right)
            elif isinstance(left, dict) and "payload" in left and left["payload"]["field"] == "dport":
                proto = left["payload"]["protocol"]
                if proto not in ("tcp", "udp", "sctp"):
                    raise _Skip(f"{proto} dport")
                ports += _ports_text(right, proto)
            elif isinstance(left, dict) and "payload" in left and left["payload"]["protocol"] in ("icmp", "icmpv6"):
                if right == "echo-request":
                    result.ping = True
                raise _Skip("ICMP: portward admits the essential types itself; `ping` covers echo")
            elif isinstance(left, dict) and (("meta" in left and left["meta"]["key"] == "l4proto")
                                             or ("payload" in left and left["payload"]["field"] in ("protocol",
                                                                                                    "nexthdr"))):
                protocols.append(str(right))
            elif isinstance(left, dict) and "ct" in left and left["ct"]["key"] == "state":
                states = set(right if isinstance(right, list) else [right])
                if states & {"established", "related"}:
                    raise _Skip("established/related is always admitted by portward")
                if states == {"new"}:
                    continue
                raise _Skip(f"ct state {sorted(states)}")
            else:
                raise _Skip(f"match on {json.dumps(left)}")
        elif kind in ("accept", "drop", "reject"):
            verdict = kind
        elif kind in ("counter", "log", "limit"):
            if kind == "limit":
                raise _Skip("a rate limit (say it with `rate` on the rule by hand)")
            continue
        elif kind == "xt":
            raise _Skip(f"iptables extension {body.get('name')!r}")
        else:
            raise _Skip(f"{kind}")
    if verdict is None:
        raise _Skip("no accept/drop/reject verdict (a jump or a log only)")
    if not ports and protocols:
        raise _Skip(f"protocol {protocols[0]} without ports")
    if not ports and sources and verdict == "drop" and interface is None and not result.rules:
        # portward checks [block] before anything else: only a drop that comes before every other rule is one
        result.block += sources
        return
    name = NAME_CLEAN.sub("-", comment or "").strip("-").lower()[:40] or f"rule{number}"
    rule: Json = {"name": name, "from": sources or ["any"], "action": verdict}
    if ports:
        rule["ports"] = ports
    if interface:
        rule["interface"] = interface.replace("+", "*")
    if comment:
        rule["comment"] = comment
    result.rules.append(rule)


def from_listing(listing: list[Json], source: str) -> Imported:
    """The input chain(s) of the filter table(s) in `listing`."""
    result = Imported()
    chains = [
        item["chain"] for item in listing
        if "chain" in item and item["chain"].get("hook") == "input" and item["chain"].get("type", "filter") == "filter"
    ]
    if not chains:
        result.notes.append(f"{source}: no input chain — nothing to import")
        return result
    policies = {chain.get("policy", "accept") for chain in chains}
    result.inbound_default = "drop" if "drop" in policies else "accept"
    for chain in chains:
        rules = [
            item["rule"] for item in listing
            if "rule" in item and (item["rule"]["family"], item["rule"]["table"], item["rule"]["chain"])
            == (chain["family"], chain["table"], chain["name"])
        ]
        for number, rule in enumerate(rules, 1):
            expr = rule["expr"]
            # a final catch-all reject is portward's `inbound = "reject"`
            if number == len(rules) and len(expr) == 1 and "reject" in expr[0]:
                result.inbound_default = "reject"
                continue
            try:
                _rule(expr, number, rule.get("comment"), result)
            except _Skip as skipped:
                result.notes.append(f"{source}: {chain['name']} rule {number} not imported: {skipped}")
    return result


def merge(parts: list[Imported]) -> Imported:
    """v4 and v6 files of the same firewall: rules with the same name, ports and action share one rule."""
    out = Imported(inbound_default="accept")
    seen: dict[str, Json] = {}
    for part in parts:
        if part.inbound_default != "accept":
            out.inbound_default = part.inbound_default
        out.block += [b for b in part.block if b not in out.block]
        out.notes += part.notes
        out.ping = out.ping or part.ping
        for rule in part.rules:
            key = json.dumps({k: v for k, v in rule.items() if k != "from"}, sort_keys=True)
            if key in seen and rule["from"] != ["any"] and seen[key]["from"] != ["any"]:
                seen[key]["from"] += [s for s in rule["from"] if s not in seen[key]["from"]]
            elif key in seen and rule["from"] == seen[key]["from"] == ["any"]:
                continue
            else:
                copy = dict(rule)
                taken = {r["name"] for r in out.rules}
                base, number = copy["name"], 2
                while copy["name"] in taken:
                    copy["name"] = f"{base}-{number}"
                    number += 1
                seen[key] = copy
                out.rules.append(copy)
    return out


def to_toml(imported: Imported, sources: list[str]) -> str:
    lines = [f"# imported by portward from {', '.join(sources)}", "# review it, then: portward check -p FILE", ""]
    for note in imported.notes:
        lines.append(f"# NOTE {note}")
    if imported.notes:
        lines.append("")
    lines += ["[defaults]", f"inbound = {json.dumps(imported.inbound_default)}"]
    if not imported.ping and imported.inbound_default != "accept":
        lines.append("ping = false            # the rules did not admit echo requests")
    lines.append("")
    for rule in imported.rules:
        lines.append("[[inbound]]")
        if rule.get("comment"):
            lines.append(f"# {rule['comment']}")
        lines.append(f"name = {json.dumps(rule['name'])}")
        if "ports" in rule:
            lines.append(f"ports = {json.dumps(rule['ports'])}")
        lines.append(f"from = {json.dumps(rule['from'])}")
        if "interface" in rule:
            lines.append(f"interface = {json.dumps(rule['interface'])}")
        if rule["action"] != "accept":
            lines.append(f"action = {json.dumps(rule['action'])}")
        lines.append("")
    if imported.block:
        lines += ["[block]", f"from = {json.dumps(imported.block)}", ""]
    return "\n".join(lines)


def read_iptables_save(paths: list[str]) -> Converted:
    """`import --from iptables-save`: iptables-save and ip6tables-save files -> one policy."""
    from portward.dialects.iptables import parse_save

    parts = []
    for name in paths:
        text = read_input(name)
        # ip6tables-save files have IPv6 addresses or say so in their header
        family = 6 if "ip6tables" in text.split("\n", 1)[0] or re.search(r" -[sd] [0-9a-f]*:", text) else 4
        parts.append(from_listing(parse_save(text, family, source=name), name))
    imported = merge(parts)
    return Converted(to_toml(imported, paths), imported.notes, {"rules": len(imported.rules)})
