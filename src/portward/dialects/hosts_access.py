"""The TCP Wrappers access language, read and answered the way Debian's libwrap 7.6.q does.

hosts_access(5) with the hosts_options(5) extensions (Debian builds libwrap with PROCESS_OPTIONS and
ACLEXEC):

    daemon_list : client_list [ : option : option ... ]

Reading follows libwrap's own loop (hosts_access.c, misc.c, options.c): a backslash before the newline
joins lines, a `#` in the *first column* starts a comment (one after blanks does not), list items are
separated by blanks and commas, `EXCEPT` nests to the right, the two first fields are split at the first
`:` outside `[ ]` (so IPv6 must be bracketed), options at every `:` not written `\\:`.

Where libwrap silently does something surprising this reader refuses the line instead, with
FILE:LINE: key — a last line without a newline (libwrap drops it and, on Debian, every rule after it), a
line over its 2,047-character buffer, `198.18.0.1/24` (host bits set: libwrap never matches it),
`n.n.n.n/0` (matches nothing), an IPv6 address without brackets, an unknown option or a bad option value
(libwrap denies the connection when it gets there), a comment that does not start in column 1.

`evaluate()` answers like `tcpdmatch DAEMON CLIENT`: hosts.allow first, first matching rule wins, then
hosts.deny, else granted; options `allow`/`deny` override the table's verdict, `twist` delegates. A client
given by address alone is matched the way tcpd matches it when the name lookup failed: its name is
"unknown" (so UNKNOWN matches, KNOWN, LOCAL, PARANOID and host names do not) and its user is "unknown".

`client_addresses()` answers the reverse question for the import: which addresses a client list admits
under the same assumption, as sorted (first, last) ranges per family, plus why the answer is only an
assumption (names, users, netgroups) or had to be cut short.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from portward.errors import BadLine, Problem, ProblemsError
from portward.policy.addresses import V4_MAX, V6_MAX, merge_spans

__all__ = [
    "EMPTY",
    "FULL",
    "MAX_SPANS",
    "OPTIONS",
    "Admitted",
    "Applied",
    "Decision",
    "Host",
    "HostsAccessError",
    "HostsFile",
    "Option",
    "PatternList",
    "Request",
    "Rule",
    "Spans",
    "account_problem",
    "client_addresses",
    "client_matches",
    "client_pattern_problem",
    "daemon_matches",
    "daemon_pattern_problem",
    "difference",
    "evaluate",
    "expand",
    "host_addresses",
    "host_match",
    "host_pattern_problem",
    "intersect",
    "is_empty",
    "parse_host_list",
    "parse_hosts_access",
    "parse_option",
    "read_host_list",
    "read_hosts_access",
    "render_file",
    "render_option",
    "render_rule",
    "request_like_tcpdmatch",
    "split_pattern",
    "string_match",
    "to_networks",
    "union",
]

LINE_BUFFER = 2047  # libwrap's BUFLEN 2048 minus the terminating NUL: the newline must fit in it
SEPARATORS = ", \t\r\n"
SPACES = " \t\r\n\v\f"
UNKNOWN = "unknown"
PARANOID = "paranoid"
WILDCARDS = frozenset({"ALL", "LOCAL", "UNKNOWN", "KNOWN", "PARANOID"})

# option -> (argument: none | need | optional, must be last, % expanded). options.c's table on Debian.
OPTIONS: dict[str, tuple[str, bool, bool]] = {
    "user": ("need", False, False),
    "group": ("need", False, False),
    "umask": ("need", False, False),
    "linger": ("need", False, False),
    "keepalive": ("none", False, False),
    "spawn": ("need", False, True),
    "twist": ("need", True, True),
    "rfc931": ("optional", False, False),
    "setenv": ("need", False, True),
    "nice": ("optional", False, False),
    "severity": ("need", False, False),
    "allow": ("none", True, False),
    "deny": ("none", True, False),
    "banners": ("need", False, False),
    "aclexec": ("need", False, True),
}
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
# libwrap's own facility table: no authpriv, ftp or syslog (tested against tcpdmatch)
FACILITIES = ("kern", "user", "mail", "daemon", "auth", "lpr", "news", "uucp", "cron", *(f"local{n}" for n in range(8)))
PERCENT_LETTERS = "aAcdhHnNprRsu%"
# percent_x.c: characters of an expansion outside this set become '_' (shell safety)
PERCENT_SAFE = frozenset("1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_OCTETS_PREFIX = re.compile(rf"(?:{_OCTET}\.){{1,3}}")
_BRACKETED = re.compile(r"\[([^\[\]/]+)\](?:/([0-9]+))?")
_V6_OUTSIDE = re.compile(r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:/[0-9]+)?")

Spans = dict[int, list[tuple[int, int]]]
FULL: Spans = {4: [(0, V4_MAX)], 6: [(0, V6_MAX)]}


class HostsAccessError(ProblemsError):
    """Every problem found in a hosts.allow / hosts.deny (or a /file list), each at FILE:LINE: key."""

    what = "invalid hosts_access file"


# ------------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class PatternList:
    """`a b EXCEPT c EXCEPT d` = items (a, b) except the list (c EXCEPT d): EXCEPT nests to the right."""

    items: tuple[str, ...]
    exceptions: PatternList | None = None

    def __str__(self) -> str:
        text = " ".join(self.items)
        return f"{text} EXCEPT {self.exceptions}" if self.exceptions else text

    def matches(self, match: Callable[[str], bool]) -> bool:
        """libwrap's list_match: some item matches and the exceptions do not."""
        if not any(match(item) for item in self.items):
            return False
        return self.exceptions is None or not self.exceptions.matches(match)

    def tokens(self) -> Iterator[str]:
        yield from self.items
        if self.exceptions:
            yield from self.exceptions.tokens()


@dataclass(frozen=True)
class Option:
    """One hosts_options(5) option: keyword (lower case) and its value as libwrap sees it (`\\:` undone)."""

    keyword: str
    value: str | None = None

    def __str__(self) -> str:
        return render_option(self)

    @property
    def plain(self) -> str:
        return self.keyword if self.value is None else f"{self.keyword} {self.value}"


@dataclass(frozen=True)
class Rule:
    """One access rule. ``line`` is where it starts; ``end_line`` is the line tcpd reports it at (the
    last physical line, when backslashes join several)."""

    file: str
    line: int
    end_line: int
    daemons: PatternList
    clients: PatternList
    options: tuple[Option, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class HostsFile:
    name: str
    rules: tuple[Rule, ...] = ()


# ------------------------------------------------------------------------------------------- reading


def _logical_lines(text: str, name: str, problems: list[Problem]) -> Iterator[tuple[int, int, str]]:
    """(first line, last line, text with its newline) per logical line, as misc.c's xgets() joins them."""
    pieces = text.split("\n")
    physical = [piece + "\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    joined, start, used, too_long = "", 0, 0, False
    for number, line in enumerate(physical, 1):
        if not joined:
            start, too_long = number, False
        if not line.endswith("\n"):
            problems.append(Problem(name, number, "line", "no newline at the end of the file — libwrap ignores "
                                    "this line and every rule after it; add a newline"))
            return
        too_long = too_long or used + len(line) > LINE_BUFFER
        if line.endswith("\\\n"):
            joined += line[:-2]
            used += len(line) - 2
            if number == len(physical):
                problems.append(Problem(name, number, "line", "the file ends with a backslash — libwrap ignores "
                                        "this rule and every rule after it; remove the backslash"))
            continue
        joined += line
        if too_long:
            problems.append(Problem(name, start, "line", f"longer than libwrap's {LINE_BUFFER}-character line buffer"
                                    " (continuations included): it ignores this rule and every rule after it — "
                                    "split it into several rules"))
        else:
            yield start, number, joined
        joined, used = "", 0


def _split_at(text: str, delimiter: str) -> tuple[str, str | None]:
    """misc.c's split_at() as patched for IPv6: the first delimiter outside [ ]."""
    depth = 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif depth == 0 and char == delimiter:
            return text[:index], text[index + 1:]
    return text, None


def split_pattern(token: str) -> tuple[str, str | None]:
    """`daemon@host` / `user@host` -> (daemon or user, host); (token, None) without an @ (a leading @ is a
    netgroup, not a separator)."""
    left, right = _split_at(token[1:], "@")
    return token[:1] + left, right


def _option_fields(text: str) -> list[str]:
    """options.c's get_field(): split at `:`, `\\:` is a colon inside a field; fields are trimmed."""
    fields: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == ":":
            fields.append("".join(current).strip(SPACES))
            current = []
        elif char == "\\" and text[index + 1:index + 2] == ":":
            current.append(":")
            index += 1
        else:
            current.append(char)
        index += 1
    fields.append("".join(current).strip(SPACES))
    return fields


def _pattern_list(text: str, check: Callable[[str], str | None], key: str) -> PatternList:
    tokens = [token for token in re.split(f"[{re.escape(SEPARATORS)}]+", text) if token]
    groups: list[list[str]] = [[]]
    for token in tokens:
        if token.upper() == "EXCEPT":
            groups.append([])
        else:
            groups[-1].append(token)
    if not tokens:
        raise BadLine(key, "empty list — name at least one pattern (ALL for every one)")
    if any(not group for group in groups):
        raise BadLine(key, "EXCEPT needs patterns on both sides — e.g. `ALL EXCEPT 198.18.0.1`")
    for token in tokens:
        if token.upper() != "EXCEPT":
            problem = check(token)
            if problem:
                raise BadLine(key, f"{token!r}: {problem}")
    result: PatternList | None = None
    for group in reversed(groups):
        result = PatternList(tuple(group), result)
    assert result is not None
    return result


def host_pattern_problem(token: str) -> str | None:
    """What is wrong with a host pattern (client list, daemon@host, /file lists), or None."""
    if token.upper() in WILDCARDS:
        return None
    if token.startswith("@"):
        return None if len(token) > 1 and "@" not in token[1:] else "a netgroup is @name"
    if token.startswith("/"):
        return None
    if "[" in token or "]" in token:
        return _bracket_problem(token)
    if "*" in token or "?" in token:
        if "/" in token:
            return "wildcards cannot be combined with net/mask — use one or the other"
        return None
    if "/" in token:
        return _netmask_problem(token)
    if token.endswith(".") and set(token) <= set("0123456789."):
        if not _OCTETS_PREFIX.fullmatch(token):
            return "an address prefix is 1 to 3 whole numbers 0-255, each followed by a dot — e.g. 198.18."
        return None
    if set(token) <= set("0123456789.") and not token.startswith(".") and not _DOTTED.fullmatch(token):
        return ("not an IPv4 address (libwrap compares it as text) — write four numbers 0-255 without leading "
                "zeros, or end a network prefix with a dot: 198.18.0.")
    return None


def _bracket_problem(token: str) -> str | None:
    match = _BRACKETED.fullmatch(token)
    if not match:
        return "an IPv6 pattern is [address] or [network]/length, e.g. [2001:db8::]/32"
    try:
        socket.inet_pton(socket.AF_INET6, match.group(1))
    except OSError:
        return f"{match.group(1)!r} is not an IPv6 address"
    if match.group(2) is not None and int(match.group(2)) > 128:
        return "the prefix length is 0-128"
    return None


def _netmask_problem(token: str) -> str | None:
    net, _slash, mask = token.partition("/")
    if not _DOTTED.fullmatch(net):
        return "net/mask needs an IPv4 network before the / (IPv6: [2001:db8::]/32)"
    value = _v4(net)
    if mask.isdigit() and not (len(mask) > 1 and mask.startswith("0")):
        length = int(mask)
        if not 1 <= length <= 32:
            return ("libwrap's /0 matches no address — write ALL (every address) or 0.0.0.0/0.0.0.0 (every IPv4 "
                    "address)" if length == 0 else "the prefix length is 1-32")
        bits = (V4_MAX << (32 - length)) & V4_MAX
    elif _DOTTED.fullmatch(mask):
        bits = _v4(mask)
        if bits == V4_MAX:
            return "255.255.255.255 is not a valid mask for libwrap — write the address alone"
    else:
        return "the mask is a dotted quad (255.255.255.0) or a prefix length (24)"
    if value & ~bits & V4_MAX:
        network = ".".join(str((value & bits) >> shift & 255) for shift in (24, 16, 8, 0))
        return f"host bits are set, so libwrap never matches it — write the network, {network}/{mask}"
    return None


def daemon_pattern_problem(token: str) -> str | None:
    if token.startswith("#"):
        return "a daemon pattern cannot start with # (at the start of a line it makes a comment)"
    _name, host = split_pattern(token)
    if host is None:
        return None
    return host_pattern_problem(host) if host else "daemon@host needs a host after the @"


def client_pattern_problem(token: str) -> str | None:
    _user, host = split_pattern(token)
    if host is None:
        return host_pattern_problem(token)
    if not host:
        return "user@host needs a host after the @"
    return host_pattern_problem(host)


def parse_option(text: str) -> Option:
    """One option field (already split at `:` and unescaped) -> Option. ValueError says what is wrong."""
    text = text.strip(SPACES)
    end = len(text)
    for index, char in enumerate(text):
        if char in SPACES or char == "=":
            end = index
            break
    keyword, rest = text[:end].lower(), text[end:].lstrip(SPACES)
    if rest.startswith("="):
        rest = rest[1:].lstrip(SPACES)
    value = rest or None
    if not keyword:
        raise ValueError("missing option name — libwrap denies the connection here; remove the empty field")
    if keyword not in OPTIONS:
        raise ValueError(f"unknown option {keyword!r} — libwrap denies the connection here; known: "
                         + ", ".join(OPTIONS))
    argument, _last, expands = OPTIONS[keyword]
    if value is None and argument == "need":
        raise ValueError(f"option {keyword!r} needs a value")
    if value is not None and argument == "none":
        raise ValueError(f"option {keyword!r} takes no value — remove {value!r}")
    if value is not None:
        _check_value(keyword, value)
        if expands:
            _check_percent(value)
    return Option(keyword, value)


def _check_value(keyword: str, value: str) -> None:
    if keyword == "umask" and not (re.fullmatch(r"[0-7]+", value) and int(value, 8) <= 0o777):
        raise ValueError(f"umask {value!r}: an octal number up to 777, e.g. 022")
    if keyword == "linger" and not re.fullmatch(r"\+?[0-9]{1,9}", value):
        raise ValueError(f"linger {value!r}: a number of seconds, e.g. 5")
    if keyword == "rfc931" and not (re.fullmatch(r"\+?[0-9]{1,9}", value) and int(value) > 0):
        raise ValueError(f"rfc931 {value!r}: a timeout in seconds above 0, e.g. 10")
    if keyword == "nice" and not re.fullmatch(r"[+-]?[0-9]{1,9}", value):
        raise ValueError(f"nice {value!r}: a whole number, e.g. 10")
    if keyword == "severity":
        facility, dot, level = value.lower().rpartition(".")
        if level not in SEVERITIES or (dot and facility not in FACILITIES):
            raise ValueError(f"severity {value!r}: [facility.]level with level one of {', '.join(SEVERITIES)} and "
                             f"facility one of {', '.join(FACILITIES)}")
    if keyword in ("user", "group") and (re.search(f"[{SPACES}]", value) or value.startswith(".")
                                         or value.endswith(".")):
        raise ValueError(f"{keyword} {value!r}: a name" + (" or user.group" if keyword == "user" else ""))
    if keyword == "setenv" and "=" in re.split(f"[{SPACES}]", value, maxsplit=1)[0]:
        raise ValueError("setenv NAME VALUE, with a blank (not =) after the name — libwrap fails on NAME=VALUE")


def _check_percent(value: str) -> None:
    for match in re.finditer(r"%(.)", value, re.DOTALL):
        if match.group(1) not in PERCENT_LETTERS:
            raise ValueError(f"unknown expansion %{match.group(1)} — use one of "
                             + " ".join(f"%{letter}" for letter in PERCENT_LETTERS))


def _v6_outside_brackets(clients: str, rest: str | None) -> str | None:
    """The IPv6 address a line cut at its colons, when that is what happened."""
    if rest is None:
        return None
    last = re.split(f"[{re.escape(SEPARATORS)}]+", clients.strip(SEPARATORS))[-1]
    match = _V6_OUTSIDE.match(last + ":" + rest)
    if not match:
        return None
    address = match.group().partition("/")[0]
    try:
        socket.inet_pton(socket.AF_INET6, address)
    except OSError:
        return None
    return match.group()


def _parse_rule(name: str, first: int, last: int, text: str) -> Rule:
    daemons_text, rest = _split_at(text, ":")
    if rest is None:
        raise BadLine("rule", "missing ':' — write `daemon_list : client_list [: option ...]`")
    clients_text, options_text = _split_at(rest, ":")
    address = _v6_outside_brackets(clients_text, options_text)
    if address:
        network, slash, length = address.partition("/")
        raise BadLine("clients", f"IPv6 address {address} outside [ ] — libwrap cuts the line at its colons; "
                   f"write [{network}]{slash}{length}")
    daemons = _pattern_list(daemons_text, daemon_pattern_problem, "daemons")
    clients = _pattern_list(clients_text, client_pattern_problem, "clients")
    options: list[Option] = []
    if options_text is not None:
        fields = _option_fields(options_text)
        for position, raw in enumerate(fields):
            try:
                option = parse_option(raw)
            except ValueError as error:
                raise BadLine(f"options[{position}]", str(error)) from None
            if OPTIONS[option.keyword][1] and position != len(fields) - 1:
                raise BadLine(f"options[{position}]", f"option {option.keyword!r} must come last — libwrap denies the "
                           "connection otherwise; move it to the end")
            options.append(option)
    return Rule(name, first, last, daemons, clients, tuple(options))


def parse_hosts_access(text: str, name: str = "hosts.allow") -> HostsFile:
    """A hosts.allow or hosts.deny text -> its rules. Raises HostsAccessError listing every problem."""
    problems: list[Problem] = []
    rules: list[Rule] = []
    for first, last, line in _logical_lines(text, name, problems):
        if line.startswith("#") or not line.strip(SPACES):
            continue
        if line.lstrip(" \t").startswith("#"):
            problems.append(Problem(name, first, "comment", "libwrap takes `#` as a comment only in the first "
                                    "column — move it there (this line would be read as a rule)"))
            continue
        try:
            rules.append(_parse_rule(name, first, last, line))
        except BadLine as bad:
            problems.append(Problem(name, first, bad.key, bad.message))
    if problems:
        raise HostsAccessError(problems)
    return HostsFile(name, tuple(rules))


def read_hosts_access(path: str, name: str | None = None) -> HostsFile:
    """A file as libwrap reads it: a file that does not exist is an empty table."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return HostsFile(name or path)
    except OSError as error:
        raise HostsAccessError([Problem(path, 0, "", f"cannot read it: {error.strerror} — check the path")]) from None
    return parse_hosts_access(text, name or path)


def parse_host_list(text: str, name: str) -> list[str]:
    """A /file list (hostfile_match: blank-separated patterns, read with fscanf %s) -> its patterns."""
    problems: list[Problem] = []
    tokens: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        for token in line.split():
            problem = host_pattern_problem(token)
            if problem:
                problems.append(Problem(name, number, "pattern", f"{token!r}: {problem}"))
            tokens.append(token)
    if problems:
        raise HostsAccessError(problems)
    return tokens


def read_host_list(path: str) -> list[str] | None:
    """None when the file does not exist (libwrap: the pattern matches nothing)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise HostsAccessError([Problem(path, 0, "", f"cannot read it: {error.strerror}")]) from None
    return parse_host_list(text, path)


# ------------------------------------------------------------------------------------------ rendering


def render_option(option: Option) -> str:
    """An option as a field: `:` escaped, and `=` kept when the value itself starts with one."""
    if option.value is None:
        return option.keyword
    separator = " = " if option.value.startswith("=") else " "
    return (option.keyword + separator + option.value).replace(":", "\\:")


def render_rule(rule: Rule) -> str:
    """A rule as one line that parses back to the same rule."""
    line = " : ".join([str(rule.daemons), str(rule.clients), *(render_option(option) for option in rule.options)])
    return line + " " if line.endswith("\\") else line  # a final backslash would join the next line


def render_file(hosts_file: HostsFile) -> str:
    return "".join(render_rule(rule) + "\n" for rule in hosts_file.rules)


# ------------------------------------------------------------------------------------------ matching


@dataclass(frozen=True)
class Host:
    """One end of a connection as libwrap knows it; None means unknown (lookup failed or not done)."""

    address: str | None = None
    name: str | None = None  # "paranoid": the name did not map back to the address
    port: int | None = None

    @property
    def hostaddr(self) -> str:
        return self.address or UNKNOWN

    @property
    def hostname(self) -> str:
        return self.name or UNKNOWN

    @property
    def name_known(self) -> bool:
        return self.hostname.lower() not in (UNKNOWN, PARANOID)

    @property
    def hostinfo(self) -> str:
        return self.hostname if self.name_known else self.hostaddr


@dataclass(frozen=True)
class Request:
    daemon: str
    client: Host = Host()
    server: Host = Host()
    user: str | None = None  # the ident (RFC 931) answer; None: unknown
    pid: int = field(default_factory=os.getpid)


def request_like_tcpdmatch(daemon: str, client: str) -> Request:
    """What `tcpdmatch DAEMON[@SERVER] [USER@]CLIENT` asks, for clients given as addresses (or the
    `unknown` / `paranoid` pseudo-clients): no name lookups are made, as when they fail."""
    name, _at, server = daemon.partition("@")
    user, at, host = client.rpartition("@")
    client_host = (Host(name=PARANOID) if host.lower() == PARANOID else
                   Host() if host.lower() == UNKNOWN else Host(address=host.strip("[]")))
    return Request(name, client_host, Host(address=server.strip("[]") or None), user if at else None)


def _mapped_to_v4(text: str) -> str:
    """string_match() compares a v4-mapped client (::ffff:198.18.0.1) as the IPv4 address."""
    if text[:7].lower() == "::ffff:" and _dot_quad(text[7:]) is not None:
        return text[7:]
    return text


def _dot_quad(text: str) -> int | None:
    """misc.c's dot_quad_addr(): four runs of non-dots, then inet_addr()."""
    if len([run for run in text.split(".") if run]) != 4:
        return None
    try:
        return int.from_bytes(socket.inet_aton(text), "big")
    except OSError:
        return None


def _v4(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def _v6(text: str) -> int | None:
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except OSError:
        return None


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                      re.IGNORECASE | re.DOTALL)


def _not_inaddr(token: str) -> bool:
    """tcpd.h NOT_INADDR: the pattern has a character no address has, so it may be a host name."""
    return bool(set(token) - set("0123456789./"))


def string_match(token: str, text: str) -> bool:
    """hosts_access.c string_match() on Debian: wildcards, .suffix, ALL, KNOWN, prefix., [v6], exact."""
    text = _mapped_to_v4(text)
    if "*" in token or "?" in token:
        return _glob(token).fullmatch(text) is not None
    if token.startswith("."):
        return len(text) > len(token) and text[-len(token):].lower() == token.lower()
    upper = token.upper()
    if upper == "ALL":
        return True
    if upper == "KNOWN":
        return text.lower() != UNKNOWN
    if token.endswith("."):
        return text[:len(token)].lower() == token.lower()
    if token.startswith("[") and token.endswith("]"):
        pattern, address = _v6(token[1:-1]), _v6(text)
        return pattern is not None and pattern == address
    return token.lower() == text.lower()


def _masked_match(token: str, host: Host) -> bool:
    net, mask_text = _split_at(token, "/")
    mask = mask_text or ""
    address = _mapped_to_v4(host.hostaddr)
    if net.startswith("["):
        pattern, value = _v6(net.strip("[]")), _v6(address)
        if pattern is None or value is None or not mask.isdigit() or int(mask) > 128:
            return False
        drop = 128 - int(mask)
        return pattern >> drop == value >> drop
    value, network = _dot_quad(address), _dot_quad(net)
    if value is None or network is None:
        return False
    if "." in mask:
        bits = _dot_quad(mask)
        if bits is None or bits == V4_MAX:
            return False
    elif mask.isdigit() and 1 <= int(mask) <= 32:
        bits = (V4_MAX << (32 - int(mask))) & V4_MAX
    else:
        return False  # /0 and out-of-range lengths match nothing (parse_hosts_access refuses them)
    return value & bits == network


ListReader = Callable[[str], "list[str] | None"]


def host_match(token: str, host: Host, lists: ListReader = read_host_list, depth: int = 0) -> bool:
    """hosts_access.c host_match(): one host pattern against one end of the connection."""
    upper = token.upper()
    if token.startswith("@"):
        return False  # NIS netgroups: innetgr() with no NIS domain (and the name unknown) says no
    if token.startswith("/"):
        patterns = lists(token) if depth < 8 else None
        return any(host_match(item, host, lists, depth + 1) for item in patterns or ())
    if upper == "KNOWN":
        return host.hostaddr.lower() != UNKNOWN and host.name_known
    if upper == "LOCAL":
        return host.name_known and "." not in host.hostname
    if _split_at(token, "/")[1] is not None:
        return _masked_match(token, host)
    return string_match(token, host.hostaddr) or (_not_inaddr(token) and string_match(token, host.hostname))


def daemon_matches(token: str, request: Request, lists: ListReader = read_host_list) -> bool:
    """server_match(): `daemon` or `daemon@host` (host against the server end)."""
    name, host = split_pattern(token)
    return string_match(name, request.daemon) and (host is None or host_match(host, request.server, lists))


def client_matches(token: str, request: Request, lists: ListReader = read_host_list) -> bool:
    """client_match(): `host` or `user@host` (user against the ident answer, "unknown" without one)."""
    user, host = split_pattern(token)
    if host is None:
        return host_match(token, request.client, lists)
    return host_match(host, request.client, lists) and string_match(user, request.user or UNKNOWN)


# ---------------------------------------------------------------------------------------- evaluation


def expand(text: str, request: Request) -> str:
    """percent_x(): %a %A %c %d %h %H %n %N %p %r %R %s %u %% (unsafe characters become '_')."""
    client, server = request.client, request.server
    user = request.user or UNKNOWN
    client_info = f"{user}@{client.hostinfo}" if user != UNKNOWN else client.hostinfo
    server_info = (f"{request.daemon}@{server.hostinfo}" if server.hostinfo.lower() != UNKNOWN
                   else request.daemon)
    values = {
        "a": client.hostaddr, "A": server.hostaddr, "c": client_info, "d": request.daemon,
        "h": client.hostinfo, "H": server.hostinfo, "n": client.hostname, "N": server.hostname,
        "p": str(request.pid), "r": str(client.port or 0), "R": str(server.port or 0), "s": server_info,
        "u": user, "%": "%",
    }
    out: list[str] = []
    index = 0
    while index < len(text):
        if text[index] == "%" and index + 1 < len(text):
            value = values.get(text[index + 1], "")
            out.append("".join(c if c in PERCENT_SAFE else "_" for c in value))
            index += 2
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


@dataclass(frozen=True)
class Applied:
    """An option of the matched rule as tcpd applies it (``expanded`` after % expansion, if any)."""

    option: Option
    expanded: str | None


@dataclass(frozen=True)
class Decision:
    access: Literal["granted", "denied", "delegated"]
    rule: Rule | None  # the first matching rule; None: no rule matched (granted)
    options: tuple[Applied, ...] = ()
    reason: str = ""
    at_run_time: tuple[str, ...] = ()  # what only the real tcpd decides (aclexec runs a command)

    @property
    def granted(self) -> bool:
        return self.access == "granted"


def account_problem(option: Option) -> str | None:
    """`user name[.group]` / `group name`: tcpd fails (and denies) when the account does not exist."""
    assert option.value is not None
    user, _dot, group = option.value.partition(".") if option.keyword == "user" else ("", "", option.value)
    try:
        if user:
            pwd.getpwnam(user)
    except KeyError:
        return f'unknown user: "{user}"'
    try:
        if group:
            grp.getgrnam(group)
    except KeyError:
        return f'unknown group: "{group}"'
    return None


def _apply_options(rule: Rule, table_verdict: Literal["granted", "denied"], request: Request) -> Decision:
    access: Literal["granted", "denied", "delegated"] = table_verdict
    applied: list[Applied] = []
    later: list[str] = []
    reason = f"{rule.file} line {rule.end_line}"
    for option in rule.options:
        expands = OPTIONS[option.keyword][2]
        expanded = expand(option.value, request) if expands and option.value is not None else None
        applied.append(Applied(option, expanded))
        if option.keyword in ("user", "group"):
            problem = account_problem(option)
            if problem:
                return Decision("denied", rule, tuple(applied), f"{reason}: {problem}", tuple(later))
        elif option.keyword == "allow":
            access = "granted"
        elif option.keyword == "deny":
            access = "denied"
        elif option.keyword == "twist":
            access = "delegated"
        elif option.keyword == "aclexec":
            later.append(f"aclexec {option.value}: tcpd grants only if this command exits 0")
    return Decision(access, rule, tuple(applied), reason, tuple(later))


def evaluate(allow: HostsFile, deny: HostsFile, request: Request, lists: ListReader = read_host_list) -> Decision:
    """hosts_access(): the first matching rule of hosts.allow grants, then of hosts.deny denies, else granted;
    the matched rule's options may still grant, deny or delegate (twist)."""
    tables: tuple[tuple[HostsFile, Literal["granted", "denied"]], ...] = ((allow, "granted"), (deny, "denied"))
    for table, verdict in tables:
        for rule in table.rules:
            if rule.daemons.matches(lambda token: daemon_matches(token, request, lists)) and rule.clients.matches(
                lambda token: client_matches(token, request, lists)
            ):
                return _apply_options(rule, verdict, request)
    return Decision("granted", None, reason="no rule matched")


# ------------------------------------------------------------------------- addresses a client list admits


def union(a: Spans, b: Spans) -> Spans:
    return {family: merge_spans(a.get(family, []) + b.get(family, [])) for family in (4, 6)}


def difference(a: Spans, b: Spans) -> Spans:
    """a minus b, range by range (both sorted and merged)."""
    out: Spans = {}
    for family in (4, 6):
        result: list[tuple[int, int]] = []
        cuts = b.get(family, [])
        for first, last in a.get(family, []):
            start = first
            for cut_first, cut_last in cuts:
                if cut_last < start or cut_first > last:
                    continue
                if cut_first > start:
                    result.append((start, cut_first - 1))
                start = cut_last + 1
                if start > last:
                    break
            if start <= last:
                result.append((start, last))
        out[family] = result
    return out


def intersect(a: Spans, b: Spans) -> Spans:
    return difference(a, difference(a, b))


def is_empty(spans: Spans) -> bool:
    return not spans.get(4) and not spans.get(6)


EMPTY: Spans = {4: [], 6: []}
MAX_SPANS = 4096  # a pattern that needs more separate ranges than this is not turned into addresses


@dataclass
class Admitted:
    """Addresses a client list admits when names are unknown, and why that is not the whole story."""

    spans: Spans = field(default_factory=lambda: {4: [], 6: []})
    reasons: list[str] = field(default_factory=list)


def _glob_v4(pattern: str) -> list[tuple[int, int]] | None:
    """IPv4 addresses whose dotted text matches a * ? pattern (case-insensitive), as ranges; None when there
    would be more than MAX_SPANS. Walks the octets with the pattern's NFA, sharing equal sub-trees."""
    pattern = pattern.lower()
    size = len(pattern)

    def closure(states: frozenset[int]) -> frozenset[int]:
        out = set(states)
        for state in sorted(states):
            while state < size and pattern[state] == "*":
                state += 1
                out.add(state)
        return frozenset(out)

    def step(states: frozenset[int], text: str) -> frozenset[int]:
        for char in text:
            moved = set()
            for state in states:
                if state < size and pattern[state] == "*":
                    moved.add(state)
                elif state < size and (pattern[state] == "?" or pattern[state] == char):
                    moved.add(state + 1)
            states = closure(frozenset(moved))
            if not states:
                break
        return states

    memo: dict[tuple[int, frozenset[int]], list[tuple[int, int]] | None] = {}

    def below(depth: int, states: frozenset[int]) -> list[tuple[int, int]] | None:
        """Ranges, relative to the sub-tree's first address, of the addresses under this node."""
        key = (depth, states)
        if key in memo:
            return memo[key]
        width = 256 ** (3 - depth)
        out: list[tuple[int, int]] = []
        for octet in range(256):
            after = step(states, str(octet) + ("." if depth < 3 else ""))
            if not after:
                continue
            if depth == 3:
                if size in after:
                    out.append((octet, octet))
                continue
            if any(state < size and all(c == "*" for c in pattern[state:]) for state in after):
                out.append((octet * width, octet * width + width - 1))
                continue
            child = below(depth + 1, after)
            if child is None:
                memo[key] = None
                return None
            out.extend((octet * width + first, octet * width + last) for first, last in child)
            if len(out) > MAX_SPANS:
                memo[key] = None
                return None
        merged = merge_spans(out)
        memo[key] = merged if len(merged) <= MAX_SPANS else None
        return memo[key]

    return below(0, closure(frozenset({0})))


def _mask_spans(network: int, bits: int) -> list[tuple[int, int]] | None:
    """IPv4 addresses with (address & bits) == network, for any mask (libwrap allows holes in it)."""
    low = 0
    while low < 32 and not bits >> low & 1:
        low += 1
    free = [bit for bit in range(low, 32) if not bits >> bit & 1]
    if 1 << len(free) > MAX_SPANS:
        return None
    spans = []
    for combination in range(1 << len(free)):
        base = network
        for index, bit in enumerate(free):
            if combination >> index & 1:
                base |= 1 << bit
        spans.append((base, base + (1 << low) - 1))
    return merge_spans(spans)


def _v6_text_could_match(token: str) -> bool:
    """Whether a wildcard could match some IPv6 address text (dots only appear in ::a.b.c.d forms)."""
    return set(token.lower()) <= set("0123456789abcdef:*?") and set(token) != {"*"}


def host_addresses(token: str, lists: ListReader = read_host_list, depth: int = 0) -> Admitted:
    """The addresses `token` matches for a client known by address only (host_match with name unknown)."""
    upper = token.upper()
    if upper == "ALL":
        return Admitted(dict(FULL))
    if upper in ("KNOWN", "LOCAL", "PARANOID"):
        return Admitted(reasons=[f"{token} needs the client's host name: portward matches addresses only, so it is "
                                 "taken as matching no address (as tcpdmatch does for an address)"])
    if upper == "UNKNOWN":
        return Admitted(dict(FULL), [f"{token} matches clients whose name cannot be looked up: taken as matching "
                                     "every address (as tcpdmatch does for an address)"])
    if token.startswith("@"):
        return Admitted(reasons=[f"netgroup {token}: NIS netgroups are host names, not addresses — taken as "
                                 "matching no address"])
    if token.startswith("/"):
        return _file_addresses(token, lists, depth)
    if _split_at(token, "/")[1] is not None:
        return _masked_addresses(token)
    result = Admitted(reasons=[])
    if token.startswith("[") and token.endswith("]"):
        value = _v6(token[1:-1])
        result.spans = {4: [], 6: [(value, value)] if value is not None else []}
        return result
    v4 = _string_v4(token)
    if v4 is None:
        result.reasons.append(f"{token!r} would match more than {MAX_SPANS} separate IPv4 ranges: not imported")
        v4 = []
    v6: list[tuple[int, int]] = []
    if "*" in token or "?" in token:
        if set(token) == {"*"}:
            v6 = [(0, V6_MAX)]
        elif _v6_text_could_match(token):
            result.reasons.append(f"wildcard {token!r} on IPv6 address text cannot be turned into networks: taken as "
                                  "matching no IPv6 address")
    elif ":" in token:  # a plain IPv6 address in a /file list is compared as text, like tcpd does
        value = _v6(token)
        if value is not None and socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big")) == token.lower():
            v6 = [(value, value)]
    result.spans = {4: v4, 6: v6}
    by_name = _not_inaddr(token) and string_match(token, UNKNOWN)
    if by_name:
        result.spans = dict(FULL)
    if (by_name and {4: v4, 6: v6} != FULL) or (re.search("[A-Za-z]", token) and ":" not in token):
        result.reasons.append(f"{token!r} is matched against host names too: portward matches addresses only, so "
                              "it is taken as for a client whose name cannot be looked up")
    return result


def _string_v4(token: str) -> list[tuple[int, int]] | None:
    """IPv4 addresses whose text string_match() accepts for `token` (wildcard, .suffix, prefix., exact)."""
    if "*" in token or "?" in token:
        return _glob_v4(token)
    if token.startswith("."):
        return _glob_v4("?*" + token)
    if token.endswith("."):
        return _glob_v4(token + "*")
    if _DOTTED.fullmatch(token):
        value = _v4(token)
        return [(value, value)]
    return []


def _masked_addresses(token: str) -> Admitted:
    net, mask = _split_at(token, "/")
    assert mask is not None
    if net.startswith("["):
        value = _v6(net.strip("[]"))
        if value is None or not mask.isdigit() or int(mask) > 128:
            return Admitted()
        host_bits = 128 - int(mask)
        first = value >> host_bits << host_bits
        return Admitted({4: [], 6: [(first, first | ((1 << host_bits) - 1))]})
    network = _dot_quad(net)
    if network is None:
        return Admitted()
    if "." in mask:
        bits = _dot_quad(mask)
        if bits is None or bits == V4_MAX:
            return Admitted()
    elif mask.isdigit() and 1 <= int(mask) <= 32:
        bits = (V4_MAX << (32 - int(mask))) & V4_MAX
    else:
        return Admitted()
    if network & ~bits & V4_MAX:
        return Admitted()
    spans = _mask_spans(network, bits)
    if spans is None:
        return Admitted(reasons=[f"{token}: the mask has holes that make more than {MAX_SPANS} ranges: not imported"])
    return Admitted({4: spans, 6: []})


def _file_addresses(token: str, lists: ListReader, depth: int) -> Admitted:
    patterns = lists(token) if depth < 8 else None
    if patterns is None:
        return Admitted(reasons=[f"{token} does not exist (or nests too deep): it matches nothing"])
    result = Admitted()
    for item in patterns:
        part = host_addresses(item, lists, depth + 1)
        result.spans = union(result.spans, part.spans)
        result.reasons += [f"{token}: {reason}" for reason in part.reasons]
    return result


def client_addresses(clients: PatternList, lists: ListReader = read_host_list) -> Admitted:
    """What a client list admits by address: items minus the EXCEPT list, recursively."""
    result = Admitted()
    for token in clients.items:
        user, host = split_pattern(token)
        if host is None:
            part = host_addresses(token, lists)
        else:
            part = host_addresses(host, lists)
            if not string_match(user, UNKNOWN):
                part.spans = dict(EMPTY)
            if user.upper() != "ALL":
                part.reasons.append(f"{token!r} needs the client's user name (ident): taken as for a client whose "
                                    "user is unknown")
        result.spans = union(result.spans, part.spans)
        result.reasons += part.reasons
    if clients.exceptions:
        excepted = client_addresses(clients.exceptions, lists)
        result.spans = difference(result.spans, excepted.spans)
        result.reasons += excepted.reasons
    return result


def to_networks(spans: Spans) -> list[str]:
    """Ranges -> the fewest CIDRs, v4 first; one address is written without /32 or /128."""
    out: list[str] = []
    for family, kind in ((4, ipaddress.IPv4Address), (6, ipaddress.IPv6Address)):
        for first, last in spans.get(family, []):
            for net in ipaddress.summarize_address_range(kind(first), kind(last)):
                out.append(str(net.network_address) if net.num_addresses == 1 else str(net))
    return out
