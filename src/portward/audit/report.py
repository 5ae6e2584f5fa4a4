"""`portward audit`: what listens, who can reach it according to the live ruleset (and the policy), the
network sysctls against a profile, other firewall managers and legacy access configs."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portward.audit import spans as sp
from portward.audit.exposure import REMOTE, Classes, Evaluator, Question, Ruleset
from portward.policy.addresses import Net, format_interval, is_loopback, parse_address, to_cidrs

if TYPE_CHECKING:
    from portward.kernel.sockets import Listener
    from portward.policy.toml import LoadedPolicy

Json = dict[str, Any]
MAX_LISTED = 32  # CIDRs shown per socket; the JSON says how many there are


@dataclass
class Host:
    interfaces: list[str]  # without lo
    addresses: dict[int, list[tuple[str, int]]]  # family -> (interface, address), non-loopback interfaces

    @classmethod
    def read(cls) -> Host:
        """Interfaces and addresses of the current network namespace (one rtnetlink dump)."""
        from portward.kernel.links import addresses as read_addresses

        interfaces = sorted(name for _index, name in socket.if_nameindex() if name != "lo")
        addresses: dict[int, list[tuple[str, int]]] = {4: [], 6: []}
        for item in read_addresses():
            if item.interface != "lo":
                addresses[item.family].append((item.interface, parse_address(item.address)[1]))
        return cls(interfaces, addresses)


@dataclass
class Exposure:
    exposure: str
    allowed_from: list[str]
    admitted: dict[int, Classes]
    via: list[str] = field(default_factory=list)
    denied_from: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    diverted: list[str] = field(default_factory=list)
    count: int = 0  # how many CIDRs allowed_from (or denied_from) has before it is cut to MAX_LISTED


def socket_scope(listener: Listener) -> tuple[str, int, int]:
    """(scope, family, address as an integer; v4-mapped v6 addresses count as v4)."""
    known = _SCOPES.get(listener.address)
    if known is None:
        known = _SCOPES[listener.address] = _scope_of(listener.address)
    return known


_SCOPES: dict[str, tuple[str, int, int]] = {}


def _scope_of(text: str) -> tuple[str, int, int]:
    family, address = parse_address(text)
    if family == 6 and address >> 32 == 0xFFFF:
        family, address = 4, address & 0xFFFFFFFF
    if address == 0:
        return "any", family, 0
    if is_loopback(Net(family, address, address)):  # v4-mapped addresses were made v4 above
        return "loopback", family, address
    return "address", family, address


def socket_families(listener: Listener, family: int, scope: str) -> list[int]:
    if family == 6 and scope == "any":
        v6only = listener.v6only
        if v6only is None:
            try:
                v6only = Path("/proc/sys/net/ipv6/bindv6only").read_text().strip() == "1"
            except OSError:
                v6only = False
        return [6] if v6only else [6, 4]
    return [family]


class ExposureCalculator:
    """Answers "who can reach this socket" against one ruleset for one host."""

    def __init__(self, ruleset: Ruleset, host: Host) -> None:
        self.host = host
        self.evaluator = Evaluator(ruleset, host.interfaces)
        self._daddrs = {family: sorted({a for _i, a in host.addresses[family]}) or [0] for family in (4, 6)}
        # (proto, address, v6only, interface) -> [(low port, high port, Exposure)]: one evaluation answers every
        # port of a range the ruleset treats alike, so 8,000 sockets cost a handful of evaluations
        self._classified: dict[tuple[Any, ...], list[tuple[int, int, Exposure]]] = {}

    def admitted(
        self, listener: Listener
    ) -> tuple[str, dict[int, Classes], list[str], list[str], tuple[int, int]]:
        """(scope, sources admitted per family and interface, unknown rules, diversions, the port range for which
        all of this holds as well)."""
        scope, family, address = socket_scope(listener)
        low, high = 0, 65535
        if scope == "loopback":
            return scope, {}, [], [], (low, high)
        per_family: dict[int, Classes] = {}
        unknown: list[str] = []
        diverted: list[str] = []
        for fam in socket_families(listener, family, scope):
            daddrs = [address] if scope != "any" else self._daddrs[fam]
            classes: Classes = {}
            for daddr in daddrs:
                answer = self.evaluator.answer(Question(fam, listener.proto, listener.port, daddr))
                low, high = max(low, answer.port_range[0]), min(high, answer.port_range[1])
                for iface, sources in answer.admitted.items():
                    classes[iface] = sp.union(classes.get(iface, sp.EMPTY), sources)
                unknown += [u for u in answer.unknown if u not in unknown]
                diverted += [d for d in answer.diverted if d not in diverted]
            if listener.interface:  # SO_BINDTODEVICE: only that interface's packets reach it
                classes = {i: s for i, s in classes.items() if i == listener.interface}
            per_family[fam] = classes
        return scope, per_family, unknown, diverted, (low, high)

    def exposure(self, listener: Listener) -> Exposure:
        """Cached per (proto, address, v6only, interface) and port range."""
        key = (listener.proto, listener.address, listener.v6only, listener.interface)
        ranges = self._classified.setdefault(key, [])
        for low, high, cached in ranges:
            if low <= listener.port <= high:
                return cached
        scope, per_family, unknown, diverted, (low, high) = self.admitted(listener)
        if scope == "loopback":
            result = Exposure("local", ["localhost"], {})
        else:
            result = classify(per_family, self.host.interfaces)
            result.unknown, result.diverted = unknown, diverted
            if unknown:
                result.exposure = "unknown"
        ranges.append((low, high, result))
        return result


def _cidrs(family: int, spans: Iterable[tuple[int, int]]) -> list[str]:
    out: list[str] = []
    for first, last in spans:
        out.extend(to_cidrs(Net(family, first, last)))
    return out


def classify(per_family: dict[int, Classes], interfaces: list[str]) -> Exposure:
    interfaces = interfaces or ["(none)"]
    all_world = all(
        all(classes.get(iface) == REMOTE[family] for iface in interfaces) for family, classes in per_family.items()
    )
    nothing = all(not classes for classes in per_family.values())
    if all_world:
        return Exposure("world", ["any"], per_family)
    if nothing:
        return Exposure("blocked", [], per_family)
    allowed: list[str] = []
    denied: list[str] = []
    admitting = sorted({iface for classes in per_family.values() for iface in classes})
    uniform = all(len({classes[i] for i in classes}) <= 1 for classes in per_family.values())
    for family, classes in per_family.items():
        if uniform:  # every interface that lets anything in lets the same sources in: one list, plus "via"
            groups = [("", next(iter(classes.values())))] if classes else []
        else:
            groups = [(f" via {iface}", sources) for iface, sources in sorted(classes.items())]
        whole = "0.0.0.0/0" if family == 4 else "::/0"
        for suffix, sources in groups:
            if sources == REMOTE[family]:
                allowed.append(("any" if len(per_family) == 1 else whole) + suffix)
            elif not suffix and sp.size(sources) * 2 > sp.size(REMOTE[family]):  # mostly open: say what is kept out
                allowed.append(whole)
                denied.extend(_cidrs(family, sp.subtract(REMOTE[family], sources)))
            else:
                allowed.extend(cidr + suffix for cidr in _cidrs(family, sources))
    count = len(allowed) + len(denied)
    return Exposure(
        "restricted",
        allowed[:MAX_LISTED],
        per_family,
        via=admitting if uniform and admitting != sorted(interfaces) else [],
        denied_from=denied[:MAX_LISTED],
        count=count,
    )


def difference(live: dict[int, Classes], intended: dict[int, Classes]) -> tuple[list[str], list[str]]:
    """(admitted live but not by the policy, admitted by the policy but not live) as CIDRs (with interface)."""
    extra: list[str] = []
    missing: list[str] = []
    for family in sorted(set(live) | set(intended)):
        a, b = live.get(family, {}), intended.get(family, {})
        for iface in sorted(set(a) | set(b)):
            more = sp.subtract(a.get(iface, sp.EMPTY), b.get(iface, sp.EMPTY))
            less = sp.subtract(b.get(iface, sp.EMPTY), a.get(iface, sp.EMPTY))
            extra += [f"{format_interval(family, x, y)} on {iface}" for x, y in more[:4]]
            missing += [f"{format_interval(family, x, y)} on {iface}" for x, y in less[:4]]
    return extra[:8], missing[:8]


# ------------------------------------------------------------------------------- reach per source

SourceSpans = dict[int, sp.Spans]  # family -> remote source addresses


def source_spans(loaded: LoadedPolicy | None) -> dict[str, SourceSpans]:
    """The sources of the audit's matrix: `any` (every remote address) and each zone of the policy (its remote
    addresses).  `localhost` is answered apart: loopback traffic never meets an interface the evaluator walks."""
    sources: dict[str, SourceSpans] = {"any": dict(REMOTE)}
    if loaded is None:
        return sources
    for zone in loaded.policy.zones:
        _is_any, nets = loaded.policy.resolve([zone])
        spans = {family: sp.intersect(REMOTE[family], sp.normalize(
            [(net.first, net.last) for net in nets if net.family == family])) for family in (4, 6)}
        sources[zone] = {family: found for family, found in spans.items() if found}
    return sources


def reach_of(admitted: dict[int, Classes], sources: SourceSpans, interfaces: list[str]) -> str:
    """`all` when every address of the source may connect on every interface, `none` when not one may,
    `some` otherwise.  Only the families the socket listens on count."""
    families = [family for family in admitted if family in sources]
    if not families:
        return "none"
    whole, some = True, False
    for family in families:
        wanted = sources[family]
        for iface in interfaces or ["(none)"]:
            got = sp.intersect(admitted[family].get(iface, sp.EMPTY), wanted)
            some = some or bool(got)
            whole = whole and got == wanted
    return "all" if whole else "some" if some else "none"


def reach(
    scope: str, live: Exposure, wanted: Exposure | None, sources: dict[str, SourceSpans], interfaces: list[str]
) -> Json:
    """Per source (each zone, `any`, `localhost`): may it connect — `all`, `some` or `none` of its addresses —
    according to the live ruleset and, with a policy, the policy.  Loopback is always admitted by portward and
    bound-to-loopback sockets are reachable from nowhere else; the live loopback path is not evaluated."""
    out: Json = {}
    for name, spans in sources.items():
        local = scope == "loopback"
        cell = {"live": "none" if local else reach_of(live.admitted, spans, interfaces)}
        if wanted is not None:
            cell["policy"] = "none" if local else reach_of(wanted.admitted, spans, interfaces)
        out[name] = cell
    out["localhost"] = {"live": "all"} if wanted is None else {"live": "all", "policy": "all"}
    return out


def policy_listing(loaded: LoadedPolicy, live: list[Json] | None = None) -> list[Json]:
    """The policy compiled, as the listing `nft -j` would show once it is applied (and nothing else is).

    Sets whose contents belong to the kernel (door grants, knock stages, meters) take the live elements:
    a source that knocked is let in by the policy's own design, not a disagreement."""
    from portward.dialects.nft import FAMILY, TABLE, compile_policy

    ruleset = compile_policy(loaded)
    listing = [command["add"] for command in ruleset.create_commands() if "add" in command]
    dynamic = {name for name, spec in ruleset.sets.items() if spec.elements is None}
    live_sets = {
        item["set"]["name"]: item["set"]
        for item in live or []
        if "set" in item and (item["set"]["family"], item["set"]["table"]) == (FAMILY, TABLE)
    }
    for item in listing:
        body = item.get("set")
        if body and body["name"] in dynamic and body["name"] in live_sets:
            body["elem"] = live_sets[body["name"]].get("elem", [])
    return listing


# --------------------------------------------------------------------------------------- sysctls


def sysctl_audit(loaded: LoadedPolicy | None, profile: str | None) -> tuple[str, list[Json]]:
    from portward.kernel import sysctl
    from portward.policy.sysctls import expectations

    policy_sysctl = loaded.policy.sysctl if loaded is not None else None
    chosen = profile or (policy_sysctl.profile if policy_sysctl else "host")
    items = expectations(policy_sysctl, chosen)
    current = sysctl.read_many([item.key for item in items])
    out = []
    for item in items:
        value = current[item.key]
        out.append(
            {
                "key": item.key,
                "value": value,
                "expected": item.value,
                "ok": None if value is None else value == item.value,
                "why": item.why,
            }
        )
    return chosen, out


# ------------------------------------------------------------------------------- legacy configs

LEGACY_FILES = [
    ("etc/hosts.allow", "hosts", "portward import --from hosts /etc/hosts.allow /etc/hosts.deny"),
    ("etc/hosts.deny", "hosts", "portward import --from hosts /etc/hosts.allow /etc/hosts.deny"),
    ("etc/knockd.conf", "knockd", "portward import --from knockd /etc/knockd.conf"),
    ("etc/fwknop/access.conf", "fwknop", "portward import --from fwknop /etc/fwknop/access.conf"),
    ("etc/iptables/rules.v4", "iptables", "portward import --from iptables-save /etc/iptables/rules.v4"),
    ("etc/iptables/rules.v6", "iptables", "portward import --from iptables-save /etc/iptables/rules.v6"),
    ("etc/sysconfig/iptables", "iptables", "portward import --from iptables-save /etc/sysconfig/iptables"),
    ("etc/sysconfig/ip6tables", "iptables", "portward import --from iptables-save /etc/sysconfig/ip6tables"),
]


def _meaningful_lines(path: Path) -> int:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", ";")))


def legacy_configs(root: Path) -> list[Json]:
    found: list[Json] = []
    for relative, kind, hint in LEGACY_FILES:
        path = root / relative
        entries = _meaningful_lines(path)
        if entries:
            found.append({"path": "/" + relative, "kind": kind, "entries": entries, "import": hint})
    keys = ("IPAddressAllow", "IPAddressDeny")
    for folder in ("etc/systemd/system", "run/systemd/system"):
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.suffix not in (".service", ".socket", ".slice", ".conf") or not path.is_file():
                continue
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            entries = sum(1 for line in text.splitlines() if line.strip().startswith(keys))
            if entries:
                found.append({"path": "/" + str(path.relative_to(root)), "kind": "systemd", "entries": entries})
    sysctl_files = [root / "etc/sysctl.conf", *sorted((root / "etc/sysctl.d").glob("*.conf"))]
    for path in sysctl_files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        entries = sum(1 for line in lines if line.strip().startswith("net."))
        if entries:
            found.append({"path": "/" + str(path.relative_to(root)), "kind": "sysctl", "entries": entries})
    return found


def configured_managers(root: Path) -> list[Json]:
    """Firewall managers configured on disk (active or not in this namespace)."""
    found = []
    ufw = root / "etc/ufw/ufw.conf"
    try:
        if any(line.strip().upper() == "ENABLED=YES" for line in ufw.read_text().splitlines()):
            found.append({"name": "ufw", "config": "/etc/ufw/ufw.conf"})
    except OSError:
        pass
    if (root / "etc/firewalld/firewalld.conf").exists():
        found.append({"name": "firewalld", "config": "/etc/firewalld"})
    if (root / "etc/fail2ban/jail.local").exists() or (root / "etc/fail2ban/jail.d").is_dir():
        found.append({"name": "fail2ban", "config": "/etc/fail2ban"})
    return found


# ----------------------------------------------------------------------------------------- audit


def run_audit(policy_path: str | None, *, root: Path = Path("/"), profile: str | None = None) -> Json:
    from portward.audit.live import collect, firewall_managers
    from portward.kernel.nft import Nft
    from portward.kernel.sockets import list_listeners

    started = time.perf_counter()
    loaded = None
    if policy_path is not None:
        from portward.policy.toml import load_policy

        loaded = load_policy(policy_path)
    listeners = list_listeners()
    host = Host.read()
    live = collect(Nft().list_ruleset())
    calculator = ExposureCalculator(Ruleset(live.listing), host)
    intended = ExposureCalculator(Ruleset(policy_listing(loaded, live.listing)), host) if loaded else None
    sources = source_spans(loaded)
    reached: dict[tuple[str, int, int], Json] = {}  # the calculators hand out one Exposure per port range
    sockets = []
    for listener in listeners:
        scope, _family, _address = socket_scope(listener)
        found = calculator.exposure(listener)
        entry: Json = {
            "proto": listener.proto,
            "family": listener.family,
            "address": listener.address,
            "port": listener.port,
            "pid": listener.pid,
            "process": listener.process,
            "unit": listener.unit,
            "scope": scope,
            "exposure": found.exposure,
            "allowed_from": found.allowed_from,
        }
        if listener.interface:
            entry["interface"] = listener.interface
        if found.via:
            entry["via"] = found.via
        if found.denied_from:
            entry["denied_from"] = found.denied_from
        if found.count > MAX_LISTED:
            entry["allowed_from_total"] = found.count
        if found.unknown:
            entry["unknown"] = found.unknown
        if found.diverted:
            entry["diverted"] = found.diverted
        wanted = intended.exposure(listener) if intended is not None else None
        key = (scope, id(found), id(wanted))  # reach() answers from these three alone
        if key not in reached:
            reached[key] = reach(scope, found, wanted, sources, host.interfaces)
        entry["reach"] = reached[key]
        if wanted is not None:
            entry["policy"] = {"exposure": wanted.exposure, "allowed_from": wanted.allowed_from}
            if wanted.via:
                entry["policy"]["via"] = wanted.via
            matches = wanted.admitted == found.admitted and not found.unknown
            entry["matches_policy"] = matches
            if not matches and not found.unknown:
                extra, missing = difference(found.admitted, wanted.admitted)
                entry["difference"] = {"live_only": extra, "policy_only": missing}
        sockets.append(entry)
    chosen_profile, sysctls = sysctl_audit(loaded, profile)
    managers = firewall_managers(live)
    active = {m["name"] for m in managers}
    for configured in configured_managers(root):
        if configured["name"] not in active:
            managers.append(
                {"name": configured["name"], "tables": [], "config": configured["config"], "active": False}
            )
    return {
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "policy": None if loaded is None else os.path.abspath(str(loaded.path)),
        "profile": chosen_profile,
        "interfaces": host.interfaces,
        "sockets": sockets,
        "sysctl": sysctls,
        "firewalls": managers,
        "legacy": legacy_configs(root),
        "notes": live.notes,
        "seconds": round(time.perf_counter() - started, 3),
    }


# ---------------------------------------------------------------------------------------- people

STYLE = {"world": "bold red", "restricted": "yellow", "blocked": "green", "local": "dim", "unknown": "bold magenta"}


def _port_groups(sockets: list[Json]) -> list[tuple[Json, str]]:
    """Consecutive ports with everything else equal become one row ("8000-8999"): 8,000 sockets of one
    server read as one line."""

    def signature_of(entry: Json) -> str:
        return json.dumps({k: v for k, v in entry.items() if k != "port"}, sort_keys=True)

    rows: list[tuple[Json, str]] = []
    last_signature = None
    first = last = -1
    current: Json | None = None
    for entry in sockets:
        signature = signature_of(entry)
        if current is not None and signature == last_signature and entry["port"] == last + 1:
            last = entry["port"]
            continue
        if current is not None:
            rows.append((current, str(first) if first == last else f"{first}-{last}"))
        current, last_signature, first, last = entry, signature, entry["port"], entry["port"]
    if current is not None:
        rows.append((current, str(first) if first == last else f"{first}-{last}"))
    return rows


def render(document: Json) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = []
    title = f"listening sockets on {document['host']}"
    if document.get("policy"):
        title += f" (policy {document['policy']})"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
    with_policy = document.get("policy") is not None
    for column in ("proto", "address", "port", "process", "unit", "exposure", "allowed from"):
        table.add_column(column, no_wrap=column in ("proto", "port", "exposure"))
    if with_policy:
        table.add_column("policy")
    for entry, ports in _port_groups(document["sockets"]):
        allowed = ", ".join(entry["allowed_from"]) or "-"
        if entry.get("denied_from"):
            denied = entry["denied_from"]
            allowed += " except " + ", ".join(denied[:3]) + (" …" if len(denied) > 3 else "")
        if entry.get("via"):
            allowed += " via " + ",".join(entry["via"])
        if entry.get("unknown"):
            allowed += f" ({entry['unknown'][0]})"
        process = f"{entry['process'] or '?'}[{entry['pid']}]" if entry["pid"] else "-"
        row: list[Any] = [
            entry["proto"] + ("6" if entry["family"] == 6 else ""),
            entry["address"],
            ports,
            process,
            entry["unit"] or "-",
            Text(entry["exposure"], style=STYLE.get(entry["exposure"], "")),
            allowed,
        ]
        if with_policy:
            if entry.get("matches_policy"):
                row.append(Text("ok", style="green"))
            else:
                row.append(Text(f"MISMATCH: policy says {entry['policy']['exposure']}", style="bold red"))
        table.add_row(*row)
    out.append(table)
    bad = [item for item in document["sysctl"] if item["ok"] is False]
    missing = [item for item in document["sysctl"] if item["ok"] is None]
    good = len(document["sysctl"]) - len(bad) - len(missing)
    if bad:
        sysctl_table = Table(
            title=f"sysctls that differ from the {document['profile']} profile ({good} ok)",
            title_justify="left",
            box=None,
            pad_edge=False,
            header_style="bold",
        )
        for column in ("key", "value", "expected", "why"):
            sysctl_table.add_column(column)
        for item in bad:
            sysctl_table.add_row(item["key"], item["value"], item["expected"], item["why"])
        out.append(sysctl_table)
    else:
        out.append(f"sysctls: all {good} match the {document['profile']} profile")
    for manager in document["firewalls"]:
        where = ", ".join(manager["tables"]) or f"configured in {manager.get('config')}, no rules loaded here"
        out.append(f"other firewall manager: {manager['name']} ({where})")
    for item in document["legacy"]:
        hint = f" — {item['import']}" if item.get("import") else ""
        out.append(f"legacy config: {item['path']} ({item['kind']}, {item['entries']} entries){hint}")
    for note in document["notes"]:
        out.append(f"note: {note}")
    return out
