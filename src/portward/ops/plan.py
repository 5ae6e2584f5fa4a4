"""Live table vs wanted table -> the changes to make, as one transaction.

Two ways to carry a plan out, chosen by what differs:
- structure (chains, rules, set definitions): one libnftables JSON batch that flushes our chains,
  re-creates what changed and re-adds the rules; sets whose definition is unchanged keep their
  elements (and dynamic sets their state: meters, door grants, bans);
- elements only: one raw nfnetlink batch (kernel/nfnetlink.py), because libnftables reads every
  element of the table before it adds one, which costs seconds with a 100k-entry block list.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from portward.dialects.nft import FAMILY, TABLE, Ruleset, RuleSpec, SetSpec, _expr_text, elements_json
from portward.policy.addresses import format_interval

Json = dict[str, Any]


@dataclass
class ElementDiff:
    set_name: str
    family: int
    delete: list[tuple[int, int]]
    add: list[tuple[int, int]]


@dataclass
class Plan:
    mode: str  # "in-sync" | "elements" | "structure" | "create" | "delete"
    changes: list[Json] = field(default_factory=list)
    commands: list[Json] = field(default_factory=list)  # libnftables batch (structure/create/delete)
    element_diffs: list[ElementDiff] = field(default_factory=list)  # nfnetlink batch (elements)

    @property
    def empty(self) -> bool:
        return self.mode == "in-sync"


def rule_text(rule: RuleSpec) -> str:
    text = " ".join(_expr_text(expr) for expr in rule.expr)
    return f'{text} comment "{rule.comment}"' if rule.comment else text


MAX_LISTED_ELEMENTS = 1000  # a change lists this many elements at most; "count" always has them all


def _element_strings(family: int, spans: list[tuple[int, int]]) -> list[str]:
    return [format_interval(family, first, last) for first, last in spans[:MAX_LISTED_ELEMENTS]]


def diff(live: Ruleset | None, wanted: Ruleset | None) -> Plan:
    """What turns `live` into `wanted` (None = no table)."""
    table = {"family": FAMILY, "name": TABLE}
    if wanted is None:
        if live is None:
            return Plan("in-sync")
        return Plan(
            "delete",
            [{"action": "delete", "object": "table", "name": f"{FAMILY} {TABLE}"}],
            [{"delete": {"table": table}}],
        )
    if live is None:
        changes: list[Json] = [{"action": "add", "object": "table", "name": f"{FAMILY} {TABLE}"}]
        for spec in wanted.sets.values():
            changes.append(_set_change("add", spec))
            if spec.elements:
                changes.append(_element_change("add", spec, list(spec.elements)))
        changes += [
            {"action": "add", "object": "chain", "name": chain.name, "hook": chain.hook, "policy": chain.policy}
            for chain in wanted.chains.values()
        ]
        changes += [
            {"action": "add", "object": "rule", "chain": rule.chain, "rule": rule_text(rule)} for rule in wanted.rules
        ]
        return Plan("create", changes, wanted.create_commands())

    changes = []
    new_sets = [spec for name, spec in wanted.sets.items() if name not in live.sets]
    gone_sets = [spec for name, spec in live.sets.items() if name not in wanted.sets]
    redefined = [
        spec
        for name, spec in wanted.sets.items()
        if name in live.sets and live.sets[name].definition() != spec.definition()
    ]
    kept = [
        spec
        for name, spec in wanted.sets.items()
        if name in live.sets and live.sets[name].definition() == spec.definition()
    ]
    new_chains = [chain for name, chain in wanted.chains.items() if name not in live.chains]
    gone_chains = [chain for name, chain in live.chains.items() if name not in wanted.chains]
    redefined_chains = [
        chain for name, chain in wanted.chains.items() if name in live.chains and live.chains[name] != chain
    ]
    rules_differ = [
        name
        for name in wanted.chains
        if [r.key() for r in live.rules_of(name)] != [r.key() for r in wanted.rules_of(name)]
    ]
    rules_differ += [chain.name for chain in gone_chains if live.rules_of(chain.name)]

    element_diffs: list[ElementDiff] = []
    for spec in kept:
        if spec.elements is None:
            continue
        live_elements = set(live.sets[spec.name].elements or ())
        wanted_elements = set(spec.elements)
        if live_elements != wanted_elements:
            element_diffs.append(
                ElementDiff(
                    spec.name,
                    spec.family,
                    sorted(live_elements - wanted_elements),
                    sorted(wanted_elements - live_elements),
                )
            )

    for spec in gone_sets:
        changes.append(_set_change("delete", spec))
    for spec in redefined:
        changes.append(_set_change("replace", spec))
    for spec in new_sets:
        changes.append(_set_change("add", spec))
        if spec.elements:
            changes.append(_element_change("add", spec, list(spec.elements)))
    for element_diff in element_diffs:
        spec = wanted.sets[element_diff.set_name]
        if element_diff.delete:
            changes.append(_element_change("delete", spec, element_diff.delete))
        if element_diff.add:
            changes.append(_element_change("add", spec, element_diff.add))
    for chain in gone_chains:
        changes.append({"action": "delete", "object": "chain", "name": chain.name})
    for chain in new_chains:
        changes.append(
            {"action": "add", "object": "chain", "name": chain.name, "hook": chain.hook, "policy": chain.policy}
        )
    for chain in redefined_chains:
        changes.append(
            {
                "action": "replace",
                "object": "chain",
                "name": chain.name,
                "hook": chain.hook,
                "policy": chain.policy,
                "was_policy": live.chains[chain.name].policy,
            }
        )
    for name in dict.fromkeys(rules_differ):
        live_rules, wanted_rules = live.rules_of(name), wanted.rules_of(name)
        before = [rule_text(r) for r in live_rules]
        after = [rule_text(r) for r in wanted_rules]
        # match on normalised keys (set order aside), show the text
        matcher = difflib.SequenceMatcher(
            a=[r.key() for r in live_rules], b=[r.key() for r in wanted_rules], autojunk=False
        )
        for tag, a0, a1, b0, b1 in matcher.get_opcodes():
            if tag in ("delete", "replace"):
                changes += [
                    {"action": "delete", "object": "rule", "chain": name, "rule": text} for text in before[a0:a1]
                ]
            if tag in ("insert", "replace"):
                changes += [{"action": "add", "object": "rule", "chain": name, "rule": text} for text in after[b0:b1]]

    structure = bool(
        new_sets or gone_sets or redefined or new_chains or gone_chains or redefined_chains or rules_differ
    )
    if not structure:
        return Plan("elements" if element_diffs else "in-sync", changes, [], element_diffs)

    commands: list[Json] = []
    for name in live.chains:  # rules go first: they may reference sets that are about to change
        commands.append({"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}})
    for chain in [*gone_chains, *redefined_chains]:
        commands.append({"delete": {"chain": {"family": FAMILY, "table": TABLE, "name": chain.name}}})
    for spec in [*gone_sets, *redefined]:
        commands.append({"delete": {"set": {"family": FAMILY, "table": TABLE, "name": spec.name}}})
    for spec in [*redefined, *new_sets]:
        commands.append({"add": {"set": spec.to_json()}})
    commands += element_commands(element_diffs)
    for chain in [*redefined_chains, *new_chains]:
        commands.append({"add": {"chain": chain.to_json()}})
    commands += [{"add": {"rule": rule.to_json()}} for rule in wanted.rules]
    return Plan("structure", changes, commands, element_diffs)


def element_commands(element_diffs: list[ElementDiff]) -> list[Json]:
    """libnftables commands for element changes (deletes first)."""
    commands: list[Json] = []
    for element_diff in element_diffs:
        target = {"family": FAMILY, "table": TABLE, "name": element_diff.set_name}
        if element_diff.delete:
            commands.append(
                {"delete": {"element": {**target, "elem": elements_json(element_diff.family, element_diff.delete)}}}
            )
    for element_diff in element_diffs:
        target = {"family": FAMILY, "table": TABLE, "name": element_diff.set_name}
        if element_diff.add:
            commands.append(
                {"add": {"element": {**target, "elem": elements_json(element_diff.family, element_diff.add)}}}
            )
    return commands


def _set_change(action: str, spec: SetSpec) -> Json:
    change: Json = {
        "action": action,
        "object": "set",
        "name": spec.name,
        "type": " . ".join(spec.type) if isinstance(spec.type, tuple) else spec.type,
    }
    if spec.elements is not None:
        change["count"] = len(spec.elements)
    return change


def _element_change(action: str, spec: SetSpec, spans: list[tuple[int, int]]) -> Json:
    change: Json = {
        "action": action,
        "object": "element",
        "set": spec.name,
        "count": len(spans),
        "elements": _element_strings(spec.family, spans),
    }
    if len(spans) > MAX_LISTED_ELEMENTS:
        change["truncated"] = True
    return change
