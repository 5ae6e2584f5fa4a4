"""The live packet filter as one nft-JSON listing: native nftables tables as `nft -j` lists them,
iptables-nft tables re-read from `iptables-save` (so `multiport`, `conntrack`, `REJECT` are not opaque `xt`),
and iptables-legacy tables translated the same way (they filter packets too, outside nftables)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from portward.dialects.nft import FAMILY, TABLE

Json = dict[str, Any]
IPTABLES_FAMILIES = {"ip": 4, "ip6": 6}


@dataclass
class LiveRuleset:
    listing: list[Json]
    tables: list[tuple[str, str]]  # (family, name) of native/iptables-nft tables
    legacy_tables: list[tuple[str, str]] = field(default_factory=list)  # ("ip", "filter"), only non-trivial ones
    notes: list[str] = field(default_factory=list)
    chains: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # table -> chain names


def _has_xt(items: list[Json], family: str, table: str) -> bool:
    return any(
        "rule" in item
        and item["rule"]["family"] == family
        and item["rule"]["table"] == table
        and any("xt" in expr for expr in item["rule"]["expr"])
        for item in items
    )


def _table_of(item: Json) -> tuple[str, str] | None:
    body = next(iter(item.values()))
    if not isinstance(body, dict) or "family" not in body:
        return None
    return str(body["family"]), str(body.get("table", body.get("name")))


def _legacy_trivial(items: list[Json]) -> bool:
    """No rule and every built-in chain accepting: the table filters nothing."""
    return not any("rule" in item for item in items) and all(
        item["chain"].get("policy", "accept") == "accept" for item in items if "chain" in item
    )


def collect(listing: list[Json]) -> LiveRuleset:
    from portward.errors import PortwardError
    from portward.kernel import iptables

    def parse_save(text: str, family: int, source: str) -> list[Json]:
        from portward.dialects.iptables import parse_save as parse  # only when iptables rules are there

        return parse(text, family, source=source)

    tables = [(item["table"]["family"], item["table"]["name"]) for item in listing if "table" in item]
    out: list[Json] = []
    notes: list[str] = []
    replaced: set[tuple[str, str]] = set()
    for family, name in tables:
        if family in IPTABLES_FAMILIES and _has_xt(listing, family, name):
            text = iptables.save("nft", IPTABLES_FAMILIES[family], name)
            if text is None:
                notes.append(f"table {family} {name} holds iptables rules and iptables-save is not available")
                continue
            try:
                translated = parse_save(text, IPTABLES_FAMILIES[family], source=f"iptables-save -t {name}")
            except PortwardError as error:
                notes.append(f"table {family} {name}: cannot read iptables-save output ({error})")
                continue
            out.extend(item for item in translated if _table_of(item) == (family, name))
            replaced.add((family, name))
    out[:0] = [item for item in listing if _table_of(item) not in replaced]
    live = LiveRuleset(out, tables, notes=notes)
    for family_number, family in ((4, "ip"), (6, "ip6")):
        if not iptables.legacy_tables(family_number):
            continue
        text = iptables.save("legacy", family_number)
        if not text:
            continue
        try:
            translated = parse_save(text, family_number, source="iptables-legacy-save")
        except PortwardError as error:
            notes.append(f"iptables-legacy ({family}): cannot read iptables-legacy-save output ({error})")
            continue
        by_table: dict[str, list[Json]] = {}
        for item in translated:
            where = _table_of(item)
            if where is not None:
                by_table.setdefault(where[1], []).append(item)
        for name, items in by_table.items():
            if _legacy_trivial(items):
                continue
            renamed = f"legacy-{name}"  # its own table: never mixed up with iptables-nft's table of that name
            for item in items:
                body = next(iter(item.values()))
                if "table" in item:
                    body["name"] = renamed
                else:
                    body["table"] = renamed
            live.listing.extend(items)
            live.legacy_tables.append((family, name))
    for item in live.listing:
        if "chain" in item:
            body = item["chain"]
            live.chains.setdefault((body["family"], body["table"]), []).append(body["name"])
    return live


def firewall_managers(live: LiveRuleset) -> list[Json]:
    """Who else writes packet filter rules here, recognised by the tables and chains they leave."""
    found: dict[str, set[str]] = {}

    def add(name: str, family: str, table: str) -> None:
        found.setdefault(name, set()).add(f"{family} {table}")

    for (family, table), chains in live.chains.items():
        if (family, table) == (FAMILY, TABLE):
            continue
        if table.startswith("legacy-"):
            add("iptables-legacy", family, table.removeprefix("legacy-"))
            continue
        marks = {
            "firewalld": table == "firewalld" or any(c.startswith(("filter_IN_", "nat_PRE_")) for c in chains),
            "ufw": any(c.startswith("ufw") for c in chains),
            "docker": any(c.startswith("DOCKER") for c in chains),
            "fail2ban": any(c.startswith("f2b-") for c in chains) or table == "f2b-table",
        }
        owners = [name for name, present in marks.items() if present]
        if not owners:
            iptables_table = family in IPTABLES_FAMILIES and table in ("filter", "nat", "mangle", "raw", "security")
            owners = ["iptables" if iptables_table else "nftables"]
        for owner in owners:
            add(owner, family, table)
    for family, table in live.tables:  # tables without chains (empty) still tell who is here
        if (family, table) != (FAMILY, TABLE) and (family, table) not in live.chains:
            add("firewalld" if table == "firewalld" else "nftables", family, table)
    return [{"name": name, "tables": sorted(tables)} for name, tables in sorted(found.items())]
