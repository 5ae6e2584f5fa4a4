"""`portward audit --html FILE`: the audit document as one self-contained page a person would rather read.

The page is rendered with Jinja2 from the very document `audit --json` prints (embedded verbatim as
`<script type="application/json" id="portward-audit">`), plus what only a person needs: the applied generation,
`verify --json` outputs from other vantage points, and the policy's reason for each intended answer.  Everything
is inline (CSS, one SVG, a small sort script that only enhances), so the file can be mailed, archived or printed
and never reaches for the network.  Machine hooks are the contract's: each socket row is a `<tr>` with
`data-port`, `data-proto`, `data-exposure` and `data-mismatch`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

if TYPE_CHECKING:
    from portward.policy.toml import LoadedPolicy

Json = dict[str, Any]

EXPOSURES = ("world", "restricted", "blocked", "local", "unknown")
EXPOSURE_TEXT = {
    "world": "any remote source",
    "restricted": "some sources only",
    "blocked": "no remote source",
    "local": "bound to loopback",
    "unknown": "a rule portward cannot evaluate",
}
REACH_TEXT = {"all": "yes", "some": "partly", "none": "no"}
REACH_MARK = {"all": "●", "some": "◐", "none": "○"}
LOCAL_SOURCES = ("any", "localhost")


@dataclass
class ReportContext:
    """What the page shows beyond the audit document."""

    version: str
    state_dir: str | None = None
    applied: Json | None = None  # status's "applied": generation, policy, time
    verify: list[tuple[str, Json]] = field(default_factory=list)  # (file name, verify --json document)


@dataclass
class Cell:
    source: str
    live: str
    policy: str | None
    why: str = ""

    @property
    def mismatch(self) -> bool:
        return self.policy is not None and self.policy != self.live


# ------------------------------------------------------------------------------------------ view model


def sources_of(document: Json) -> list[str]:
    """Matrix columns: the policy's zones (as the audit answered them), then `any`, then `localhost`."""
    names: list[str] = []
    for entry in document["sockets"]:
        for name in entry.get("reach", {}):
            if name not in names and name not in LOCAL_SOURCES:
                names.append(name)
    return [*names, *LOCAL_SOURCES]


class Explainer:
    """The policy's own words for an intended answer (portward.policy.evaluate.inbound_decision), asked for one
    address of each zone; empty when there is no policy or it cannot be read again."""

    def __init__(self, policy_path: str | None) -> None:
        self.loaded: LoadedPolicy | None = None
        self.representative: dict[str, str] = {"localhost": "127.0.0.1"}
        if policy_path is None:
            return
        from portward.errors import PortwardError
        from portward.policy.addresses import format_interval
        from portward.policy.toml import load_policy

        try:
            self.loaded = load_policy(policy_path)
        except (PortwardError, OSError):
            return
        for zone in self.loaded.policy.zones:
            _any, nets = self.loaded.policy.resolve([zone])
            if nets:
                self.representative[zone] = format_interval(nets[0].family, nets[0].first, nets[0].first)
        self._cache: dict[tuple[str, int, str], str] = {}

    def why(self, source: str, port: int, proto: str) -> str:
        address = self.representative.get(source)
        if self.loaded is None or address is None:
            return ""
        key = (source, port, proto)
        if key not in self._cache:
            from portward.policy.evaluate import inbound_decision

            decision = inbound_decision(self.loaded, address, port, proto)
            verdict = "admits" if decision.admitted else "refuses"
            self._cache[key] = f"policy {verdict} {address} ({source}): {decision.reason}"
        return self._cache[key]


def cells_of(entry: Json, sources: list[str], explainer: Explainer) -> list[Cell]:
    cells = []
    for source in sources:
        answer = entry.get("reach", {}).get(source, {})
        live = answer.get("live", "none")
        why = explainer.why(source, entry["port"], entry["proto"]) if "policy" in answer else ""
        cells.append(Cell(source, live, answer.get("policy"), why))
    return cells


def row_of(entry: Json, sources: list[str], explainer: Explainer, with_policy: bool) -> Json:
    """One socket row; `mismatch` is the audit's own verdict (matches_policy), cells say where."""
    process = f"{entry['process'] or '?'}[{entry['pid']}]" if entry.get("pid") else "-"
    allowed = ", ".join(entry.get("allowed_from") or []) or "-"
    if entry.get("denied_from"):
        allowed += " except " + ", ".join(entry["denied_from"])
    if entry.get("via"):
        allowed += " via " + ", ".join(entry["via"])
    mismatch = with_policy and entry.get("matches_policy") is False
    difference = entry.get("difference") or {}
    return {
        "entry": entry,
        "proto": entry["proto"] + ("6" if entry["family"] == 6 else ""),
        "process": process,
        "allowed": allowed,
        "cells": cells_of(entry, sources, explainer),
        "mismatch": mismatch,
        "policy_exposure": (entry.get("policy") or {}).get("exposure"),
        "live_only": difference.get("live_only", []),
        "policy_only": difference.get("policy_only", []),
    }


def summary_of(document: Json) -> Json:
    """Counts by exposure and bar geometry for the inline SVG (no layout engine needed to read it)."""
    counts = {name: 0 for name in EXPOSURES}
    for entry in document["sockets"]:
        counts[entry["exposure"]] = counts.get(entry["exposure"], 0) + 1
    largest = max(counts.values(), default=0) or 1
    bars = [
        {"name": name, "count": count, "width": round(300 * count / largest), "y": 8 + index * 26,
         "text": EXPOSURE_TEXT.get(name, name)}
        for index, (name, count) in enumerate(counts.items())
    ]
    mismatches = sum(1 for entry in document["sockets"] if entry.get("matches_policy") is False)
    return {"counts": counts, "bars": bars, "height": 16 + 26 * len(bars), "mismatches": mismatches,
            "total": len(document["sockets"])}


def verify_view(name: str, data: Json) -> Json:
    """What one vantage point really reached, from its `verify --json` output."""
    states = data.get("states") or {}
    return {
        "file": name,
        "source": data.get("source") or "?",
        "target": data.get("target") or "?",
        "address": data.get("address") or "",
        "policy": data.get("policy") or "",
        "ok": bool(data.get("ok")),
        "scanned": data.get("scanned") or {},
        "states": sorted(states.items()),
        "differences": data.get("differences") or [],
        "notes": data.get("notes") or [],
        "seconds": data.get("seconds"),
    }


def embedded_json(value: Any) -> Markup:
    """JSON that cannot end its <script> element early: <, > and & become \\u escapes (still the same JSON)."""
    text = json.dumps(value, indent=None, default=str)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def view(document: Json, context: ReportContext) -> Json:
    with_policy = document.get("policy") is not None
    sources = sources_of(document)
    explainer = Explainer(document.get("policy"))
    sysctls = sorted(document["sysctl"], key=lambda item: (item["ok"] is not False, item["ok"] is None,
                                                           item["key"]))
    applied = context.applied or None
    return {
        "doc": document,
        "ctx": context,
        "with_policy": with_policy,
        "sources": sources,
        "rows": [row_of(entry, sources, explainer, with_policy) for entry in document["sockets"]],
        "summary": summary_of(document),
        "exposure_text": EXPOSURE_TEXT,
        "reach_text": REACH_TEXT,
        "reach_mark": REACH_MARK,
        "sysctls": sysctls,
        "sysctl_bad": sum(1 for item in document["sysctl"] if item["ok"] is False),
        "applied": applied,
        "applied_elsewhere": bool(applied and with_policy and applied.get("policy")
                                  and os.path.abspath(str(applied["policy"])) != document["policy"]),
        "verify": [verify_view(name, data) for name, data in context.verify],
        "audit_json": embedded_json(document),
    }


# ------------------------------------------------------------------------------------------ rendering


def render_html(document: Json, context: ReportContext) -> str:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("portward.audit", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("report.html.j2").render(**view(document, context))


def write_report(document: Json, path: Path, context: ReportContext) -> None:
    """Atomically, with the mode any new file gets under the umask (the temporary file is 0600): a report is
    written to be handed on."""
    from portward.ops.state import write_atomic

    write_atomic(path, render_html(document, context))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
