"""The TCP Wrappers dialect (seed 002): hosts.allow / hosts.deny for daemons built with libwrap.

Writer: every inbound rule with a `daemon` becomes `daemon: clients [: options]` in hosts.allow, in policy
order because the first matching line wins. v4 networks are written as address/mask, v6 as [prefix]/len,
`any` as ALL; every admitting line also names loopback (127.0.0.1, [::1]) since portward always admits it;
a drop/reject rule gets the `: deny` option (unless it twists), `hosts_options` are written as they are.
hosts.deny is `ALL: ALL` unless the policy's default admits.

Reader (`import --from hosts hosts.allow [hosts.deny]`): for each daemon the files name whose ports are
known, and for "every other daemon", walk the rules as libwrap does (hosts.allow, then hosts.deny, first
match wins) over the whole address space. Each matching rule takes the addresses its client list admits
(EXCEPT as set difference) that no earlier rule took; the pieces become [[inbound]] rules in that order,
keeping the rule's options, and the last piece is written as `any`. What "every other daemon" gets
decides [defaults] inbound. Names, users and netgroups cannot be addresses: they are taken as tcpd takes
them when the name lookup fails (as `tcpdmatch DAEMON ADDRESS` does) and every such use is a note.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from portward.dialects import Converted, Rendered, read_input
from portward.dialects.hosts_access import (
    FULL,
    HostsAccessError,
    HostsFile,
    Option,
    Request,
    Rule,
    Spans,
    account_problem,
    client_addresses,
    daemon_matches,
    difference,
    intersect,
    is_empty,
    parse_hosts_access,
    parse_option,
    read_host_list,
    render_option,
    render_rule,
    split_pattern,
    string_match,
    to_networks,
    union,
)
from portward.errors import InputError, Problem
from portward.policy.addresses import Net, format_address, is_loopback, merge, to_cidrs
from portward.policy.model import Policy

if TYPE_CHECKING:
    from portward.policy.toml import LoadedPolicy

ALLOW = "etc/hosts.allow"
DENY = "etc/hosts.deny"

# libwrap-linked (or tcpd-wrapped) daemons and the ports they serve: hosts.allow names processes, a
# firewall needs ports. A daemon not listed here cannot be imported (its rules become a note).
DAEMON_PORTS: dict[str, tuple[str, ...]] = {
    "sshd": ("22/tcp",),
    "dropbear": ("22/tcp",),
    "vsftpd": ("21/tcp",),
    "in.ftpd": ("21/tcp",),
    "ftpd": ("21/tcp",),
    "proftpd": ("21/tcp",),
    "pure-ftpd": ("21/tcp",),
    "in.telnetd": ("23/tcp",),
    "telnetd": ("23/tcp",),
    "sendmail": ("25/tcp",),
    "exim": ("25/tcp",),
    "exim4": ("25/tcp",),
    "in.tftpd": ("69/udp",),
    "tftpd": ("69/udp",),
    "in.fingerd": ("79/tcp",),
    "fingerd": ("79/tcp",),
    "ipop3d": ("110/tcp",),
    "pop3-login": ("110/tcp", "995/tcp"),
    "rpcbind": ("111/tcp", "111/udp"),
    "portmap": ("111/tcp", "111/udp"),
    "in.identd": ("113/tcp",),
    "identd": ("113/tcp",),
    "imapd": ("143/tcp",),
    "imap-login": ("143/tcp", "993/tcp"),
    "snmpd": ("161/udp",),
    "slapd": ("389/tcp", "636/tcp"),
    "in.rexecd": ("512/tcp",),
    "in.rlogind": ("513/tcp",),
    "in.rshd": ("514/tcp",),
    "in.talkd": ("517/udp",),
    "in.ntalkd": ("518/udp",),
    "swat": ("901/tcp",),
    "mysqld": ("3306/tcp",),
    "nrpe": ("5666/tcp",),
    "xrdp": ("3389/tcp",),
}
OTHER = "ALL"  # the policy's daemon name for "every daemon not named": hosts.allow's ALL
NAME_CLEAN = re.compile(r"[^A-Za-z0-9_.-]+")


# ------------------------------------------------------------------------------------------- writer


def _client(net: Net) -> list[str]:
    out = []
    for cidr in to_cidrs(net):
        address, _slash, length = cidr.partition("/")
        width = 32 if net.family == 4 else 128
        if int(length) == width:
            out.append(address if net.family == 4 else f"[{address}]")
        elif net.family == 4:
            mask = ((1 << 32) - 1) ^ ((1 << (32 - int(length))) - 1)
            out.append(f"{address}/{format_address(4, mask)}")
        else:
            out.append(f"[{address}]/{length}")
    return out


def clients(policy: Policy, sources: list[str]) -> list[str]:
    is_any, nets = policy.resolve(sources)
    if is_any:
        return ["ALL"]
    out: list[str] = []
    for net in merge(nets):
        if is_loopback(net):  # libwrap matches the client address; loopback clients use 127.0.0.1 or ::1
            out.append("127.0.0.1" if net.family == 4 else "[::1]")
            continue
        out.extend(_client(net))
    return out


def _options(name: str, index: int, texts: list[str] | None) -> list[Option]:
    """The rule's hosts_options, checked as libwrap would check them (the model only checks keywords)."""
    options = []
    for position, text in enumerate(texts or []):
        try:
            options.append(parse_option(text))
        except ValueError as error:
            raise InputError(f"inbound[{index}] ({name!r}).hosts_options[{position}]: {error}") from None
    return options


def render(policy: Policy, source: str = "") -> tuple[dict[str, str], list[str]]:
    allow = [f"# written by portward from {source or 'a policy'}: first matching line wins", ""]
    notes: list[str] = []
    for index, rule in enumerate(policy.inbound):
        if not rule.daemon:
            continue
        names = clients(policy, rule.from_)
        if rule.action == "accept" and names != ["ALL"]:
            # portward always admits loopback; say so where libwrap would otherwise refuse it
            names = ["127.0.0.1", "[::1]"] + [name for name in names if name not in ("127.0.0.1", "[::1]")]
        fields = [f"{rule.daemon}: {' '.join(names)}"]
        options = _options(rule.name, index, rule.hosts_options)
        fields += [render_option(option) for option in options]
        if rule.action != "accept" and not (options and options[-1].keyword == "twist"):
            fields.append("deny")  # twist already ends the rule: the client never reaches the daemon
        allow.append(f"# inbound {rule.name!r}")
        allow.append(" : ".join(fields))
    if len(allow) == 2:
        notes.append("no inbound rule names a `daemon`: hosts.allow admits nothing")
    else:
        notes.append("hosts.allow cannot say ports or interfaces: each daemon's line covers all of its ports")
    if policy.defaults.inbound == "accept":
        deny = "# written by portward: the policy admits by default, so nothing is refused here\n"
    else:
        deny = "# written by portward: whatever hosts.allow does not admit is refused\nALL: ALL\n"
    return {ALLOW: "\n".join(allow) + "\n", DENY: deny}, notes


def export(loaded: LoadedPolicy, policy_path: str, root: Path) -> Rendered:
    """`export --format hosts`: etc/hosts.allow and etc/hosts.deny."""
    files, notes = render(loaded.policy, os.path.abspath(policy_path))
    return Rendered(files, notes)


# ------------------------------------------------------------------------------------------- reader

Access = Literal["granted", "denied", "delegated"]
ACTIONS: dict[str, str] = {"granted": "accept", "denied": "drop", "delegated": "reject"}


@dataclass
class Piece:
    """Addresses one rule (or no rule: the default grant) decides for a daemon, in libwrap's order."""

    rule: Rule | None
    spans: Spans
    access: Access
    table: str = ""  # allow | deny | "" (no rule matched)

    @property
    def options(self) -> tuple[str, ...]:
        """The rule's options but allow/deny, which become the policy rule's `action`."""
        options = self.rule.options if self.rule else ()
        return tuple(option.plain for option in options if option.keyword not in ("allow", "deny"))


@dataclass
class Imported:
    inbound_default: str = "drop"
    rules: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lossy: dict[str, list[str]] = field(default_factory=dict)  # daemon -> why tcpd may answer otherwise
    patterns: list[str] = field(default_factory=list)  # daemon-name patterns (in., *ftpd): applied to named ones

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _access(rule: Rule, verdict: Access) -> Access:
    """The verdict of a matched rule once its options ran (allow/deny/twist; a bad user or group denies)."""
    for option in rule.options:
        if option.keyword in ("user", "group") and account_problem(option):
            return "denied"
        if option.keyword == "allow":
            return "granted"
        if option.keyword == "deny":
            return "denied"
        if option.keyword == "twist":
            return "delegated"
    return verdict


def walk(allow: HostsFile, deny: HostsFile, daemon_match: Callable[[str], bool],
         lists: Callable[[str], list[str] | None], reasons: list[str]) -> list[Piece]:
    """The whole address space cut into what each matching rule decides, in libwrap's order."""
    pieces: list[Piece] = []
    remaining: Spans = {family: list(spans) for family, spans in FULL.items()}
    tables: tuple[tuple[HostsFile, Access, str], ...] = ((allow, "granted", "allow"), (deny, "denied", "deny"))
    for table, verdict, kind in tables:
        for rule in table.rules:
            if not rule.daemons.matches(daemon_match):
                continue
            admitted = client_addresses(rule.clients, lists)
            reasons += [f"{rule.where}: {reason}" for reason in admitted.reasons]
            taken = intersect(admitted.spans, remaining)
            if is_empty(taken):
                continue
            pieces.append(Piece(rule, taken, _access(rule, verdict), kind))
            remaining = difference(remaining, taken)
    if not is_empty(remaining):
        pieces.append(Piece(None, remaining, "granted"))
    return pieces


def _merged(pieces: list[Piece]) -> list[Piece]:
    """Neighbouring pieces with the same verdict and options are one policy rule."""
    out: list[Piece] = []
    for piece in pieces:
        if out and out[-1].access == piece.access and out[-1].options == piece.options:
            first = out[-1]
            out[-1] = Piece(first.rule, union(first.spans, piece.spans), piece.access, first.table)
        else:
            out.append(piece)
    return out


def _named_matches(request: Request, lists: Callable[[str], list[str] | None], token: str) -> bool:
    return daemon_matches(token, request, lists)


def _other_matches(token: str) -> bool:
    """Does a daemon pattern match a daemon these files do not name? Only the generic ones are taken to."""
    name, host = split_pattern(token)
    generic = name.upper() in ("ALL", "KNOWN") or set(name) == {"*"}
    return generic and (host is None or string_match(host, "unknown"))  # the server address is unknown too


def _literal(token: str) -> str | None:
    """The daemon a pattern names outright (`sshd`, `sshd@host`), or None for ALL, wildcards, prefixes."""
    name = split_pattern(token)[0]
    if name.upper() in ("ALL", "KNOWN") or any(c in name for c in "*?") or name.startswith(".") or name.endswith("."):
        return None
    return name


def _rule_name(daemon: str, piece: Piece, taken: set[str]) -> str:
    tag = f"{piece.table}-{piece.rule.line}" if piece.rule else "default"
    base = NAME_CLEAN.sub("-", f"{daemon}-{tag}".lower()).strip("-.")[:60] or "rule"
    name, number = base, 2
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    taken.add(name)
    return name


def _emit(imported: Imported, daemon: str, ports: tuple[str, ...] | None, pieces: list[Piece],
          taken: set[str], *, rest_is_any: bool = True) -> None:
    """Pieces -> [[inbound]] rules; the last piece holds everything no earlier piece took, so it is `any`."""
    for index, piece in enumerate(pieces):
        rest = rest_is_any and index == len(pieces) - 1
        rule: dict[str, Any] = {
            "name": _rule_name(daemon, piece, taken),
            "from": ["any"] if rest else to_networks(piece.spans),
            "daemon": daemon,
            "action": ACTIONS[piece.access],
            "comment": (f"{piece.rule.where}: {render_rule(piece.rule)}" if piece.rule
                        else "no rule matched: tcpd grants"),
        }
        if ports:
            rule["ports"] = list(ports)
        if piece.options:
            rule["hosts_options"] = list(piece.options)
        imported.rules.append(rule)


def _daemons(allow: HostsFile, deny: HostsFile, imported: Imported) -> dict[str, tuple[str, ...]]:
    """Daemons named outright, with their ports; notes for the rest (unknown ones, patterns, daemon@host)."""
    found: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for rule in allow.rules + deny.rules:
        for token in rule.daemons.tokens():
            name = _literal(token)
            host = split_pattern(token)[1]
            if host is not None and host.upper() != "ALL":
                reason = (f"{rule.where}: {token!r} depends on the server address tcpd was reached at: taken as "
                          "tcpdmatch takes it without one (portward rules do not say which local address)")
                imported.note(reason)
                imported.lossy.setdefault(name or OTHER, []).append(reason)
            if name is None:
                if not _other_matches(token):
                    imported.patterns.append(token)
                    imported.note(f"{rule.where}: daemon pattern {token!r} is applied to the daemons these files name; "
                                  "other daemons it matches are taken not to match")
                continue
            key = name.lower()
            if key in seen:
                continue
            seen.add(key)
            if key in DAEMON_PORTS:
                found[name] = DAEMON_PORTS[key]
            else:
                imported.note(f"{rule.where}: daemon {name!r} has no well-known port here: its rules are not imported"
                              " — add an [[inbound]] rule with its ports by hand")
                imported.lossy.setdefault(name, []).append("no known port")
    return found


def _address_hints(allow: HostsFile, deny: HostsFile, imported: Imported) -> None:
    """`206.182.68.0` (seed 002) is one address to libwrap, not the network the text meant."""
    for rule in allow.rules + deny.rules:
        for token in rule.clients.tokens():
            host = split_pattern(token)[1] or token
            if re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+\.0", host):
                prefix = host[: -len("0")]
                imported.note(f"{rule.where}: {host} matches that one address only; for the network write {prefix} "
                              f"or {host}/255.255.255.0 (imported as the one address, as libwrap reads it)")


def convert(allow: HostsFile, deny: HostsFile,
            lists: Callable[[str], list[str] | None] = read_host_list) -> Imported:
    """hosts.allow + hosts.deny -> policy rules (see the module docstring)."""
    imported = Imported()
    daemons = _daemons(allow, deny, imported)
    _address_hints(allow, deny, imported)
    taken: set[str] = set()
    used_ports: dict[str, str] = {}
    for daemon, ports in daemons.items():
        reasons: list[str] = []
        pieces = _merged(walk(allow, deny, partial(_named_matches, Request(daemon), lists), lists, reasons))
        for port in ports:
            if port in used_ports:
                imported.note(f"{daemon} and {used_ports[port]} both serve {port}: a firewall cannot tell them apart; "
                              f"the rules of {used_ports[port]} come first and decide")
            used_ports.setdefault(port, daemon)
        _emit(imported, daemon, ports, pieces, taken)
        for reason in reasons:
            imported.note(reason)
        if reasons:
            imported.lossy.setdefault(daemon, []).extend(reasons)
    reasons = []
    pieces = _merged(walk(allow, deny, _other_matches, lists, reasons))
    for reason in reasons:
        imported.note(reason)
    if reasons:
        imported.lossy.setdefault(OTHER, []).extend(reasons)
    _defaults(imported, pieces, taken)
    _option_notes(imported)
    return imported


def _defaults(imported: Imported, pieces: list[Piece], taken: set[str]) -> None:
    """Every other daemon's last piece is the policy's default; the pieces before it are `ALL` rules."""
    last = pieces[-1]
    imported.inbound_default = "accept" if last.access == "granted" else "drop"
    keep_last = last.rule is not None and (bool(last.options) or last.access == "delegated")
    _emit(imported, OTHER, None, pieces if keep_last else pieces[:-1], taken, rest_is_any=keep_last)
    if last.rule is None:
        imported.note("no rule refuses every other daemon, and tcpd grants what no rule matches: imported as "
                      '[defaults] inbound = "accept" — every port of every service is open unless a rule drops it; '
                      'consider inbound = "drop" with rules for what must stay reachable')
    elif last.access != "granted":
        imported.note(f"{last.rule.where}: `{render_rule(last.rule)}` refuses every daemon hosts.allow does not admit"
                      ' — imported as [defaults] inbound = "drop", which also drops every port of services that never '
                      "used TCP Wrappers (web, DNS, mail, …): add [[inbound]] rules for them before applying")
    else:
        imported.note(f'{last.rule.where}: `{render_rule(last.rule)}` grants every other daemon: [defaults] inbound = '
                      '"accept"')


def _option_notes(imported: Imported) -> None:
    kinds = {option.split()[0].lower() for rule in imported.rules for option in rule.get("hosts_options", [])}
    if kinds:
        imported.note("hosts_options (" + ", ".join(sorted(kinds)) + ") are kept for `export --format hosts`; the "
                      "firewall itself does not run them (alerts: see [watch] and log_denied)")
    if "twist" in kinds:
        imported.note("twist hands the client to a command instead of the daemon: portward rejects those clients in "
                      'the kernel (action = "reject") and keeps the twist for the hosts export')
    if "aclexec" in kinds:
        imported.note("aclexec lets a command decide at connection time: imported as tcpdmatch answers (granted); "
                      "the firewall cannot run it")
    if any(rule["daemon"] != OTHER for rule in imported.rules):
        imported.note("hosts.allow names processes, not ports: each daemon's rules use its well-known ports — change "
                      "`ports` where a daemon listens elsewhere")


def to_toml(imported: Imported, sources: list[str]) -> str:
    lines = [f"# imported by portward from {', '.join(sources)}", "# review it, then: portward check -p FILE", ""]
    lines += [f"# NOTE {note}" for note in imported.notes]
    if imported.notes:
        lines.append("")
    lines += ["[defaults]", f"inbound = {json.dumps(imported.inbound_default)}", ""]
    for rule in imported.rules:
        lines += ["[[inbound]]", f"# {rule['comment']}"]
        for key in ("name", "ports", "from", "daemon", "hosts_options"):
            if key in rule:
                lines.append(f"{key} = {json.dumps(rule[key], ensure_ascii=False)}")
        if rule["action"] != "accept":
            lines.append(f"action = {json.dumps(rule['action'])}")
        lines.append("")
    return "\n".join(lines)


def _files(paths: list[str]) -> tuple[str | None, str | None]:
    """hosts.allow then hosts.deny; a lone file named *deny is the deny table."""
    if not 1 <= len(paths) <= 2:
        raise InputError("import --from hosts takes hosts.allow and optionally hosts.deny — give one or two files")
    if len(paths) == 2:
        if paths[0].endswith("deny") and paths[1].endswith("allow"):
            raise InputError(f"{paths[0]} looks like hosts.deny — give hosts.allow first, then hosts.deny")
        return paths[0], paths[1]
    return (None, paths[0]) if paths[0].endswith("deny") else (paths[0], None)


def read_policy(paths: list[str]) -> Converted:
    """`import --from hosts hosts.allow [hosts.deny]` -> a policy, with a note for everything not carried."""
    allow_path, deny_path = _files(paths)
    tables: list[HostsFile] = []
    problems: list[Problem] = []
    for path in (allow_path, deny_path):
        if path is None:
            tables.append(HostsFile(""))
            continue
        try:
            tables.append(parse_hosts_access(read_input(path), path))
        except HostsAccessError as error:
            problems += error.problems
    if problems:
        raise HostsAccessError(problems)
    lists_read: list[str] = []

    def lists(path: str) -> list[str] | None:
        lists_read.append(path)
        return read_host_list(path)

    imported = convert(tables[0], tables[1], lists)
    data = {
        "rules": len(imported.rules),
        "daemons": sorted({rule["daemon"] for rule in imported.rules}),
        "lossy": imported.lossy,
        "patterns": imported.patterns,
        "lists": sorted(set(lists_read)),
    }
    return Converted(to_toml(imported, [p for p in (allow_path, deny_path) if p]), imported.notes, data)
