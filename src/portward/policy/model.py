"""The policy: one typed model that every frontend produces and every backend consumes.

Field validators raise ValueError("problem — what to do"); `policy.toml` turns those into
`FILE:LINE: key: problem — what to do`. Cross-references (zones, unique names) are checked in
`Policy.problems()` so each problem keeps its own location.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from portward.policy.addresses import Net, PortRange, parse_net, parse_port_spec

BUILTIN_ZONES = ("any", "localhost")
LOCALHOST = (parse_net("127.0.0.0/8"), parse_net("::1"))
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\*?$|^[A-Za-z0-9_.:@-]{0,14}\*$")
RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*(?:burst\s+(\d+))?\s*$")
RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
SYSCTL_RE = re.compile(r"^net\.[a-z0-9_]+(\.[A-Za-z0-9_*-]+)+$")
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
# hosts_options(5) keywords a rule may carry for the hosts.allow export (allow/deny are `action`)
HOSTS_OPTIONS = ("spawn", "twist", "banners", "severity", "keepalive", "linger", "rfc931", "setenv", "umask", "user",
                 "group", "nice", "aclexec")


def _name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name — use letters, digits, '_', '.' or '-' (up to 64, starting "
            "with a letter or digit)"
        )
    return value


def _port(value: str) -> str:
    parse_port_spec(value)
    return value


def _source(value: str) -> str:
    if looks_like_address(value):
        parse_net(value)
    elif not NAME_RE.match(value):
        raise ValueError(
            f'{value!r} is neither an address, a CIDR nor a zone name — write e.g. "198.18.0.0/24", '
            '"2001:db8::/64" or a name from [zones]'
        )
    return value


def _interface(value: str) -> str:
    if not INTERFACE_RE.match(value):
        raise ValueError(
            f'{value!r} is not an interface name — up to 15 characters, optionally ending in \'*\' (e.g. "eth0", "wg*")'
        )
    return value


def _rate(value: str) -> str:
    match = RATE_RE.match(value)
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f'{value!r} is not a rate — write "N/second", "N/minute", "N/hour" or "N/day" with N ≥ 1, '
            'optionally followed by " burst M"'
        )
    return value


def _address(value: str) -> str:
    net = parse_net(value)
    if net.first != net.last:
        raise ValueError(f"{value!r} is a network — give one address")
    return value


def _hosts_options(value: list[str]) -> list[str]:
    for index, option in enumerate(value):
        if not option.strip() or any(char in option for char in "\n\r\0"):
            raise ValueError(f"option {index}: one hosts_options(5) option per string, on one line, not empty")
        keyword = re.split(r"[\s=]", option.strip(), maxsplit=1)[0].lower()
        if keyword in ("allow", "deny"):
            raise ValueError(f"{option!r}: say allow/deny with `action` (accept, drop) — remove it here")
        if keyword not in HOSTS_OPTIONS:
            raise ValueError(f"{option!r}: unknown hosts_options(5) option {keyword!r} — use one of "
                             + ", ".join(HOSTS_OPTIONS))
        if keyword == "twist" and index != len(value) - 1:
            raise ValueError("twist ends a rule in libwrap — make it the last option")
    return value


def looks_like_address(value: str) -> bool:
    return ":" in value or (bool(value) and value[0].isdigit() and "." in value) or "/" in value


Name = Annotated[str, AfterValidator(_name)]
PortSpec = Annotated[str, AfterValidator(_port)]
Source = Annotated[str, AfterValidator(_source)]
Interface = Annotated[str, AfterValidator(_interface)]
Rate = Annotated[str, AfterValidator(_rate)]
Verdict = Literal["drop", "reject", "accept"]
Action = Literal["accept", "drop", "reject"]
Seconds = Annotated[int, Field(ge=1, le=7 * 86400)]


class Strict(BaseModel):
    # strict: TOML has real types, so "5" for an int or "yes" for a bool is a mistake worth reporting.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, frozen=True)


class Defaults(Strict):
    inbound: Verdict = "drop"
    outbound: Verdict = "accept"
    forward: Literal["drop", "accept", "keep"] = "drop"
    log_denied: bool = False
    ping: bool = True  # admit ICMP/ICMPv6 echo requests (rate-limited)


class InboundRule(Strict):
    name: Name
    ports: list[PortSpec] | None = Field(default=None, min_length=1)  # None: every port and protocol
    from_: list[Source] = Field(alias="from", min_length=1)
    rate: Rate | None = None
    interface: Interface | None = None
    action: Action = "accept"
    unit: str | None = Field(default=None, pattern=r"^[A-Za-z0-9:_.@\\-]+\.(service|socket)$")
    daemon: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.@-]+$")
    # hosts_options(5) options for the hosts.allow export (spawn, banners, severity, twist, …), in order
    hosts_options: Annotated[list[str], AfterValidator(_hosts_options)] | None = Field(default=None, min_length=1)
    listen: Annotated[str, AfterValidator(_address)] | None = None

    @property
    def sources(self) -> list[str]:
        return self.from_


class OutboundRule(Strict):
    name: Name
    ports: list[PortSpec] | None = Field(default=None, min_length=1)
    to: list[Source] = Field(default_factory=lambda: ["any"], min_length=1)
    interface: Interface | None = None
    action: Action = "accept"
    rate: Rate | None = None

    @property
    def sources(self) -> list[str]:
        return self.to


class Block(Strict):
    from_: list[Source] = Field(default_factory=list, alias="from")
    files: list[str] = Field(default_factory=list)


class KnockDoor(Strict):
    name: Name
    sequence: list[PortSpec] = Field(min_length=1, max_length=16)
    seq_timeout: Seconds = 5
    open: list[PortSpec] = Field(min_length=1)
    open_for: Seconds = 30
    from_: list[Source] = Field(default_factory=lambda: ["any"], alias="from", min_length=1)
    interface: Interface | None = None


class SpaDoor(Strict):
    name: Name
    port: PortSpec = "62201/udp"
    open: list[PortSpec] = Field(min_length=1)
    from_: list[Source] = Field(default_factory=lambda: ["any"], alias="from", min_length=1)
    key_base64: str | None = None
    key_file: str | None = None
    hmac_key_base64: str | None = None
    hmac_key_file: str | None = None
    open_for: Seconds = 30
    max_open_for: Seconds = 300
    require_source_address: bool = False


class Watch(Strict):
    scan_ports: Annotated[int, Field(ge=2, le=65535)] = 10
    scan_window: Seconds = 5
    ban_for: Annotated[int, Field(ge=0, le=30 * 86400)] = 600
    severity: Literal["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"] = "warning"
    spawn: list[str] | None = Field(default=None, min_length=1)


class Sysctl(BaseModel):
    # extra keys are sysctl overrides by name ("net.ipv4.conf.all.rp_filter" = 2)
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    profile: Literal["host", "router"] = "host"

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Policy(Strict):
    defaults: Defaults = Field(default_factory=Defaults)
    zones: dict[str, list[Source]] = Field(default_factory=dict)
    inbound: list[InboundRule] = Field(default_factory=list)
    outbound: list[OutboundRule] = Field(default_factory=list)
    block: Block = Field(default_factory=Block)
    knock: list[KnockDoor] = Field(default_factory=list)
    spa: list[SpaDoor] = Field(default_factory=list)
    watch: Watch = Field(default_factory=Watch)
    sysctl: Sysctl = Field(default_factory=Sysctl)

    def problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Cross-field checks pydantic cannot place: (location, 'problem — fix')."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        zone_names = set(self.zones) | set(BUILTIN_ZONES)
        for zone, members in self.zones.items():
            if zone in BUILTIN_ZONES:
                found.append((("zones", zone), f"{zone!r} is built in — pick another zone name"))
            if not NAME_RE.match(zone):
                found.append((("zones", zone), f"{zone!r} is not a valid zone name — use letters, digits, _ . -"))
            for index, member in enumerate(members):
                if not looks_like_address(member):
                    found.append(
                        (
                            ("zones", zone, index),
                            f"{member!r}: a zone lists addresses or CIDRs, not names — write the addresses",
                        )
                    )
        sections: list[tuple[str, list[Any], str]] = [
            ("inbound", list(self.inbound), "from"),
            ("outbound", list(self.outbound), "to"),
            ("knock", list(self.knock), "from"),
            ("spa", list(self.spa), "from"),
        ]
        for section, rules, key in sections:
            seen: dict[str, int] = {}
            for index, rule in enumerate(rules):
                if rule.name in seen:
                    found.append(
                        (
                            (section, index, "name"),
                            f"{rule.name!r} is already the name of {section}[{seen[rule.name]}] — names must be "
                            "unique; rename one",
                        )
                    )
                seen.setdefault(rule.name, index)
                sources = rule.to if key == "to" else rule.from_
                for position, source in enumerate(sources):
                    if not looks_like_address(source) and source not in zone_names:
                        known = ", ".join(sorted(zone_names))
                        found.append(
                            (
                                (section, index, key, position),
                                f"unknown zone {source!r} — define it under [zones] or use one of: {known}",
                            )
                        )
        for position, source in enumerate(self.block.from_):
            if not looks_like_address(source) and source not in zone_names - {"any", "localhost"}:
                found.append(
                    (
                        ("block", "from", position),
                        f"unknown zone {source!r} — [block] takes addresses, CIDRs or zones from [zones]",
                    )
                )
        for index, door in enumerate(self.spa):
            if (door.key_base64 is None) == (door.key_file is None):
                found.append((("spa", index), "give exactly one of key_base64 or key_file — remove one or add one"))
            if door.max_open_for < door.open_for:
                found.append(
                    (("spa", index, "max_open_for"), "max_open_for is below open_for — raise it or lower open_for")
                )
            if door.hmac_key_base64 is not None and door.hmac_key_file is not None:  # none: spad refuses to start
                found.append((("spa", index), "give one of hmac_key_base64 or hmac_key_file, not both"))
            spa_port = parse_port_spec(door.port)
            if spa_port.proto != "udp" or spa_port.first != spa_port.last:
                found.append((("spa", index, "port"), "SPA packets arrive on one UDP port — e.g. port = \"62201/udp\""))
        for key, value in self.sysctl.overrides.items():
            if not SYSCTL_RE.match(key):
                found.append(
                    (("sysctl", key), "not a network sysctl name — use the full name, e.g. net.ipv4.conf.all.rp_filter")
                )
            elif not isinstance(value, int | str) or isinstance(value, bool):
                found.append((("sysctl", key), 'a sysctl value is an integer or a string — e.g. 0, 1 or "1"'))
        return found

    # -- resolution helpers used by compilers and evaluators --------------------------------------

    def resolve(self, sources: list[str]) -> tuple[bool, tuple[Net, ...]]:
        """Sources -> (any, networks). 'localhost' resolves to 127.0.0.0/8 and ::1."""
        nets: list[Net] = []
        for source in sources:
            if source == "any":
                return True, ()
            if source == "localhost":
                nets.extend(LOCALHOST)
            elif looks_like_address(source):
                nets.append(parse_net(source))
            else:
                nets.extend(parse_net(member) for member in self.zones.get(source, []))
        return False, tuple(nets)


def rate_parts(rate: str) -> tuple[int, str, int]:
    """'10/minute' -> (10, 'minute', burst). Burst defaults to the rate itself."""
    match = RATE_RE.match(rate)
    assert match is not None  # validated by the model
    count = int(match.group(1))
    burst = int(match.group(3)) if match.group(3) else count
    return count, match.group(2), burst


def ports_of(specs: list[str] | None) -> list[PortRange] | None:
    return None if specs is None else [parse_port_spec(spec) for spec in specs]
