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
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

from portward.errors import InputError, Problem, ProblemsError

__all__ = [
    "CMD_TIMEOUT_DEFAULT",
    "SEQ_MAX",
    "SEQ_TIMEOUT_DEFAULT",
    "TCP_FLAG_BITS",
    "KnockPort",
    "KnockdConfig",
    "KnockdConfigError",
    "KnockdDoor",
    "KnockdOptions",
    "OneTimeSequence",
    "TcpFlags",
    "command_argv",
    "parse_knockd_conf",
    "parse_one_time_sequences",
    "parse_sequence",
    "read_knockd_conf",
    "read_one_time_sequences",
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
