"""knockd.conf, read as knockd 0.8 reads it, with every problem reported at FILE:LINE: key.

    [options]
        UseSyslog
        LogFile = /var/log/knockd.log
    [openSSH]
        sequence      = 7000,8000:udp,9000
        seq_timeout   = 5
        tcpflags      = syn,!ack
        start_command = nft add element inet filter ssh_ok { %IP% }
        cmd_timeout   = 10
        stop_command  = nft delete element inet filter ssh_ok { %IP% }

Keys are case-insensitive and a value is the rest of the line after the first `=`, as in knockd. Where
knockd is lax this reader says so instead: unknown keys, ports out of range, `seq_timeout = 5s` (knockd's
atoi() makes that 5, `5s` here is an error), keys given twice. Text after whitespace and `#` is a comment
(knockd's atoi() ignored it, and the shell it ran commands through did too).

Commands are never given to a shell: they are split like a shell splits words (shlex), then `%IP%` is
replaced in each word. A command using shell syntax (`;`, `|`, `>`, `$VAR`, backquotes ...) is refused
here: write `sh -c '...'` explicitly if one is really needed.

Pure: `parse_knockd_conf(text)` and `parse_one_time_sequences(text)` touch no file; `read_knockd_conf(path)`
reads the config and checks its one-time sequence files.

Import (`portward import --from knockd`): `read_policy(paths)` turns each door into a `[[knock]]` door that
opens in the kernel what its start_command opened; `read_command(text)` says what an iptables, ip6tables,
nft or ufw command does to the firewall (it never runs it), or why portward cannot tell.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import shlex
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from portward.dialects import Converted, comment_safe, doors_policy_text, read_input, toml_lines
from portward.errors import InputError, Problem, ProblemsError

__all__ = [
    "CMD_TIMEOUT_DEFAULT",
    "SEQ_MAX",
    "SEQ_TIMEOUT_DEFAULT",
    "TCP_FLAG_BITS",
    "FirewallChange",
    "KnockPort",
    "KnockdConfig",
    "KnockdConfigError",
    "KnockdDoor",
    "KnockdOptions",
    "NotARule",
    "OneTimeSequence",
    "TcpFlags",
    "command_argv",
    "parse_knockd_conf",
    "parse_one_time_sequences",
    "parse_sequence",
    "read_command",
    "read_knockd_conf",
    "read_one_time_sequences",
    "read_policy",
]

SEQ_TIMEOUT_DEFAULT = 25  # knockd's defaults (knockd.c SEQ_TIMEOUT, CMD_TIMEOUT), in seconds
CMD_TIMEOUT_DEFAULT = 10
SEQ_MAX = 32  # knockd refuses longer sequences
MAX_TIMEOUT = 7 * 24 * 3600
MAX_PROBLEMS = 20
TCP_FLAG_BITS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20}

Proto = Literal["tcp", "udp"]
T = TypeVar("T")


class KnockPort(NamedTuple):
    port: int
    proto: Proto

    def __str__(self) -> str:
        return f"{self.port}:{self.proto}"


@dataclass(frozen=True)
class TcpFlags:
    """knockd's `tcpflags`: every flag in ``required`` set and every flag in ``forbidden`` clear.

    A TCP packet that does not match is ignored by the door: it neither advances nor resets a knock.
    """

    required: int = 0
    forbidden: int = 0

    def matches(self, flags: int) -> bool:
        return flags & self.required == self.required and not flags & self.forbidden

    def __str__(self) -> str:
        names = [name for name, bit in TCP_FLAG_BITS.items() if self.required & bit]
        names += [f"!{name}" for name, bit in TCP_FLAG_BITS.items() if self.forbidden & bit]
        return ",".join(names)


@dataclass(frozen=True)
class KnockdOptions:
    use_syslog: bool = False
    log_file: str | None = None
    pid_file: str | None = None
    interface: str | None = None  # knockd's only interface; here: the doors that name none listen on it only


@dataclass(frozen=True)
class KnockdDoor:
    """One `[name]` section. ``sequence`` is empty when the door takes ``one_time_sequences`` instead.

    Commands are the configured text (None: not given; "": given empty, which runs nothing, as in knockd).
    ``line`` is the section's line, ``key_lines`` the line of each key given (canonical key names).
    """

    name: str
    sequence: tuple[KnockPort, ...] = ()
    seq_timeout: int = SEQ_TIMEOUT_DEFAULT
    tcpflags: TcpFlags = TcpFlags()
    start_command: str | None = None
    start_command_6: str | None = None
    stop_command: str | None = None
    stop_command_6: str | None = None
    cmd_timeout: int = CMD_TIMEOUT_DEFAULT
    one_time_sequences: str | None = None
    target: str | None = None
    interface: str | None = None
    line: int = 0
    key_lines: Mapping[str, int] = field(default_factory=dict)

    def command(self, kind: Literal["start", "stop"], family: int) -> str | None:
        """The command to run for a knocker of this family: `*_6` for IPv6 when given (even empty), else the
        IPv4 one, as knockd does. None or "" means nothing to run."""
        if kind == "start":
            return self.start_command_6 if family == 6 and self.start_command_6 is not None else self.start_command
        return self.stop_command_6 if family == 6 and self.stop_command_6 is not None else self.stop_command


@dataclass(frozen=True)
class KnockdConfig:
    options: KnockdOptions
    doors: list[KnockdDoor]
    file: str = "knockd.conf"


@dataclass(frozen=True)
class OneTimeSequence:
    """One usable line of a one_time_sequences file; ``offset`` is the byte offset of the line's first
    character, which knockd overwrites with `#` once the sequence has been used."""

    line: int
    offset: int
    sequence: tuple[KnockPort, ...]


class KnockdConfigError(ProblemsError):
    """Every problem found in a knockd.conf (or one-time sequence file), each at FILE:LINE: key."""

    what = "invalid knockd configuration"


class _Bad(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# canonical key <- every spelling knockd accepts (upper-cased by knockd before comparing)
_DOOR_KEYS = {
    "sequence": "sequence",
    "one_time_sequences": "one_time_sequences",
    "seq_timeout": "seq_timeout",
    "timeout": "seq_timeout",  # knockd's older name
    "tcpflags": "tcpflags",
    "start_command": "start_command",
    "command": "start_command",  # knockd's older name
    "start_command_6": "start_command_6",
    "command_6": "start_command_6",
    "stop_command": "stop_command",
    "stop_command_6": "stop_command_6",
    "cmd_timeout": "cmd_timeout",
    "target": "target",
    "interface": "interface",
}
_OPTION_KEYS = {"usesyslog": "usesyslog", "logfile": "logfile", "pidfile": "pidfile", "interface": "interface"}
_COMMAND_KEYS = frozenset({"start_command", "start_command_6", "stop_command", "stop_command_6"})
_NUMBER = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit() also accepts '²'
_INLINE_COMMENT = re.compile(r"\s#.*\Z", re.DOTALL)
_TRUE = frozenset({"", "yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})


# --- values -------------------------------------------------------------------------------------


def parse_sequence(text: str) -> tuple[KnockPort, ...]:
    """`7000,8000:udp,9000:tcp` -> knocks (TCP when no protocol is given). ValueError says what is wrong."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError("empty sequence — e.g. 7000,8000:udp,9000")
    if len(items) > SEQ_MAX:
        raise ValueError(f"{len(items)} ports: knockd takes at most {SEQ_MAX}")
    knocks = []
    for item in items:
        port_text, colon, proto_text = item.partition(":")
        port_text, proto = port_text.strip(), proto_text.strip().lower() if colon else "tcp"
        if not item:
            raise ValueError("empty item between commas — write PORT or PORT:tcp or PORT:udp")
        if not _NUMBER.fullmatch(port_text) or not 0 < int(port_text) < 65536:
            raise ValueError(f"{item!r}: the port must be 1-65535 — write PORT or PORT:tcp or PORT:udp")
        if proto not in ("tcp", "udp"):
            raise ValueError(f"{item!r}: protocol must be tcp or udp")
        knocks.append(KnockPort(int(port_text), "udp" if proto == "udp" else "tcp"))
    return tuple(knocks)


def _seconds(text: str, minimum: int) -> int:
    if not _NUMBER.fullmatch(text) or not minimum <= int(text) <= MAX_TIMEOUT:
        raise _Bad(f"{text!r} is not a whole number of seconds ({minimum}-{MAX_TIMEOUT}) — e.g. 10")
    return int(text)


def _tcpflags(text: str) -> TcpFlags:
    required = forbidden = 0
    for raw in text.split(","):
        item = raw.strip().lower()
        negated = item.startswith("!")
        name = item[1:].strip() if negated else item
        bit = TCP_FLAG_BITS.get(name)
        if bit is None:
            raise _Bad(f"unknown flag {raw.strip()!r} — use fin, syn, rst, psh, ack, urg, each maybe with ! before it")
        if (required if negated else forbidden) & bit:
            raise _Bad(f"{name} is both required and excluded — keep one of {name} and !{name}")
        if negated:
            forbidden |= bit
        else:
            required |= bit
    return TcpFlags(required, forbidden)


_SHELL_ONLY = {
    ";": "';'",
    "|": "'|'",
    "&": "'&'",
    "<": "'<'",
    ">": "'>'",
    "(": "'('",
    ")": "')'",
    "`": "backquotes",
    "$": "'$' expansion",
    "*": "a '*' glob",
    "?": "a '?' glob",
    "[": "a '[' glob",
}


def _scan(command: str) -> tuple[str, str | None]:
    """(``command`` without its comment, the first shell syntax in it or None), quoting as sh does.

    A comment starts at an unquoted `#` that begins a word -- shlex's own comment handling also cuts
    `a#b`, which sh does not. Shell syntax is what sh would act on: outside single quotes.
    """
    quote = ""
    escaped = False
    previous = " "
    found: str | None = None
    for index, char in enumerate(command):
        if escaped:  # an escaped character (even a space) is part of a word: a `#` after it is no comment
            escaped = False
            previous = "x"
            continue
        if quote == "'":
            quote = "" if char == "'" else quote
        elif char == "\\":
            escaped = True
        elif quote == '"':
            if char == '"':
                quote = ""
            elif char in "$`" and found is None:
                found = _SHELL_ONLY[char]
        elif char in "'\"":
            quote = char
        elif char == "#" and previous.isspace():
            return command[:index], found
        elif char == "~" and previous.isspace() and found is None:
            found = "'~' expansion"
        elif char in _SHELL_ONLY and found is None:
            found = _SHELL_ONLY[char]
        previous = char
    return command, found


def command_argv(command: str, address: str) -> list[str]:
    """The argv of a configured command for one knocker: words as sh splits them, `%IP%` replaced in each."""
    return [word.replace("%IP%", address) for word in shlex.split(_scan(command)[0])]


def _command(text: str) -> str:
    code, syntax = _scan(text)
    try:
        words = shlex.split(code)
    except ValueError as error:  # "No closing quotation", "No escaped character"
        raise _Bad(f"cannot split into words ({error}) — check the quotes") from None
    if syntax is not None:
        raise _Bad(
            f"uses shell syntax ({syntax}) but commands run without a shell — "
            "write it as sh -c '...' if a shell is really needed"
        )
    if text.strip() and not words:
        raise _Bad("nothing but a comment — leave the value empty to run nothing")
    return text


def _interface(text: str) -> str:
    # the kernel's dev_valid_name(), and nothing nft would need to quote
    if (
        not 0 < len(text.encode()) < 16
        or text in (".", "..")
        or any(c in text for c in '/:"\\')
        or any(c.isspace() or not c.isprintable() for c in text)
    ):
        raise _Bad(f"{text!r} is not an interface name (1-15 characters, no '/', ':' or spaces) — e.g. eth0")
    return text


def _sequence(text: str) -> tuple[KnockPort, ...]:
    try:
        return parse_sequence(text)
    except ValueError as error:
        raise _Bad(str(error)) from None


def _path(text: str) -> str:
    if not text or "\0" in text:
        raise _Bad("needs the path of a file of sequences, one per line — e.g. /etc/knockd/ssh_sequences")
    return text


def _target(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Bad(f"{text!r} is not an IPv4 or IPv6 address — knockd matches the knock's destination") from None


# --- the file -----------------------------------------------------------------------------------


@dataclass
class _Section:
    name: str
    line: int
    values: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # canonical key -> (line, key, value)


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, line: int, key: str, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(self.source, line, key, message))
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append(Problem(self.source, line, "", "too many problems, stopped listing them here"))

    def read(self, text: str) -> KnockdConfig:
        options: list[_Section] = []
        doors: list[_Section] = []
        names: dict[str, int] = {}
        current: _Section | None = None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                if not line.endswith("]") or len(line) < 3 or not line[1:-1].strip():
                    self.problem(number, "", f"bad section header {line!r} — write [options] or [DoorName]")
                    current = None
                    continue
                name = line[1:-1].strip()
                current = _Section(name, number)
                if name.lower() == "options":
                    options.append(current)
                else:
                    if name in names:
                        self.problem(number, "", f"door [{name}] is already defined at line {names[name]} — rename it")
                    names.setdefault(name, number)
                    doors.append(current)
                continue
            key_text, equals, value = line.partition("=")
            key_text = key_text.strip()
            if current is None:
                self.problem(number, key_text, "outside any section — put it under [options] or a [DoorName]")
                continue
            self.directive(current, current in options, number, key_text, value.strip(), bool(equals))
        if not doors:
            self.problem(0, "", "no door defined — add a section such as [openSSH] with a sequence")
        config = KnockdConfig(self.options(options), [door for door in map(self.door, doors) if door is not None])
        return KnockdConfig(config.options, config.doors, self.source)

    def directive(
        self, section: _Section, is_options: bool, number: int, key_text: str, value: str, equals: bool
    ) -> None:
        keys = _OPTION_KEYS if is_options else _DOOR_KEYS
        canonical = keys.get(key_text.lower())
        if canonical is None:
            where = "[options]" if is_options else "a door"
            close = difflib.get_close_matches(key_text.lower(), list(keys), n=1)
            other = _DOOR_KEYS if is_options else _OPTION_KEYS
            if close:
                hint = f" — did you mean {close[0]}?"
            elif key_text.lower() in other:
                hint = " — it belongs in " + ("a door section" if is_options else "[options]")
            else:
                hint = " — known keys: " + ", ".join(sorted(set(keys.values())))
            self.problem(number, key_text, f"not a knockd key in {where}{hint}")
            return
        if not equals and canonical != "usesyslog":
            self.problem(number, key_text, f"expected {key_text} = VALUE")
            return
        if canonical in section.values:
            first = section.values[canonical][0]
            self.problem(number, key_text, f"given twice in [{section.name}] (first at line {first}) — keep one")
            return
        if canonical not in _COMMAND_KEYS:
            value = _INLINE_COMMENT.sub("", value).strip()
        section.values[canonical] = (number, key_text, value)

    def options(self, sections: list[_Section]) -> KnockdOptions:
        values: dict[str, tuple[int, str, str]] = {}
        for section in sections:
            for key, entry in section.values.items():
                if key in values:
                    self.problem(entry[0], entry[1], f"given twice in [options] (first at line {values[key][0]})")
                values.setdefault(key, entry)
        use_syslog = False
        if "usesyslog" in values:
            number, key, text = values["usesyslog"]
            if text.lower() in _TRUE:
                use_syslog = True
            elif text.lower() not in _FALSE:
                self.problem(number, key, f"{text!r}: write UseSyslog alone (or = yes / no)")
        paths = {}
        for name in ("logfile", "pidfile"):
            if name in values:
                number, key, text = values[name]
                if not text or "\0" in text:
                    self.problem(number, key, "needs a file path — e.g. /var/log/knockd.log")
                else:
                    paths[name] = text
        interface = None
        if "interface" in values:
            number, key, text = values["interface"]
            try:
                interface = _interface(text)
            except _Bad as bad:
                self.problem(number, key, bad.message)
        return KnockdOptions(use_syslog, paths.get("logfile"), paths.get("pidfile"), interface)

    def door(self, section: _Section) -> KnockdDoor | None:
        before = len(self.problems)
        values = section.values

        def get(key: str, convert: Callable[[str], T], default: T) -> T:
            if key not in values:
                return default
            number, key_text, text = values[key]
            try:
                return convert(text)
            except _Bad as bad:
                self.problem(number, key_text, bad.message)
                return default

        door = KnockdDoor(
            name=section.name,
            sequence=get("sequence", _sequence, ()),
            seq_timeout=get("seq_timeout", lambda text: _seconds(text, 1), SEQ_TIMEOUT_DEFAULT),
            tcpflags=get("tcpflags", _tcpflags, TcpFlags()),
            start_command=get("start_command", _command, None),
            start_command_6=get("start_command_6", _command, None),
            stop_command=get("stop_command", _command, None),
            stop_command_6=get("stop_command_6", _command, None),
            cmd_timeout=get("cmd_timeout", lambda text: _seconds(text, 0), CMD_TIMEOUT_DEFAULT),
            one_time_sequences=get("one_time_sequences", _path, None),
            target=get("target", _target, None),
            interface=get("interface", _interface, None),
            line=section.line,
            key_lines={key: entry[0] for key, entry in values.items()},
        )
        if "sequence" in values and "one_time_sequences" in values:
            number, key_text, _text = values["one_time_sequences"]
            self.problem(number, key_text, "a door takes sequence or one_time_sequences, not both — remove one")
        elif "sequence" not in values and "one_time_sequences" not in values:
            self.problem(section.line, "sequence", f"door [{section.name}] has no knock sequence — add sequence = …")
        return door if len(self.problems) == before else None


def parse_knockd_conf(text: str, filename: str = "knockd.conf") -> KnockdConfig:
    """The doors and options of knockd.conf text; KnockdConfigError lists every problem found."""
    reader = _Reader(filename)
    config = reader.read(text)
    if reader.problems:
        raise KnockdConfigError(sorted(reader.problems, key=lambda problem: problem.line))
    return config


def parse_one_time_sequences(text: str, filename: str = "one_time_sequences") -> list[OneTimeSequence]:
    """The unused sequences of a one_time_sequences file, in file order (lines starting with `#` are used
    or comments, as in knockd). KnockdConfigError for a line that is not a sequence."""
    problems: list[Problem] = []
    found = []
    offset = 0
    for number, raw in enumerate(text.splitlines(keepends=True), 1):
        line = _INLINE_COMMENT.sub("", raw.strip()).strip()
        if line and not line.startswith("#"):
            try:
                found.append(OneTimeSequence(number, offset, parse_sequence(line)))
            except ValueError as error:
                if len(problems) < MAX_PROBLEMS:
                    problems.append(Problem(filename, number, "sequence", str(error)))
        offset += len(raw.encode())
    if problems:
        raise KnockdConfigError(problems)
    return found


def read_one_time_sequences(path: str | Path) -> list[OneTimeSequence]:
    try:
        text = Path(path).read_bytes().decode()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise InputError(f"{path}: cannot read one-time sequences: {reason} — check the path") from None
    return parse_one_time_sequences(text, str(path))


def read_knockd_conf(path: str | Path) -> KnockdConfig:
    """Read and check a knockd.conf; a relative one_time_sequences path is taken from the config's directory
    (knockd used its working directory, which is / once it daemonizes)."""
    source = Path(path)
    try:
        text = source.read_bytes().decode()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise InputError(f"{path}: cannot read: {reason} — check the path (-c FILE)") from None
    config = parse_knockd_conf(text, str(path))
    problems: list[Problem] = []
    doors = []
    for door in config.doors:
        if door.one_time_sequences is not None:
            sequences_path = source.parent / door.one_time_sequences
            line = door.key_lines.get("one_time_sequences", door.line)
            try:
                if not read_one_time_sequences(sequences_path):
                    problems.append(
                        Problem(str(path), line, "one_time_sequences", f"{sequences_path} has no unused sequence left")
                    )
            except KnockdConfigError as error:
                problems.extend(error.problems)
            except InputError as error:
                problems.append(Problem(str(path), line, "one_time_sequences", str(error)))
            door = KnockdDoor(**{**door.__dict__, "one_time_sequences": str(sequences_path)})
        doors.append(door)
    if problems:
        raise KnockdConfigError(problems)
    return KnockdConfig(config.options, doors, config.file)


# --- import: what a door's command does to the firewall --------------------------------------------
#
# `portward import --from knockd` turns doors into `[[knock]]` doors, which open ports in the kernel.  A
# door's start_command says which: it is read as the iptables, nft or ufw command it is (never run), and
# the port it admits the knocker (%IP%) to becomes the door's `open`.

KNOCKER = {4: "198.19.255.254", 6: "2001:db8:ffff::fe"}  # stands for %IP% while iptables words are read
EVERY_PORT = ("1-65535/tcp", "1-65535/udp", "1-65535/sctp")
PORT_PROTOCOLS = ("tcp", "udp", "sctp")
OPEN_FOR_DEFAULT = 30  # KnockDoor's default
KNOCK_SEQ_MAX = 16  # KnockDoor's longest sequence
Json = dict[str, Any]


class NotARule(Exception):
    """A command that is not a firewall change portward can read; the message says what it is instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FirewallChange:
    """What one knockd command does to the firewall, read from its words.

    ``opens`` is False for a command that takes access back (iptables -D, ufw delete, nft delete).
    ``identity`` is the rule without its verb and position, so a stop command (or a closing door) can be
    matched with the start command it undoes; () matches nothing (a delete by rule number or handle).
    ``ports`` is None when the command adds the knocker to an nft set, whose rules are not in knockd.conf.
    """

    tool: str
    opens: bool
    identity: tuple[str, ...]
    ports: tuple[str, ...] | None = None
    interface: str | None = None
    timeout: int | None = None
    where: str = ""
    remarks: tuple[str, ...] = ()

    def undoes(self, other: FirewallChange) -> bool:
        """True when this command takes back what ``other`` opened."""
        if self.opens or not other.opens or self.tool != other.tool:
            return False
        if self.identity and self.identity == other.identity:
            return True
        return self.ports is not None and self.ports == other.ports and self.where == other.where


def read_command(command: str) -> FirewallChange:
    """What a start/stop command does, or NotARule saying why portward cannot tell."""
    try:
        words = shlex.split(_scan(command)[0])
    except ValueError as error:  # parse_knockd_conf refuses these; a caller may not have used it
        raise NotARule(f"it cannot be split into words ({error})") from None
    while words and Path(words[0]).name == "sudo":
        words = words[1:]
    if not words:
        raise NotARule("it runs nothing")
    program = Path(words[0]).name
    reader = _COMMAND_READERS.get(program)
    if reader is None:
        raise NotARule(f"{program} is not iptables, ip6tables, nft or ufw")
    return reader(words[1:])


# iptables / ip6tables: the rule words are read by the iptables-save reader, as `-A INPUT <words>`

_IPT_VERBS = {"-A": True, "--append": True, "-I": True, "--insert": True, "-D": False, "--delete": False}
_IPT_FLAGS = frozenset({"-v", "--verbose", "-n", "--numeric", "-x", "--exact", "--line-numbers"})


def _iptables(tool: str, family: int) -> Callable[[list[str]], FirewallChange]:
    def read(words: list[str]) -> FirewallChange:
        return _read_iptables(tool, family, words)

    return read


def _read_iptables(tool: str, family: int, words: list[str]) -> FirewallChange:
    from portward.dialects.iptables import IptablesSaveError, parse_save

    table, verb, chain, number, rest = "filter", None, None, False, []
    index = 0
    while index < len(words):
        word = words[index]
        if word in ("-t", "--table") and index + 1 < len(words):
            table, index = words[index + 1], index + 2
        elif word in ("-w", "--wait", "-W", "--wait-interval"):
            index += 2 if index + 1 < len(words) and words[index + 1].isdigit() else 1
        elif word in _IPT_FLAGS:
            index += 1
        elif word in _IPT_VERBS and verb is None and index + 1 < len(words):
            verb, chain, index = _IPT_VERBS[word], words[index + 1], index + 2
            if word not in ("-A", "--append") and index < len(words) and words[index].isdigit():
                number, index = True, index + 1
        else:
            rest.append(word)
            index += 1
    if verb is None or chain is None:
        raise NotARule(f"this {tool} command neither adds (-A, -I) nor deletes (-D) a rule")
    if table != "filter":
        raise NotARule(f"it changes the {table} table, not filter")
    if chain != "INPUT":
        raise NotARule(f"it changes chain {chain}; portward cannot tell what reaches it (doors open INPUT)")
    if not verb and number:
        return FirewallChange(tool, False, ())
    line = " ".join(_save_word(word.replace("%IP%", KNOCKER[family])) for word in rest)
    try:
        listing = parse_save(f"*filter\n-A INPUT {line}\nCOMMIT\n", family, source=tool)
    except IptablesSaveError as error:
        raise NotARule(f"{tool} would refuse it: {error.problems[0].message}") from None
    rules = [item["rule"]["expr"] for item in listing if "rule" in item]
    if len(rules) != 1:
        raise NotARule("it adds several rules at once")
    return _change(tool, verb, (tool, *rest), rules[0], KNOCKER[family])


def _save_word(word: str) -> str:
    """A word as iptables-save would quote it (double quotes, backslash escapes)."""
    if word and not any(char in word for char in ' \t"\\'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


# nft: `add rule FAMILY TABLE input <statements>`, `add element FAMILY TABLE SET { %IP% ... }`

_NFT_TOKEN = re.compile(r'"[^"]*"|!=|==|[{},;]|[^\s{},;"]+')
_NFT_FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})
_NFT_VERBS = {"add": True, "insert": True, "create": True, "delete": False, "destroy": False}
_NFT_STATEMENTS = frozenset({"counter", "comment", "log", "limit", "accept", "drop", "reject", "return", "continue",
                             "queue"})
_NFT_STARTERS = _NFT_STATEMENTS | {"ip", "ip6", "tcp", "udp", "sctp", "th", "meta", "iifname", "iif", "ct", "jump",
                                   "goto"}


def _read_nft(words: list[str]) -> FirewallChange:
    while words and words[0].startswith("-"):
        if words[0] in ("-c", "--check"):
            raise NotARule("nft --check changes nothing")
        words = words[1:]
    tokens = _NFT_TOKEN.findall(" ".join(words))
    if ";" in tokens:
        raise NotARule("it runs several nft commands")
    if len(tokens) < 2 or tokens[0] not in _NFT_VERBS or tokens[1] not in ("rule", "element"):
        raise NotARule(f"nft {' '.join(tokens[:2])} neither adds nor deletes a rule or a set element")
    opens, kind = _NFT_VERBS[tokens[0]], tokens[1]
    rest = tokens[2:]
    family = rest.pop(0) if rest and rest[0] in _NFT_FAMILIES else "ip"
    if len(rest) < 2:
        raise NotARule(f"nft {tokens[0]} {kind} needs a table and a {'chain' if kind == 'rule' else 'set'}")
    table, name, body = rest[0], rest[1], rest[2:]
    if kind == "element":
        return _nft_element(opens, family, table, name, body)
    if name.lower() != "input":
        raise NotARule(f"it changes chain {name}; portward cannot tell what reaches it (doors open input)")
    if body[:1] == ["handle"] and not opens:
        return FirewallChange("nft", False, ())
    if body[:1] in (["position"], ["index"], ["handle"]):
        body = body[2:]
    exprs = _NftRule(body).exprs()
    return _change("nft", opens, ("nft", family, table, name, *body), exprs, "%IP%")


def _nft_element(opens: bool, family: str, table: str, name: str, body: list[str]) -> FirewallChange:
    if not body or body[0] != "{" or body[-1] != "}":
        raise NotARule("a set element is written { %IP% } — with braces")
    items = body[1:-1]
    if not items or items[0] != "%IP%" or "," in items:
        raise NotARule(f"it adds {' '.join(items) or 'nothing'} to set {name}, not the knocker (%IP%) alone")
    timeout = None
    if len(items) >= 3 and items[1] == "timeout":
        timeout = _nft_seconds(items[2])
    remarks = ("an element with more than the knocker's address (a concatenation)",) if "." in items else ()
    where = f"{family} {table} {name}"
    return FirewallChange("nft", opens, ("nft", family, table, name, "%IP%"), None, None, timeout, where, remarks)


def _nft_seconds(text: str) -> int:
    """nft's time format (`30s`, `1m30s`, `2h`, `1d`, or bare seconds) -> seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0}
    if text.isdigit():
        return int(text)
    parts = re.findall(r"(\d+)(ms|d|h|m|s)", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise NotARule(f"timeout {text!r} is not an nft time such as 30s or 1m")
    return sum(int(number) * units[unit] for number, unit in parts)


class _NftRule:
    """nft rule statements -> the expressions `nft -j` lists for them (the subset knockd commands use)."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.index = 0

    def take(self) -> str:
        if self.index >= len(self.tokens):
            raise NotARule("the nft rule ends in the middle of a statement")
        token = self.tokens[self.index]
        self.index += 1
        return token.strip('"')

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def skip_options(self) -> None:
        while self.peek() is not None and self.peek() not in _NFT_STARTERS:
            self.index += 1

    def value(self) -> Any:
        token = self.take()
        if token != "{":
            return _nft_atom(token)
        items: list[Any] = []
        while (token := self.take()) != "}":
            if token != ",":
                items.append(_nft_atom(token))
        return {"set": items}

    def match(self, left: Json) -> Json:
        op = "=="
        if self.peek() in ("==", "!="):
            op = self.take()
        return {"match": {"op": op, "left": left, "right": self.value()}}

    def exprs(self) -> list[Json]:
        out: list[Json] = []
        while (token := self.peek()) is not None:
            self.index += 1
            following = self.peek()
            if token in ("ip", "ip6", "tcp", "udp", "sctp", "th") and following is not None and following != "flags":
                out.append(self.match({"payload": {"protocol": token, "field": self.take()}}))
            elif token == "tcp" and following == "flags":  # SYN-only: an open port admits new connections anyway
                self.skip_options()
                out.append({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}})
            elif token == "meta":
                out.append(self.match({"meta": {"key": self.take()}}))
            elif token in ("iifname", "iif", "l4proto"):
                out.append(self.match({"meta": {"key": token}}))
            elif token == "ct":
                out.append(self.match({"ct": {"key": self.take()}}))
            elif token in _NFT_STATEMENTS:  # with their options: `counter packets 0 bytes 0`, `reject with …`
                self.skip_options()
                out.append({token: None})
            elif token in ("jump", "goto"):
                out.append({token: {"target": self.take()}})
            else:
                raise NotARule(f"nft rule word {token!r} is not one portward reads")
        return out


def _nft_atom(token: str) -> Any:
    text = token.strip('"')
    if text.isdigit():
        return int(text)
    first, dash, last = text.partition("-")
    if dash and first.isdigit() and last.isdigit():
        return {"range": [int(first), int(last)]}
    return text


# ufw: `ufw [delete] [insert N] allow|limit [in [on IFACE]] [proto P] [from A [port P]] [to A [port P]]`

_UFW_PROTOCOLS = {"tcp": ("tcp",), "udp": ("udp",), "any": ("tcp", "udp"), None: ("tcp", "udp")}


def _read_ufw(words: list[str]) -> FirewallChange:
    words = [word for word in words if word not in ("--dry-run", "-f", "--force")]
    opens = True
    if words[:1] == ["delete"]:
        opens, words = False, words[1:]
        if words[:1] and words[0].isdigit():
            return FirewallChange("ufw", False, ())
    if words[:1] == ["insert"]:
        words = words[2:]
    elif words[:1] == ["prepend"]:
        words = words[1:]
    if not words:
        raise NotARule("this ufw command names no rule")
    identity = ("ufw", *words)
    action, words = words[0], words[1:]
    if action not in ("allow", "limit"):
        raise NotARule(f"ufw {action} does not open a port")
    remarks = ["ufw limit also limits each source to 6 connections in 30 s"] if action == "limit" else []
    interface = None
    if words[:1] == ["out"]:
        raise NotARule("it is an outbound rule")
    if words[:1] == ["in"]:
        words = words[1:]
        if words[:1] == ["on"] and len(words) > 1:
            interface, words = words[1], words[2:]
    if words[:1] in (["log"], ["log-all"]):
        words = words[1:]
    if len(words) == 1:  # simple syntax: `ufw allow 22/tcp`, open to everybody
        port_text, _slash, proto = words[0].partition("/")
        ports = _ufw_ports(port_text, proto or None)
        remarks.append("it opened the port(s) to everybody; the door opens them to the knocker only")
        return FirewallChange("ufw", opens, identity, ports, interface, None, "", tuple(remarks))
    return _ufw_full(opens, identity, words, interface, remarks)


def _ufw_full(
    opens: bool, identity: tuple[str, ...], words: list[str], interface: str | None, remarks: list[str]
) -> FirewallChange:
    fields: dict[str, str] = {}
    index = 0
    while index < len(words):
        key = words[index]
        if index + 1 >= len(words) or key not in ("proto", "from", "to", "port", "app", "comment"):
            raise NotARule(f"ufw rule word {key!r} is not one portward reads")
        if key in ("port", "app"):
            key = f"{'to' if 'to' in fields else 'from'}_{key}"
        fields[key] = words[index + 1]
        index += 2
    if "to_app" in fields or "from_app" in fields:
        raise NotARule("it opens a ufw application profile, whose ports are in /etc/ufw/applications.d")
    source = fields.get("from", "any")
    if source not in ("%IP%", "any"):
        raise NotARule(f"it opens to {source}, not to the knocker (%IP%)")
    if source == "any":
        remarks.append("it opened the port(s) to everybody; the door opens them to the knocker only")
    if fields.get("to", "any") != "any":
        remarks.append(f"only to {fields['to']}: the door opens the port(s) on every address of this host")
    if "from_port" in fields:
        remarks.append(f"only from source port {fields['from_port']}: not carried over")
    proto = fields.get("proto")
    if "to_port" in fields:
        ports = _ufw_ports(fields["to_port"], proto)
    elif proto in ("tcp", "udp"):
        ports = (f"1-65535/{proto}",)
    elif proto in (None, "any") and "from_port" in fields:  # a port, even a source port, means tcp and udp
        ports = ("1-65535/tcp", "1-65535/udp")
    elif proto in (None, "any"):
        ports = EVERY_PORT
        remarks.append("it admitted every protocol; the door opens every TCP, UDP and SCTP port")
    else:
        raise NotARule(f"it opens protocol {proto}, not ports")
    return FirewallChange("ufw", opens, identity, ports, interface, None, "", tuple(remarks))


def _ufw_ports(text: str, proto: str | None) -> tuple[str, ...]:
    """ufw's port list (`22`, `22,80`, `8000:8100`, `ssh`) -> port specs; ufw opens tcp and udp without proto."""
    protocols = _UFW_PROTOCOLS.get(proto)
    if protocols is None:
        raise NotARule(f"ufw proto {proto} has no ports")
    items = text.split(",")
    if (len(items) > 1 or ":" in text) and proto in (None, "any"):
        raise NotARule("ufw refuses a port list or range without proto tcp or proto udp")
    out: list[str] = []
    for item in items:
        first, colon, last = item.partition(":")
        for each in protocols:
            if first.isdigit() and (not colon or last.isdigit()):
                out.append(f"{first}-{last}/{each}" if colon else f"{first}/{each}")
            elif not colon:
                out.extend(_service(item, each))
            else:
                raise NotARule(f"{item!r} is not a port")
    if not out:
        raise NotARule(f"{text!r} is not a port or a service name in /etc/services")
    return tuple(dict.fromkeys(out))


def _service(name: str, proto: str) -> list[str]:
    try:
        return [f"{socket.getservbyname(name, proto)}/{proto}"]
    except OSError:
        return []


_COMMAND_READERS: dict[str, Callable[[list[str]], FirewallChange]] = {
    **{name: _iptables("iptables", 4) for name in ("iptables", "iptables-nft", "iptables-legacy")},
    **{name: _iptables("ip6tables", 6) for name in ("ip6tables", "ip6tables-nft", "ip6tables-legacy")},
    "nft": _read_nft,
    "ufw": _read_ufw,
}


# iptables and nft rules, both as `nft -j` expressions -> the ports they admit the knocker to


@dataclass
class _Admits:
    knocker: bool = False
    ports: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    interface: str | None = None
    verdict: str | None = None
    remarks: list[str] = field(default_factory=list)


def _change(tool: str, opens: bool, identity: tuple[str, ...], exprs: list[Json], knocker: str) -> FirewallChange:
    admits = _Admits()
    for item in exprs:
        kind, body = next(iter(item.items()))
        if kind == "match":
            _match_expr(body, knocker, admits)
        elif kind in ("accept", "drop", "reject", "return", "continue", "queue", "jump", "goto"):
            admits.verdict = kind if kind not in ("jump", "goto") else f"{kind} {body['target']}"
        elif kind in ("log", "limit"):
            admits.remarks.append(f"its {kind} statement is not carried over")
        elif kind in ("counter", "comment"):
            continue
        elif kind == "xt":
            raise NotARule(f"it uses the iptables extension {body.get('name')!r}")
        else:
            raise NotARule(f"its {kind} statement is not one portward reads")
    if admits.verdict != "accept":
        raise NotARule(f"it does not accept (its verdict: {admits.verdict or 'none'})")
    if not admits.knocker:
        admits.remarks.append("it opened the port(s) to everybody; the door opens them to the knocker only")
    ports = tuple(dict.fromkeys(admits.ports))
    if not ports:
        ports = _protocol_ports(admits)
    return FirewallChange(tool, opens, identity, ports, admits.interface, None, "", tuple(admits.remarks))


def _protocol_ports(admits: _Admits) -> tuple[str, ...]:
    if not admits.protocols:
        admits.remarks.append("it admitted every protocol; the door opens every TCP, UDP and SCTP port")
        return EVERY_PORT
    for proto in admits.protocols:
        if proto not in PORT_PROTOCOLS:
            raise NotARule(f"it opens protocol {proto}, which has no ports")
    return tuple(f"1-65535/{proto}" for proto in dict.fromkeys(admits.protocols))


def _match_expr(body: Json, knocker: str, admits: _Admits) -> None:
    left, right, op = body["left"], body["right"], body["op"]
    if op not in ("==", "in"):
        raise NotARule(f"it has a negated match ({op})")
    payload = left.get("payload", {}) if isinstance(left, dict) else {}
    meta = left.get("meta", {}).get("key") if isinstance(left, dict) and "meta" in left else None
    field_name = payload.get("field")
    if field_name == "saddr":
        if right != knocker:
            raise NotARule(f"it admits {right}, not the knocker (%IP%)")
        admits.knocker = True
    elif field_name == "daddr":
        admits.remarks.append(f"only to {right}: the door opens the port(s) on every address of this host")
    elif field_name == "dport":
        protocols = [payload["protocol"]] if payload["protocol"] != "th" else admits.protocols
        if not protocols or any(proto not in PORT_PROTOCOLS for proto in protocols):
            raise NotARule("its destination port has no tcp, udp or sctp protocol")
        for proto in protocols:
            admits.ports.extend(_port_specs(right, proto))
    elif field_name == "sport":  # says the protocol too: `-p tcp --sport 22` lists as `tcp sport 22` alone
        admits.remarks.append("its source port condition is not carried over")
        if payload["protocol"] in PORT_PROTOCOLS:
            admits.protocols.append(payload["protocol"])
    elif field_name in ("protocol", "nexthdr") or meta == "l4proto":
        admits.protocols.extend(str(item) for item in (right["set"] if isinstance(right, dict) else [right]))
    elif meta in ("iifname", "iif"):
        admits.interface = str(right).replace("+", "*")
    elif isinstance(left, dict) and "ct" in left and left["ct"].get("key") == "state":
        states = right["set"] if isinstance(right, dict) else [right] if isinstance(right, str) else right
        if "new" not in states:
            raise NotARule(f"it admits only ct state {', '.join(map(str, states))}, not new connections")
    elif isinstance(left, dict) and "&" in left:  # --syn: new connections, which an open port admits anyway
        flags = left["&"][0].get("payload", {}) if isinstance(left["&"][0], dict) else {}
        admits.protocols.append(str(flags.get("protocol", "tcp")))
    else:
        raise NotARule(f"it matches on {json.dumps(left)}, which a door cannot say")


def _port_specs(right: Any, proto: str) -> list[str]:
    if isinstance(right, int):
        return [f"{right}/{proto}"]
    if isinstance(right, dict) and "range" in right:
        return [f"{right['range'][0]}-{right['range'][1]}/{proto}"]
    if isinstance(right, dict) and "set" in right:
        return [spec for item in right["set"] for spec in _port_specs(item, proto)]
    if isinstance(right, str) and (found := _service(right, proto)):
        return found
    raise NotARule(f"{right!r} is not a {proto} port")


# --- import: knockd.conf -> [[knock]] doors ---------------------------------------------------------

_NAME_JUNK = re.compile(r"[^A-Za-z0-9_.-]+")
_POLICY_INTERFACE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\*?$")  # policy.model.INTERFACE_RE, without the bare '*'
_OPTION_LINE = re.compile(r"^\s*(\[options\]|usesyslog|logfile|pidfile)", re.IGNORECASE)
_SYN_ALIKE = frozenset({TCP_FLAG_BITS["syn"]})  # knockd flags that count the same knocks as a kernel door
_RUN_IT = "run `portward knockd -c {file}` to keep running the command"


@dataclass
class _Door:
    """One knockd door on its way into the policy: what its start command does, or why that is unknown."""

    door: KnockdDoor
    name: str
    change: FirewallChange | None = None
    reason: str = ""
    closed_by: KnockdDoor | None = None


@dataclass
class _Import:
    file: str
    blocks: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    doors: int = 0
    commented: int = 0

    def note(self, line: int, door: KnockdDoor | None, text: str) -> None:
        where = f"{self.file}:{line}" if line else self.file
        self.notes.append(f"{where}: [{door.name}] {text}" if door else f"{where}: {text}")


def read_policy(paths: list[str]) -> Converted:
    """`import --from knockd FILE…`: knockd.conf doors -> `[[knock]]` doors that open ports in the kernel.

    A door whose start_command admits the knocker with iptables, nft or ufw opens those ports for
    open_for = its cmd_timeout (or 30 s when knockd left them open).  A door that only deletes that rule
    (the stock [closeSSH]) is folded into the door it closes: portward doors close by themselves.  A door
    whose command is anything else is kept as a commented-out door with the command beside it.
    """
    results = []
    taken: set[str] = set()
    for path in paths:
        text = read_input(path)
        results.append(_import_config(parse_knockd_conf(text, path), _option_lines(text), taken))
    notes = [note for result in results for note in result.notes]
    blocks = [block for result in results for block in result.blocks]
    data = {"doors": sum(r.doors for r in results), "commented": sum(r.commented for r in results)}
    return Converted(doors_policy_text("knockd", "knockd.conf", paths, notes, blocks), notes, data)


def _option_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if match := _OPTION_LINE.match(line):
            lines.setdefault(match.group(1).lower(), number)
    return lines


def _import_config(config: KnockdConfig, option_lines: dict[str, int], taken: set[str]) -> _Import:
    result = _Import(config.file)
    doors = [_read_door(door, taken) for door in config.doors]
    openers = [item for item in doors if item.change is not None and item.change.opens]
    closers = [item for item in doors if item.change is not None and not item.change.opens]
    partners = {id(closer): _pair(closer, openers) for closer in closers}  # before any door is written
    for item in doors:  # in file order
        line = item.door.key_lines.get("start_command", item.door.line)
        if item in openers:
            _open_door(item, config, result)
        elif item in closers:
            _closer_note(item, partners[id(item)], line, result)
        elif item.reason:
            _comment_door(item, item.reason, result)
        else:
            result.note(item.door.line, item.door, "has no start_command, so knocking ran nothing — not imported")
    _option_notes(config, option_lines, result)
    return result


def _read_door(door: KnockdDoor, taken: set[str]) -> _Door:
    item = _Door(door, _unique_name(door.name, taken))
    if door.start_command and door.start_command.strip():
        try:
            item.change = read_command(door.start_command)
        except NotARule as error:
            item.reason = error.reason
    return item


def _unique_name(name: str, taken: set[str]) -> str:
    base = _NAME_JUNK.sub("-", name).strip("-._")[:60] or "door"
    candidate, number = base, 2
    while candidate in taken:
        candidate, number = f"{base}-{number}", number + 1
    taken.add(candidate)
    return candidate


def _pair(closer: _Door, openers: list[_Door]) -> _Door | None:
    """The door whose rule ``closer`` deletes (the stock [closeSSH] for [openSSH]), marked as closed by it."""
    assert closer.change is not None
    for opener in openers:
        if opener.closed_by is None and opener.change is not None and closer.change.undoes(opener.change):
            opener.closed_by = closer.door
            return opener
    return None


def _closer_note(item: _Door, opener: _Door | None, line: int, result: _Import) -> None:
    door = item.door
    if opener is None:
        result.note(line, door, "only takes access back; portward doors close by themselves — not imported")
        return
    result.note(
        line,
        door,
        f"(sequence {','.join(map(str, door.sequence))}) took back what [{opener.door.name}] opened; portward "
        "doors close by themselves after open_for, so there is no closing knock — not imported",
    )


def _open_door(item: _Door, config: KnockdConfig, result: _Import) -> None:
    door, change = item.door, item.change
    assert change is not None
    line = door.key_lines.get("start_command", door.line)
    for remark in change.remarks:
        result.note(line, door, f"start_command: {remark}")
    if change.ports is None:
        _comment_door(item, f"adds the knocker to nft set {change.where}, whose rules are not in knockd.conf", result)
        return
    if not door.sequence:
        _comment_door(item, "takes one-time sequences from a file; a portward door has one fixed sequence", result)
        return
    if len(door.sequence) > KNOCK_SEQ_MAX:
        _comment_door(item, f"has {len(door.sequence)} knocks; a portward door takes at most {KNOCK_SEQ_MAX}", result)
        return
    values: dict[str, Any] = {
        "name": item.name,
        "sequence": [f"{knock.port}/{knock.proto}" for knock in door.sequence],
        "seq_timeout": door.seq_timeout,
        "open": list(change.ports),
        "open_for": _open_for(item, result),
    }
    interface = _door_interface(door, config.options.interface, change.interface, result)
    if interface is not None:
        values["interface"] = interface
    _door_notes(door, change, result)
    comment = f"# from {config.file}:{door.line} [{comment_safe(door.name)}]: {comment_safe(door.start_command or '')}"
    result.blocks.append([comment, "[[knock]]", *toml_lines(values)])
    result.doors += 1


def _open_for(item: _Door, result: _Import) -> int:
    door, change = item.door, item.change
    assert change is not None
    if door.stop_command and door.stop_command.strip():
        line = door.key_lines.get("stop_command", door.line)
        try:
            undone = read_command(door.stop_command).undoes(change)
            why = "" if undone else "it does not delete what start_command added"
        except NotARule as error:
            why = error.reason
        if why:
            result.note(line, door, f"stop_command: {why}; the door closes after cmd_timeout all the same")
        if door.cmd_timeout == 0:
            result.note(door.key_lines.get("cmd_timeout", line), door, "cmd_timeout = 0: the door stays open 1 s")
        return max(door.cmd_timeout, 1)
    if change.timeout:
        return min(max(change.timeout, 1), MAX_TIMEOUT)
    if item.closed_by is not None:
        why = f"[{item.closed_by.name}] closed it when knocked"
    else:
        why = "knockd left it open until something deleted the rule"
    result.note(door.line, door, f"{why}; the door closes by itself after open_for = {OPEN_FOR_DEFAULT} s — adjust it")
    return OPEN_FOR_DEFAULT


def _door_interface(door: KnockdDoor, listening: str | None, rule: str | None, result: _Import) -> str | None:
    interface = door.interface or listening
    line = door.key_lines.get("interface") or door.line
    if rule is not None and interface is not None and rule != interface:
        result.note(line, door, f"knocks come in on {interface} but the rule opens {rule}: the door uses {interface}")
    interface = interface or rule
    if interface is not None and not _POLICY_INTERFACE.match(interface):
        result.note(line, door, f"interface {comment_safe(interface)!r} is not a name a policy takes — left out")
        return None
    return interface


def _door_notes(door: KnockdDoor, change: FirewallChange, result: _Import) -> None:
    keys = door.key_lines
    flags = door.tcpflags
    if "tcpflags" in keys and (flags.required not in _SYN_ALIKE or flags.forbidden & TCP_FLAG_BITS["syn"]):
        result.note(keys["tcpflags"], door, f"tcpflags = {flags}: a kernel door counts a TCP knock on a SYN only "
                    "(what knock clients send) — not carried over")
    if door.target is not None:
        result.note(keys["target"], door, f"target = {door.target}: the door counts knocks to any address of this host")
    if door.start_command_6 is not None:
        try:
            same = read_command(door.start_command_6).ports == change.ports if door.start_command_6.strip() else False
        except NotARule:
            same = False
        if not same:
            opened = ", ".join(change.ports or ())
            result.note(keys["start_command_6"], door, f"start_command_6 differs; the door opens {opened} for IPv4 "
                        "and IPv6 knockers alike")


def _comment_door(item: _Door, reason: str, result: _Import) -> None:
    door = item.door
    line = door.key_lines.get("start_command", door.line)
    result.note(line, door, f"{reason}: kept as a commented-out door that opens nothing portward can enforce; "
                + _RUN_IT.format(file=result.file))
    values: dict[str, Any] = {"name": item.name}
    if door.sequence:
        values["sequence"] = [f"{knock.port}/{knock.proto}" for knock in door.sequence]
    values["seq_timeout"] = door.seq_timeout
    block = [f"# from {result.file}:{door.line} [{comment_safe(door.name)}] — {comment_safe(reason)}",
             f"# start_command = {comment_safe(door.start_command or '')}"]
    block += [f"# {line}" for line in toml_lines(values)]
    block.append("# open = []   # the ports the command opened, as \"22/tcp\"")
    result.blocks.append(block)
    result.commented += 1


def _option_notes(config: KnockdConfig, lines: dict[str, int], result: _Import) -> None:
    options = config.options
    if result.doors and options.interface is None and not any(door.interface for door in config.doors):
        result.note(lines.get("[options]", 0), None, "[options] names no Interface: knockd listened on eth0 (or -i "
                    "from /etc/default/knockd); the doors listen on every interface — add interface = \"…\" to a "
                    "door to narrow it")
    for key, name in (("usesyslog", "UseSyslog"), ("logfile", "LogFile"), ("pidfile", "PidFile")):
        if key in lines:
            result.note(lines[key], None, f"[options] {name}: knockd's own logging is not part of a policy "
                        "(kernel doors log nothing; `portward status` lists who is let in) — not imported")


