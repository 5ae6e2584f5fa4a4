"""fwknopd's access.conf (and fwknopd.conf) -> `[[spa]]` doors: `portward import --from fwknop ACCESS [FWKNOPD]`.

access.conf is read as fwknopd 2.6 reads it (server/access.c), so a file that works there means the same here:

    SOURCE              ANY                       # a stanza starts at SOURCE: ANY, addresses, CIDRs, a,b,c
    OPEN_PORTS          tcp/22, udp/53
    KEY_BASE64:         <fwknop --key-gen output, pasted as is: a ':' after the key name is dropped>
    HMAC_KEY_BASE64:    …
    FW_ACCESS_TIMEOUT   30                        # a ';' ends the value, as in fwknopd

- A line whose first character is `#` or `;` is a comment; the key is the first word, the value the rest of
  the line up to `;`.  A plain KEY / HMAC_KEY is its bytes exactly as written, trailing blanks included
  (fwknopd keeps them: `KEY secret  ` is 8 bytes), which the policy says as base64 of those bytes.
- Stricter than fwknopd, which ignores or half-reads them: unknown and lower-case keys (`open_ports` is
  silently ignored there, opening every port), `FW_ACCESS_TIMEOUT 45s` (atoi reads 45), `tcp/22-25` (reads
  tcp/22), a key given twice.  Each is a problem at FILE:LINE: key, like the other readers'.
- fwknopd refuses what would not work, and so does this reader: `__CHANGEME__` keys (the shipped file), a
  Rijndael key over 32 bytes or an HMAC key over 128, the same key for both.
- Keys that a door cannot say (REQUIRE_USERNAME, ENABLE_CMD_EXEC, GPG_*, DESTINATION, ACCESS_EXPIRE, NAT …)
  become notes naming FILE:LINE.  RESTRICT_PORTS is carried over by leaving those ports out of `open`.
- `%include`, `%include_folder` and `%include_keys` are followed, relative to the including file.

The SPA port is not in access.conf but in fwknopd.conf: UDPSERV_PORT when ENABLE_UDP_SERVER is Y, else the
`port N` of PCAP_FILTER (default `udp port 62201`).

Pure: `parse_access_conf(text)` and `parse_fwknopd_conf(text)` touch no file (includes are refused unless a
loader is given); `read_policy(paths)` reads the files.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portward.dialects import Converted, comment_safe, doors_policy_text, read_input, toml_lines
from portward.errors import InputError, Problem, ProblemsError

__all__ = [
    "ACCESS_KEYS",
    "FwknopConfigError",
    "SpaPort",
    "Stanza",
    "parse_access_conf",
    "parse_fwknopd_conf",
    "read_policy",
    "stanza_door",
]

SPA_PORT_DEFAULT = 62201  # fwknopd's UDPSERV_PORT and PCAP_FILTER default
FW_ACCESS_TIMEOUT_DEFAULT = 30  # fwknopd's DEF_FW_ACCESS_TIMEOUT
MAX_FW_TIMEOUT_DEFAULT = 300  # DEF_MAX_FW_TIMEOUT
MAX_SECONDS = 7 * 86400  # a policy's longest timeout
MAX_KEY = 32  # fwknop: Rijndael keys of 1-32 bytes ("Error 95 - Invalid key length" above)
MAX_HMAC_KEY = 128  # fwknop: --hmac-key-len "must be in [1-128]"
MAX_DEPTH = 3  # fwknopd: "Refusing to go deeper than 3 levels"
MAX_PROBLEMS = 20
PLACEHOLDER = "__CHANGEME__"
EVERY_PORT = {"tcp": (1, 65535), "udp": (1, 65535)}

# the keys fwknopd 2.6 knows (access.c parse_access_file); names are case-sensitive there
CARRIED = ("SOURCE", "OPEN_PORTS", "RESTRICT_PORTS", "KEY", "KEY_BASE64", "HMAC_KEY", "HMAC_KEY_BASE64",
           "FW_ACCESS_TIMEOUT", "MAX_FW_TIMEOUT", "REQUIRE_SOURCE_ADDRESS", "REQUIRE_SOURCE")
NOTED = {
    "DESTINATION": "the door opens the ports on every address of this host",
    "HMAC_DIGEST_TYPE": "portward checks SHA-256 HMACs (fwknop's default) only",
    "ENCRYPTION_MODE": "portward decrypts CBC (fwknop's default) only",
    "ENABLE_CMD_EXEC": "portward never runs commands sent in SPA packets",
    "ENABLE_CMD_SUDO_EXEC": "portward never runs commands sent in SPA packets",
    "CMD_SUDO_EXEC_USER": "portward never runs commands sent in SPA packets",
    "CMD_SUDO_EXEC_GROUP": "portward never runs commands sent in SPA packets",
    "CMD_EXEC_USER": "portward never runs commands sent in SPA packets",
    "CMD_EXEC_GROUP": "portward never runs commands sent in SPA packets",
    "CMD_CYCLE_OPEN": "portward runs no commands when a door opens",
    "CMD_CYCLE_CLOSE": "portward runs no commands when a door closes",
    "CMD_CYCLE_TIMER": "portward runs no commands when a door opens",
    "REQUIRE_USERNAME": "portward does not check the user name inside SPA packets",
    "GPG_HOME_DIR": "portward takes Rijndael keys only, not GnuPG",
    "GPG_EXE": "portward takes Rijndael keys only, not GnuPG",
    "GPG_DECRYPT_ID": "portward takes Rijndael keys only, not GnuPG",
    "GPG_DECRYPT_PW": "portward takes Rijndael keys only, not GnuPG",
    "GPG_ALLOW_NO_PW": "portward takes Rijndael keys only, not GnuPG",
    "GPG_REQUIRE_SIG": "portward takes Rijndael keys only, not GnuPG",
    "GPG_DISABLE_SIG": "portward takes Rijndael keys only, not GnuPG",
    "GPG_IGNORE_SIG_VERIFY_ERROR": "portward takes Rijndael keys only, not GnuPG",
    "GPG_REMOTE_ID": "portward takes Rijndael keys only, not GnuPG",
    "GPG_FINGERPRINT_ID": "portward takes Rijndael keys only, not GnuPG",
    "ACCESS_EXPIRE": "portward doors do not expire: remove the door by then",
    "ACCESS_EXPIRE_EPOCH": "portward doors do not expire: remove the door by then",
    "FORCE_NAT": "portward doors open ports on this host; they do not forward or NAT",
    "FORCE_SNAT": "portward doors open ports on this host; they do not forward or NAT",
    "FORCE_MASQUERADE": "portward doors open ports on this host; they do not forward or NAT",
    "DISABLE_DNAT": "portward doors open ports on this host; they do not forward or NAT",
    "FORWARD_ALL": "portward doors open ports on this host; they do not forward or NAT",
}
ACCESS_KEYS = frozenset(CARRIED) | frozenset(NOTED)
INCLUDES = ("%include", "%include_folder", "%include_keys")
KEY_NAMES = frozenset({"KEY", "KEY_BASE64", "HMAC_KEY", "HMAC_KEY_BASE64", "HMAC_DIGEST_TYPE"})  # %include_keys
_NUMBER = re.compile(r"[0-9]{1,10}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*=*")
_NAME_JUNK = re.compile(r"[^A-Za-z0-9_.-]+")
_PCAP_PORT = re.compile(r"(?:(udp|tcp)\s+)?(?:dst\s+)?port\s+([0-9]{1,5})", re.IGNORECASE)


class FwknopConfigError(ProblemsError):
    """Every problem found in an access.conf or fwknopd.conf, each at FILE:LINE: key."""

    what = "invalid fwknop configuration"


@dataclass
class Stanza:
    """One access.conf stanza: the SOURCE line and every key after it, each with its file and line."""

    file: str
    line: int
    source: str
    values: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # KEY -> (file, line, value)


@dataclass(frozen=True)
class SpaPort:
    """Where fwknopd took SPA packets from, and what fwknopd.conf said that a door cannot."""

    port: str = f"{SPA_PORT_DEFAULT}/udp"
    notes: tuple[str, ...] = ()


Loader = Callable[[str, str], tuple[str, str]]  # (path as written, including file) -> (file name, text)


# --- access.conf --------------------------------------------------------------------------------


class _Reader:
    def __init__(self, loader: Loader | None) -> None:
        self.loader = loader
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.stanzas: list[Stanza] = []

    def problem(self, file: str, line: int, key: str, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(file, line, key, message))

    def read(self, text: str, file: str, depth: int) -> None:
        """One file, as fwknopd's parse_access_file: a stanza is open until the next SOURCE of this file."""
        current: Stanza | None = None
        for number, raw in enumerate(text.split("\n"), 1):
            if not raw or raw[0] in "#;\r\0" or not raw.strip():
                continue
            var, value = _split(raw)
            if var.rfind(":") > 0:  # `KEY_BASE64: …` as fwknop --key-gen prints it
                var = var[: var.rfind(":")]
            if not value:
                self.problem(file, number, var, f"needs a value after {var} — e.g. {_example(var)}")
            elif var in ("%include", "%include_folder"):
                self.include(var, value.strip(), file, number, depth)
            elif var == "SOURCE":
                current = Stanza(file, number, value.strip())
                self.stanzas.append(current)
            elif var == "%include_keys" and current is not None:
                self.include_keys(current, value.strip(), file, number)
            elif self.known(var, file, number) and current is None:
                self.notes.append(f"{file}:{number}: {var} comes before any SOURCE; fwknopd ignores it — not imported")
            elif var in ACCESS_KEYS and current is not None:
                self.store(current, var, value, file, number)

    def known(self, var: str, file: str, line: int) -> bool:
        """True for a key fwknopd knows; else a problem saying what it probably is."""
        if var in ACCESS_KEYS or var == "%include_keys":
            return True
        upper = var.upper()
        if upper in ACCESS_KEYS:
            hint = f"keys are upper case — write {upper} (fwknopd ignores {var!r})"
        else:
            close = difflib.get_close_matches(upper, sorted(ACCESS_KEYS), n=1)
            hint = f"did you mean {close[0]}?" if close else "see access.conf(5) for the keys"
        self.problem(file, line, var, f"not an access.conf key — {hint}")
        return False

    def store(self, stanza: Stanza, var: str, value: str, file: str, line: int) -> None:
        if var not in ("KEY", "HMAC_KEY"):  # plain keys keep their trailing blanks, as in fwknopd
            value = value.strip()
        canonical = "REQUIRE_SOURCE_ADDRESS" if var == "REQUIRE_SOURCE" else var
        if canonical in stanza.values:
            first = stanza.values[canonical][1]
            self.problem(file, line, var, f"given twice in this stanza (first at line {first}) — keep one")
            return
        stanza.values[canonical] = (file, line, value)

    def include(self, var: str, value: str, file: str, line: int, depth: int) -> None:
        if self.loader is None:
            self.problem(file, line, var, "includes are read only from files — give the file to import")
            return
        if depth + 1 >= MAX_DEPTH:
            self.problem(file, line, var, f"includes nest deeper than {MAX_DEPTH} levels (fwknopd stops there)")
            return
        try:
            for name, text in self.expand(var, value, file):
                self.read(text, name, depth + 1)
        except InputError as error:
            self.problem(file, line, var, str(error))

    def expand(self, var: str, value: str, file: str) -> list[tuple[str, str]]:
        assert self.loader is not None
        if var == "%include":
            return [self.loader(value, file)]
        folder = Path(value) if Path(value).is_absolute() else Path(file).parent / value
        try:
            names = sorted(path.name for path in folder.iterdir() if path.name.endswith(".conf"))
        except OSError as error:
            raise InputError(f"{folder}: cannot list it: {error.strerror}") from None
        return [self.loader(str(folder / name), file) for name in names]

    def include_keys(self, stanza: Stanza, value: str, file: str, line: int) -> None:
        if self.loader is None:
            self.problem(file, line, "%include_keys", "includes are read only from files — give the file to import")
            return
        try:
            name, text = self.loader(value, file)
        except InputError as error:
            self.problem(file, line, "%include_keys", str(error))
            return
        for number, raw in enumerate(text.split("\n"), 1):
            if raw and raw[0] not in "#;\r\0" and raw.strip():
                var, key_value = _split(raw)
                var = var[: var.rfind(":")] if var.rfind(":") > 0 else var
                if var in KEY_NAMES and key_value:  # fwknopd takes only the keys from such a file
                    self.store(stanza, var, key_value, name, number)


def _split(raw: str) -> tuple[str, str]:
    """fwknopd's sscanf("%s %[^;\\n\\r]"): the first word, and the rest after blanks up to `;` or CR."""
    match = re.match(r"\s*(\S+)\s*(.*)", raw, re.DOTALL)
    assert match is not None  # the caller skipped blank lines
    return match.group(1), re.split(r"[;\r]", match.group(2), maxsplit=1)[0]


def _example(var: str) -> str:
    examples = {"SOURCE": "SOURCE ANY", "OPEN_PORTS": "OPEN_PORTS tcp/22", "FW_ACCESS_TIMEOUT": "FW_ACCESS_TIMEOUT 30"}
    return examples.get(var, f"{var} VALUE")


def parse_access_conf(text: str, filename: str = "access.conf", *, loader: Loader | None = None) -> list[Stanza]:
    """The stanzas of access.conf text, and the notes on what fwknopd ignores there.

    FwknopConfigError lists every problem (unknown keys, keys given twice, values missing, no SOURCE)."""
    stanzas, _notes = _parse_access(text, filename, loader)
    return stanzas


def _parse_access(text: str, filename: str, loader: Loader | None) -> tuple[list[Stanza], list[str]]:
    reader = _Reader(loader)
    reader.read(text, filename, 0)
    if not reader.stanzas and not reader.problems:
        reader.problem(filename, 0, "SOURCE", "no stanza — a stanza starts with SOURCE ANY (or addresses)")
    if reader.problems:
        raise FwknopConfigError(reader.problems)
    return reader.stanzas, reader.notes


# --- a stanza -> a door -----------------------------------------------------------------------------


@dataclass
class _Door:
    stanza: Stanza
    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skip: str = ""  # why the stanza cannot be a door at all

    def get(self, key: str) -> tuple[str, int, str] | None:
        return self.stanza.values.get(key)

    def note(self, key: str, text: str) -> None:
        """A note at the key's line, or at the stanza's SOURCE line for a key the stanza does not give."""
        if key in self.stanza.values:
            file, line, _value = self.stanza.values[key]
            self.notes.append(f"{file}:{line}: {key}: {text}")
        else:
            self.notes.append(f"{self.stanza.file}:{self.stanza.line}: {text}")

    def problem(self, key: str, message: str) -> None:
        file, line, _value = self.stanza.values.get(key, (self.stanza.file, self.stanza.line, ""))
        self.problems.append(Problem(file, line, key, message))


def stanza_door(
    stanza: Stanza, number: int, spa_port: str = f"{SPA_PORT_DEFAULT}/udp"
) -> tuple[dict[str, Any] | None, list[str]]:
    """The `[[spa]]` values for one stanza (None when it cannot be a door, the notes say why), and notes.

    FwknopConfigError for a stanza fwknopd itself would refuse or that could never let anyone in."""
    door = _Door(stanza)
    door.values["name"] = _door_name(number, stanza.source)
    door.values["port"] = spa_port
    _sources(door)
    _ports(door)
    _keys(door)
    _timeouts(door)
    door.values["require_source_address"] = _yes(door.get("REQUIRE_SOURCE_ADDRESS"))
    for key, why in NOTED.items():
        if key in stanza.values and not (key == "DESTINATION" and stanza.values[key][2].upper() == "ANY"):
            door.note(key, f"{why} — not carried over")
    if door.problems:
        raise FwknopConfigError(door.problems)
    return (None if door.skip else door.values), door.notes


def _door_name(number: int, source: str) -> str:
    slug = _NAME_JUNK.sub("-", source.lower()).strip("-._")[:40] or "source"
    return f"stanza{number}-{slug}"


def _sources(door: _Door) -> None:
    sources: list[str] = []
    for item in door.stanza.source.split(","):
        text = item.strip()
        if text.upper() == "ANY":
            door.values["from"] = ["any"]
            return
        try:
            sources.append(_network(text, door))
        except ValueError as error:
            door.problems.append(Problem(door.stanza.file, door.stanza.line, "SOURCE", f"{error}"))
    door.values["from"] = sources


def _network(text: str, door: _Door) -> str:
    if not text:
        raise ValueError("an empty item between commas — write ANY, addresses or CIDRs, e.g. 198.18.0.0/24,198.19.0.5")
    address, slash, mask = text.partition("/")
    length: int
    try:
        host = ipaddress.ip_address(address)
        if not slash:
            length = host.max_prefixlen
        elif "." in mask:  # fwknopd also takes a dotted mask
            length = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
        elif _NUMBER.fullmatch(mask):
            length = int(mask)
        else:
            raise ValueError(mask)
        network = ipaddress.ip_network(f"{host}/{length}", strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not ANY, an address or a CIDR — e.g. 198.18.0.0/24") from None
    if network.network_address != host:
        door.notes.append(f"{door.stanza.file}:{door.stanza.line}: SOURCE: {text} has host bits set; fwknopd "
                          f"matches the network {network}, and so does the door")
    return str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)


def _port_list(text: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for item in text.split(","):
        proto, slash, port = item.strip().partition("/")
        if not slash or proto.lower() not in ("tcp", "udp"):
            raise ValueError(f"{item.strip()!r} is not proto/port — write e.g. tcp/22, udp/53")
        if not _NUMBER.fullmatch(port.strip()) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{item.strip()!r}: the port must be one number 1-65535 — list each port")
        out.append((proto.lower(), int(port)))
    return out


def _ports(door: _Door) -> None:
    """OPEN_PORTS less RESTRICT_PORTS (fwknopd checks the restriction first); every port when not given."""
    opened: dict[str, list[tuple[int, int]]] = {}
    restricted: list[tuple[str, int]] = []
    for key in ("OPEN_PORTS", "RESTRICT_PORTS"):
        entry = door.get(key)
        if entry is None:
            continue
        try:
            found = _port_list(entry[2])
        except ValueError as error:
            door.problem(key, str(error))
            continue
        if key == "RESTRICT_PORTS":
            restricted = found
        else:
            for proto, port in found:
                opened.setdefault(proto, []).append((port, port))
    if door.get("OPEN_PORTS") is None:
        opened = {proto: [span] for proto, span in EVERY_PORT.items()}
        door.note("OPEN_PORTS", "no OPEN_PORTS: fwknopd grants any TCP or UDP port a client asks for, and so does the "
                  "door — list the ports to narrow it")
    if restricted:
        door.note("RESTRICT_PORTS", "carried over by leaving those ports out of open")
    specs = [spec for proto, spans in opened.items() for spec in _minus(proto, spans, restricted)]
    if not specs and not door.problems:
        door.problem("RESTRICT_PORTS", "restricts every port OPEN_PORTS opens — the stanza opens nothing")
    door.values["open"] = list(dict.fromkeys(specs))


def _minus(proto: str, spans: list[tuple[int, int]], restricted: list[tuple[str, int]]) -> list[str]:
    holes = sorted(port for kind, port in restricted if kind == proto)
    out: list[str] = []
    for first, last in spans:
        start = first
        for hole in holes:
            if start <= hole <= last:
                if hole > start:
                    out.append(_spec(proto, start, hole - 1))
                start = hole + 1
        if start <= last:
            out.append(_spec(proto, start, last))
    return out


def _spec(proto: str, first: int, last: int) -> str:
    return f"{first}/{proto}" if first == last else f"{first}-{last}/{proto}"


def _keys(door: _Door) -> None:
    key = _key(door, "KEY", "KEY_BASE64", MAX_KEY)
    hmac_key = _key(door, "HMAC_KEY", "HMAC_KEY_BASE64", MAX_HMAC_KEY)
    if key is None:
        gpg = door.get("GPG_DECRYPT_PW") or door.get("GPG_ALLOW_NO_PW")
        if gpg is not None:
            door.skip = "it decrypts with GnuPG only"
            door.note("", "the stanza decrypts with GnuPG only; portward takes Rijndael keys — not imported")
        elif not door.problems:
            door.problem("SOURCE", "no KEY or KEY_BASE64 in this stanza (fwknopd: \"No keys found\") — make keys with "
                         "`fwknop --key-gen` and add them")
        return
    door.values["key_base64"] = base64.b64encode(key).decode()
    if hmac_key is None:
        door.note("", "no HMAC key: fwknopd took packets without an HMAC; portward requires one — make one "
                  "with `fwknop --key-gen`, set hmac_key_base64 and give clients --use-hmac")
    elif hmac_key == key:
        door.problem("HMAC_KEY_BASE64" if door.get("HMAC_KEY_BASE64") else "HMAC_KEY",
                     "the same as the encryption key (fwknopd refuses that) — make two with `fwknop --key-gen`")
    else:
        door.values["hmac_key_base64"] = base64.b64encode(hmac_key).decode()


def _key(door: _Door, plain: str, encoded: str, limit: int) -> bytes | None:
    """Key bytes from the plain or the base64 form (not both), checked as fwknop would use them."""
    given = [name for name in (plain, encoded) if door.get(name) is not None]
    if len(given) == 2:
        door.problem(encoded, f"{plain} and {encoded} both set the same key — keep one")
        return None
    if not given:
        return None
    name = given[0]
    _file, _line, text = door.stanza.values[name]
    if text.strip().upper() == PLACEHOLDER:
        door.problem(name, f"still the shipped placeholder {PLACEHOLDER} (fwknopd refuses it) — make keys with "
                     "`fwknop --key-gen` and paste them here")
        return None
    if name == plain:
        if text != text.rstrip():
            door.note(name, f"ends in {len(text) - len(text.rstrip())} blank(s), which fwknopd keeps as part of the "
                      "key; so does the door — clients must send them too")
        value = text.encode("utf-8", "surrogateescape")
    else:
        try:
            value = _fwknop_base64(text)
        except ValueError as error:
            door.problem(name, str(error))
            return None
    if not 1 <= len(value) <= limit:
        door.problem(name, f"{len(value)} bytes; fwknop takes 1-{limit} — make keys with `fwknop --key-gen`")
        return None
    return value


def _fwknop_base64(text: str) -> bytes:
    """fwknop's base64 decoding: padding optional, a dangling sixth bit group ignored."""
    body = text.strip()
    if not _BASE64.fullmatch(body):
        raise ValueError("does not look like base64 (A-Z a-z 0-9 + /) — paste what `fwknop --key-gen` printed")
    body = body.rstrip("=")
    body = body[: len(body) - (len(body) % 4 == 1)]
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("does not look like base64 — paste what `fwknop --key-gen` printed") from None


def _timeouts(door: _Door) -> None:
    open_for = _seconds(door, "FW_ACCESS_TIMEOUT", FW_ACCESS_TIMEOUT_DEFAULT)
    max_open_for = _seconds(door, "MAX_FW_TIMEOUT", MAX_FW_TIMEOUT_DEFAULT)
    if max_open_for < open_for:
        door.note("MAX_FW_TIMEOUT", f"is below FW_ACCESS_TIMEOUT; fwknopd grants {max_open_for} s then, and so does "
                  "the door (open_for lowered to it)")
        open_for = max_open_for
    door.values["open_for"] = open_for
    door.values["max_open_for"] = max_open_for


def _seconds(door: _Door, key: str, default: int) -> int:
    entry = door.get(key)
    if entry is None:
        return default
    text = entry[2]
    if not _NUMBER.fullmatch(text) or int(text) > MAX_SECONDS:
        door.problem(key, f"{text!r} is not a whole number of seconds 0-{MAX_SECONDS} — e.g. {default}")
        return default
    return int(text) or default  # fwknopd: 0 means the default


def _yes(entry: tuple[str, int, str] | None) -> bool:
    return entry is not None and entry[2][:1].upper() == "Y"  # fwknopd: strncasecmp(val, "Y", 1)


# --- fwknopd.conf -----------------------------------------------------------------------------------

_SERVER_KEYS = {
    "PCAP_INTF": "the door takes SPA packets on every interface",
    "NFQ_INTERFACE": "the door takes SPA packets on every interface",
    "MAX_SPA_PACKET_AGE": "portward accepts SPA timestamps within ±120 s (fwknopd's default)",
    "ENABLE_SPA_PACKET_AGING": "portward always checks SPA timestamps (±120 s)",
    "ENABLE_SPA_OVER_HTTP": "portward takes SPA packets over UDP only",
    "ENABLE_TCP_SERVER": "portward takes SPA packets over UDP only",
    "ENABLE_X_FORWARDED_FOR": "portward grants the address inside the SPA packet or its sender",
}


def parse_fwknopd_conf(text: str, filename: str = "fwknopd.conf") -> SpaPort:
    """The SPA port fwknopd listened on, and notes on its other settings that change what a door does."""
    values: dict[str, tuple[int, str]] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        match = re.match(r"([^\s=]+)[\s=]*(.*)", line)
        assert match is not None
        values.setdefault(match.group(1), (number, re.split(r"[;\r]", match.group(2), maxsplit=1)[0].strip()))
    notes = []
    for key, why in _SERVER_KEYS.items():
        if key in values:
            number, value = values[key]
            notes.append(f"{filename}:{number}: {key} {value}: {why} — not carried over")
    port, port_notes = _server_port(values, filename)
    return SpaPort(port, tuple(port_notes + notes))


def _server_port(values: dict[str, tuple[int, str]], filename: str) -> tuple[str, list[str]]:
    def where(key: str) -> str:
        return f"{filename}:{values[key][0]}: {key}"

    if values.get("ENABLE_UDP_SERVER", (0, "N"))[1][:1].upper() == "Y":
        port = values.get("UDPSERV_PORT", (0, str(SPA_PORT_DEFAULT)))[1]
        return _checked_port(port, "udp", where("UDPSERV_PORT") if "UDPSERV_PORT" in values else filename)
    if values.get("ENABLE_NFQ_CAPTURE", (0, "N"))[1][:1].upper() == "Y":
        port = values.get("NFQ_PORT", (0, str(SPA_PORT_DEFAULT)))[1]
        return _checked_port(port, "udp", where("NFQ_PORT") if "NFQ_PORT" in values else filename)
    if "PCAP_FILTER" not in values:
        return f"{SPA_PORT_DEFAULT}/udp", []
    text = values["PCAP_FILTER"][1]
    match = _PCAP_PORT.fullmatch(text.strip())
    if match is None:
        return f"{SPA_PORT_DEFAULT}/udp", [f"{where('PCAP_FILTER')}: {text!r} is more than `udp port N`; the door "
                                           f"listens on {SPA_PORT_DEFAULT}/udp — set port by hand"]
    notes = []
    if (match.group(1) or "udp").lower() != "udp":
        notes.append(f"{where('PCAP_FILTER')}: {text!r}: portward takes SPA packets over UDP, on the same port")
    found, port_notes = _checked_port(match.group(2), "udp", where("PCAP_FILTER"))
    return found, notes + port_notes


def _checked_port(text: str, proto: str, where: str) -> tuple[str, list[str]]:
    if _NUMBER.fullmatch(text) and 1 <= int(text) <= 65535:
        return f"{int(text)}/{proto}", []
    return f"{SPA_PORT_DEFAULT}/udp", [f"{where}: {text!r} is not a port; the door listens on {SPA_PORT_DEFAULT}/udp"]


# --- the files -> a policy --------------------------------------------------------------------------


def _load(path: str, including: str) -> tuple[str, str]:
    """An included file, relative to the file that includes it (fwknopd: to its working directory)."""
    target = Path(path) if Path(path).is_absolute() else Path(including).parent / path
    return str(target), read_input(str(target))


def read_policy(paths: list[str]) -> Converted:
    """`import --from fwknop access.conf [fwknopd.conf]`: each stanza becomes a `[[spa]]` door."""
    if not 1 <= len(paths) <= 2:
        raise InputError("give access.conf, and optionally fwknopd.conf after it (for the SPA port)")
    text = read_input(paths[0])
    spa_port = SpaPort()
    if len(paths) == 2:
        server = read_input(paths[1])
        if re.search(r"^\s*SOURCE\s", server, re.MULTILINE):
            raise InputError(f"{paths[1]} has SOURCE lines, so it is an access.conf — give access.conf first, "
                             "then fwknopd.conf")
        spa_port = parse_fwknopd_conf(server, paths[1])
    stanzas, notes = _parse_access(text, paths[0], _load)
    notes = notes + list(spa_port.notes)
    blocks: list[list[str]] = []
    problems: list[Problem] = []
    for number, stanza in enumerate(stanzas, 1):
        try:
            values, door_notes = stanza_door(stanza, number, spa_port.port)
        except FwknopConfigError as error:
            problems.extend(error.problems)
            continue
        notes += door_notes
        if values is not None:
            blocks.append([f"# from {comment_safe(stanza.file)}:{stanza.line} (SOURCE {comment_safe(stanza.source)})",
                           "[[spa]]", *toml_lines(values), *_missing_hmac(values)])
    if problems:
        raise FwknopConfigError(problems[:MAX_PROBLEMS])
    if blocks:
        notes.append(f"{paths[0]}: the policy now holds the SPA keys — keep it readable by root only (`import -o` "
                     "writes it so), or move them to key_file / hmac_key_file")
    return Converted(doors_policy_text("fwknop", "access.conf", paths, notes, blocks), notes, {"doors": len(blocks)})


def _missing_hmac(values: dict[str, Any]) -> list[str]:
    if "hmac_key_base64" in values:
        return []
    return ['# hmac_key_base64 = "…"   # needed by portward spad: make one with `fwknop --key-gen`']


