"""The iptables dialect, reader side: `iptables-save` text -> the objects `nft -j list ruleset` prints.

Why: rules written through iptables-nft (Docker, ufw, fail2ban, hand-written `iptables`) show many of their
matches in `nft -j` as opaque `{"xt": ...}` expressions, and iptables-legacy rules are not in nftables at all.
Reading `iptables-save` / `ip6tables-save` / `iptables-legacy-save` text instead, and turning each rule into
the JSON nft itself lists for the equivalent native rule (what `iptables-restore-translate` would write), lets
one evaluator handle every table. tests/dialects/test_iptables_read.py keeps this exact: over the corpus in
tests/corpus/iptables/ the output equals what the kernel lists back for the translated rules.

    parse_save(text, 4 | 6, source=...) -> [{"table": ...}, {"chain": ...}, ..., {"rule": ...}, ...]

Objects come in the order nft lists them: per table (file order) the table, its chains (declaration order),
then the rules chain by chain. Handles are 0 and counters are dropped: they are not part of what a rule
does. `-m comment` becomes the rule's "comment", as in nft.

Translated: -s/-d (CIDR, host, netmask, comma lists -> one rule per address, as iptables does), -i/-o
(`eth+` -> "eth*"), -p, -f, -m tcp/udp/sctp (ports, --tcp-flags, --syn), multiport, conntrack/state
(state, status, direction, protocol, ports), iprange, icmp/icmp6 (names, numbers, type/code), addrtype
(-> fib), limit, comment, ttl/hl, pkttype, mark; targets ACCEPT/DROP/RETURN, jump/goto, REJECT, LOG, NFLOG.
Kept opaque, exactly as nft shows a match or target it cannot open up: every other match (set, recent,
string, owner, physdev, ...) as {"xt": {"type": "match", "name": NAME}}, and a known match whose options have
no nft form that means the same (conntrack addresses, expiry, SNAT/DNAT pseudo-states or ports without
--ctproto; --tcp-option; sctp --chunk-types; a negated ICMP type/code); every other target (MASQUERADE,
DNAT, SNAT, REDIRECT, MARK, CT, TRACE, ...) as {"xt": {"type": "target", "name": NAME}}.

Bad input raises IptablesSaveError (an InputError) listing every bad line as FILE:LINE: key: problem — fix.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from portward.errors import BadLine, Problem, ProblemsError

Json = dict[str, Any]

FAMILY_NAMES = {4: "ip", 6: "ip6"}
MAX_PROBLEMS = 20  # a file that is not iptables-save text at all gets a short report, not one line per line


class IptablesSaveError(ProblemsError):
    """Every problem found in iptables-save text, each at FILE:LINE: key."""

    what = "invalid iptables-save input"


# --- tables and built-in chains ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    hook: str
    prio: int
    type: str = "filter"


def _same_prio(prio: int, *hooks: str) -> dict[str, Hook]:
    return {hook.upper(): Hook(hook, prio) for hook in hooks}


# Hook, priority and chain type of each built-in chain, as iptables-nft registers them (and as the legacy
# tables hook in), so rules read here sort against native nftables chains the way the kernel runs them.
BUILTIN_CHAINS: dict[str, dict[str, Hook]] = {
    "raw": _same_prio(-300, "prerouting", "output"),
    "mangle": {
        **_same_prio(-150, "prerouting", "input", "forward"),
        "OUTPUT": Hook("output", -150, "route"),  # re-routes after a mark change, like iptable_mangle
        "POSTROUTING": Hook("postrouting", -150),
    },
    "nat": {
        "PREROUTING": Hook("prerouting", -100, "nat"),
        "INPUT": Hook("input", 100, "nat"),
        "OUTPUT": Hook("output", -100, "nat"),
        "POSTROUTING": Hook("postrouting", 100, "nat"),
    },
    "filter": _same_prio(0, "input", "forward", "output"),
    # NF_IP_PRI_SECURITY, where the legacy table hooks. iptables-nft 1.8.9 registers 150 and
    # iptables-restore-translate prints 0; all three run after filter, which is what an evaluator needs.
    "security": _same_prio(50, "input", "forward", "output"),
}
VERDICTS = {"ACCEPT": "accept", "DROP": "drop", "RETURN": "return"}
CHAIN_NAME_MAX = 28  # XT_EXTENSION_MAXNAMELEN - 1: longer names are refused by iptables-restore
IFNAME_MAX = 15  # IFNAMSIZ - 1

# --- protocols: netbase's /etc/protocols, which nft prints by (getprotobynumber) -----------------------

_PROTOCOLS_TEXT = """
ip 0 hopopt 0 icmp 1 igmp 2 ggp 3 ipencap 4 st 5 tcp 6 egp 8 igp 9 pup 12 udp 17 hmp 20 xns-idp 22 rdp 27
iso-tp4 29 dccp 33 xtp 36 ddp 37 idpr-cmtp 38 ipv6 41 ipv6-route 43 ipv6-frag 44 idrp 45 rsvp 46 gre 47 esp 50
ah 51 skip 57 ipv6-icmp 58 ipv6-nonxt 59 ipv6-opts 60 rspf 73 vmtp 81 eigrp 88 ospf 89 ax.25 93 ipip 94
etherip 97 encap 98 pim 103 ipcomp 108 vrrp 112 l2tp 115 isis 124 sctp 132 fc 133 mobility-header 135
udplite 136 mpls-in-ip 137 manet 138 hip 139 shim6 140 wesp 141 rohc 142 ethernet 143
"""
_WORDS = _PROTOCOLS_TEXT.split()
PROTOCOL_NAMES: dict[int, str] = {}
for _name, _number in zip(_WORDS[::2], _WORDS[1::2], strict=True):
    PROTOCOL_NAMES.setdefault(int(_number), _name)
PROTOCOL_NUMBERS: dict[str, int] = {name: int(number) for name, number in zip(_WORDS[::2], _WORDS[1::2], strict=True)}
# netbase's aliases and iptables' own built-in names (xtables_chain_protos)
PROTOCOL_NUMBERS.update(
    {"ipsec-esp": 50, "ipsec-ah": 51, "ospfigp": 89, "icmpv6": 58, "ipv6-mh": 135, "mh": 135, "all": 0}
)
TCP, UDP, ICMP, SCTP, DCCP, ICMPV6, UDPLITE = 6, 17, 1, 132, 33, 58, 136
# payload protocol names nft uses for transport headers: such a match makes `ip protocol X` redundant
L4_PAYLOADS = {"tcp": TCP, "udp": UDP, "udplite": UDPLITE, "sctp": SCTP, "dccp": DCCP, "icmp": ICMP, "icmpv6": ICMPV6}

# --- ICMP: iptables' names -> (type, code or None for any code); nft's names for printing ------------------

ICMP_NAMES: dict[str, tuple[int, int | None]] = {
    "echo-reply": (0, None),
    "pong": (0, None),
    "destination-unreachable": (3, None),
    "network-unreachable": (3, 0),
    "host-unreachable": (3, 1),
    "protocol-unreachable": (3, 2),
    "port-unreachable": (3, 3),
    "fragmentation-needed": (3, 4),
    "source-route-failed": (3, 5),
    "network-unknown": (3, 6),
    "host-unknown": (3, 7),
    "network-prohibited": (3, 9),
    "host-prohibited": (3, 10),
    "tos-network-unreachable": (3, 11),
    "tos-host-unreachable": (3, 12),
    "communication-prohibited": (3, 13),
    "host-precedence-violation": (3, 14),
    "precedence-cutoff": (3, 15),
    "source-quench": (4, None),
    "redirect": (5, None),
    "network-redirect": (5, 0),
    "host-redirect": (5, 1),
    "tos-network-redirect": (5, 2),
    "tos-host-redirect": (5, 3),
    "echo-request": (8, None),
    "ping": (8, None),
    "router-advertisement": (9, None),
    "router-solicitation": (10, None),
    "time-exceeded": (11, None),
    "ttl-exceeded": (11, None),
    "ttl-zero-during-transit": (11, 0),
    "ttl-zero-during-reassembly": (11, 1),
    "parameter-problem": (12, None),
    "ip-header-bad": (12, 0),
    "required-option-missing": (12, 1),
    "timestamp-request": (13, None),
    "timestamp-reply": (14, None),
    "address-mask-request": (17, None),
    "address-mask-reply": (18, None),
}
ICMPV6_NAMES: dict[str, tuple[int, int | None]] = {
    "destination-unreachable": (1, None),
    "no-route": (1, 0),
    "communication-prohibited": (1, 1),
    "beyond-scope": (1, 2),
    "address-unreachable": (1, 3),
    "port-unreachable": (1, 4),
    "failed-policy": (1, 5),
    "reject-route": (1, 6),
    "packet-too-big": (2, None),
    "time-exceeded": (3, None),
    "ttl-exceeded": (3, None),
    "ttl-zero-during-transit": (3, 0),
    "ttl-zero-during-reassembly": (3, 1),
    "parameter-problem": (4, None),
    "bad-header": (4, 0),
    "unknown-header-type": (4, 1),
    "unknown-option": (4, 2),
    "echo-request": (128, None),
    "ping": (128, None),
    "echo-reply": (129, None),
    "pong": (129, None),
    "mld-listener-query": (130, None),
    "mld-listener-report": (131, None),
    "mld-listener-done": (132, None),
    "mld-listener-reduction": (132, None),
    "router-solicitation": (133, None),
    "router-advertisement": (134, None),
    "neighbour-solicitation": (135, None),
    "neighbor-solicitation": (135, None),
    "neighbour-advertisement": (136, None),
    "neighbor-advertisement": (136, None),
    "redirect": (137, None),
}
NFT_ICMP_TYPES = {
    0: "echo-reply",
    3: "destination-unreachable",
    4: "source-quench",
    5: "redirect",
    8: "echo-request",
    9: "router-advertisement",
    10: "router-solicitation",
    11: "time-exceeded",
    12: "parameter-problem",
    13: "timestamp-request",
    14: "timestamp-reply",
    15: "info-request",
    16: "info-reply",
    17: "address-mask-request",
    18: "address-mask-reply",
}
# nft names ICMP codes from one table whatever the type
NFT_ICMP_CODES = {
    0: "net-unreachable",
    1: "host-unreachable",
    2: "prot-unreachable",
    3: "port-unreachable",
    4: "frag-needed",
    9: "net-prohibited",
    10: "host-prohibited",
    13: "admin-prohibited",
}
NFT_ICMPV6_TYPES = {
    1: "destination-unreachable",
    2: "packet-too-big",
    3: "time-exceeded",
    4: "parameter-problem",
    128: "echo-request",
    129: "echo-reply",
    130: "mld-listener-query",
    131: "mld-listener-report",
    132: "mld-listener-done",
    133: "nd-router-solicit",
    134: "nd-router-advert",
    135: "nd-neighbor-solicit",
    136: "nd-neighbor-advert",
    137: "nd-redirect",
    138: "router-renumbering",
    141: "ind-neighbor-solicit",
    142: "ind-neighbor-advert",
    143: "mld2-listener-report",
}
NFT_ICMPV6_CODES = {
    0: "no-route",
    1: "admin-prohibited",
    3: "addr-unreachable",
    4: "port-unreachable",
    5: "policy-fail",
    6: "reject-route",
}

# --- bit sets, in the bit order nft lists them ---------------------------------------------------------

TCP_FLAGS = {"FIN": 1, "SYN": 2, "RST": 4, "PSH": 8, "ACK": 16, "URG": 32}
TCP_FLAG_GROUPS = {"ALL": 63, "NONE": 0}
CT_STATES = {"INVALID": 1, "ESTABLISHED": 2, "RELATED": 4, "NEW": 8, "UNTRACKED": 64}
CT_PSEUDO_STATES = {"SNAT": 256, "DNAT": 512}  # conntrack-only; 'state OR status', which nft cannot say in one match
CT_STATUSES = {"EXPECTED": 1, "SEEN_REPLY": 2, "ASSURED": 4, "CONFIRMED": 8}
NFT_BIT_NAMES = {
    "tcp": {1: "fin", 2: "syn", 4: "rst", 8: "psh", 16: "ack", 32: "urg"},
    "state": {1: "invalid", 2: "established", 4: "related", 8: "new", 64: "untracked"},
    "status": {1: "expected", 2: "seen-reply", 4: "assured", 8: "confirmed"},
}
# addrtype names -> rtn types; nft names 0..8 and prints the rest as numbers
ADDRESS_TYPES = {
    "UNSPEC": 0,
    "UNICAST": 1,
    "LOCAL": 2,
    "BROADCAST": 3,
    "ANYCAST": 4,
    "MULTICAST": 5,
    "BLACKHOLE": 6,
    "UNREACHABLE": 7,
    "PROHIBIT": 8,
    "THROW": 9,
    "NAT": 10,
    "XRESOLVE": 11,
}
NFT_ADDRESS_TYPES = [
    *("unspec", "unicast", "local", "broadcast", "anycast"),
    *("multicast", "blackhole", "unreachable", "prohibit"),
]
PACKET_TYPES = {
    "unicast": "host",
    "host": "host",
    "broadcast": "broadcast",
    "multicast": "multicast",
    "otherhost": "other",
}
LOG_LEVELS = {
    **{"emerg": 0, "panic": 0, "alert": 1, "crit": 2, "error": 3, "err": 3},
    **{"warning": 4, "warn": 4, "notice": 5, "info": 6, "debug": 7},
}
NFT_LOG_LEVELS = ["emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"]
LOG_FLAGS = {  # option -> nft flag, in nft's listing order
    "log-tcp-sequence": "tcp sequence",
    "log-tcp-options": "tcp options",
    "log-ip-options": "ip options",
    "log-uid": "skuid",
    "log-macdecode": "ether",
}
REJECT_V4 = {
    "icmp-net-unreachable": "net-unreachable",
    "net-unreach": "net-unreachable",
    "icmp-host-unreachable": "host-unreachable",
    "host-unreach": "host-unreachable",
    "icmp-proto-unreachable": "prot-unreachable",
    "proto-unreach": "prot-unreachable",
    "icmp-port-unreachable": "port-unreachable",
    "port-unreach": "port-unreachable",
    "icmp-net-prohibited": "net-prohibited",
    "net-prohib": "net-prohibited",
    "icmp-host-prohibited": "host-prohibited",
    "host-prohib": "host-prohibited",
    "icmp-admin-prohibited": "admin-prohibited",
    "admin-prohib": "admin-prohibited",
}
REJECT_V6 = {
    "icmp6-no-route": "no-route",
    "no-route": "no-route",
    "icmp6-adm-prohibited": "admin-prohibited",
    "adm-prohibited": "admin-prohibited",
    "icmp6-addr-unreachable": "addr-unreachable",
    "addr-unreach": "addr-unreachable",
    "icmp6-port-unreachable": "port-unreachable",
    "port-unreach": "port-unreachable",
    "icmp6-policy-fail": "policy-fail",
    "policy-fail": "policy-fail",
    "icmp6-reject-route": "reject-route",
    "reject-route": "reject-route",
}
LIMIT_SCALE = 10000  # XT_LIMIT_SCALE: iptables stores a rate as the period in 1/10000 s, rounded down
LIMIT_UNITS = [("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)]


# --- small JSON builders ---------------------------------------------------------------------------------


def _match(left: Any, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field_name: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field_name}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _one_or_list(items: list[Any]) -> Any:
    """nft prints a one-element list as the element itself."""
    return items[0] if len(items) == 1 else items


def _bits(kind: str, mask: int) -> Any:
    names = NFT_BIT_NAMES[kind]
    return _one_or_list([name for bit, name in names.items() if mask & bit])


def _port_value(first: int, last: int) -> Any:
    return first if first == last else {"range": [first, last]}


def _xt(kind: str, name: str) -> Json:
    return {"xt": {"type": kind, "name": name}}


# --- value parsers (each raises BadLine with the option as key) ---------------------------------------------


def _uint(text: str, key: str, limit: int, what: str = "number") -> int:
    # isascii: str.isdigit() also accepts digits int() refuses ('²')
    if not (text.isascii() and text.isdigit()) or int(text) > limit:
        raise BadLine(key, f"'{text}' is not a {what} — use a whole number 0-{limit}")
    return int(text)


def _protocol(text: str, key: str) -> int:
    name = text.lower()  # iptables lowercases -p before looking it up
    if name.isascii() and name.isdigit():
        return _uint(name, key, 255, "protocol number")
    if name in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[name]
    raise BadLine(key, f"unknown protocol '{text}' — use a name such as tcp, udp, icmp, icmpv6, sctp, all, or a number")


def _protocol_value(number: int) -> Any:
    return PROTOCOL_NAMES.get(number, number)


def _port(text: str, key: str, proto: str) -> int:
    if text.isascii() and text.isdigit():
        return _uint(text, key, 65535, "port")
    if text.isascii() and text[:1].isalpha() and all(ch.isalnum() or ch in "._+-" for ch in text):
        try:
            # iptables resolves service names the same way (getservbyname)
            return socket.getservbyname(text, proto if proto in ("tcp", "udp") else "tcp")
        except OSError:
            pass
    raise BadLine(key, f"'{text}' is not a port — use a number 0-65535 or a service name")


def _port_range(text: str, key: str, proto: str) -> tuple[int, int]:
    """'22', '1000:2000', ':1023' (from 0), '1024:' (to 65535)."""
    if ":" in text:
        low_text, high_text = text.split(":", 1)
        low = _port(low_text, key, proto) if low_text else 0
        high = _port(high_text, key, proto) if high_text else 65535
    else:
        low = high = _port(text, key, proto)
    if low > high:
        raise BadLine(key, f"port range '{text}' starts after it ends — write it as LOW:HIGH")
    return low, high


def _address(text: str, family: int, key: str) -> int:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise BadLine(
            key, f"'{text}' is not an IPv{family} address — write it as a number (names are not looked up)"
        ) from None
    if address.version != family:
        raise BadLine(key, f"'{text}' is an IPv{address.version} address in an IPv{family} ruleset — move it")
    return int(address)


def _format(family: int, value: int) -> str:
    # glibc's inet_ntop, which nft uses: '::ffff:198.18.0.1' stays dotted where ipaddress would not
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def _network(text: str, family: int, key: str) -> tuple[int, int]:
    """'198.18.0.1', '198.18.0.0/15', '198.18.0.0/255.254.0.0' -> (address & mask, mask), as iptables masks it."""
    width = 32 if family == 4 else 128
    full = (1 << width) - 1
    address_text, _, mask_text = text.partition("/")
    address = _address(address_text, family, key)
    if not mask_text:
        mask = full
    elif mask_text.isascii() and mask_text.isdigit():
        length = _uint(mask_text, key, width, "prefix length")
        mask = full ^ (full >> length)
    else:
        mask = _address(mask_text, family, key)
    return address & mask, mask


def _address_match(family: int, field_name: str, network: int, mask: int, negated: bool) -> Json | None:
    width = 32 if family == 4 else 128
    full = (1 << width) - 1
    left = _payload(FAMILY_NAMES[family], field_name)
    op = "!=" if negated else "=="
    if mask == 0 and not negated:
        return None  # 0.0.0.0/0 matches every packet: iptables stores no match for it
    length = width - (full ^ mask).bit_length()
    if mask != full ^ (full >> length):  # a netmask with holes: nft compares the masked address
        return _match({"&": [left, _format(family, mask)]}, _format(family, network), op)
    if length == width:
        return _match(left, _format(family, network), op)
    return _match(left, {"prefix": {"addr": _format(family, network), "len": length}}, op)


def _interface(text: str, key: str) -> str:
    if not text or len(text.encode("utf-8", "surrogatepass")) > IFNAME_MAX:
        raise BadLine(key, f"'{text}' is not an interface name — use at most {IFNAME_MAX} characters, '+' as wildcard")
    if text.endswith("+"):
        return text[:-1] + "*"  # iptables' prefix wildcard is nft's
    if text.endswith("*"):
        return text[:-1] + "\\*"  # a literal '*' that nft would otherwise read as a wildcard
    return text


def _words(text: str, key: str, table: dict[str, int], what: str) -> int:
    """'ESTABLISHED,RELATED' -> OR of the bits; names case-insensitive."""
    bits = 0
    for word in text.split(","):
        if word.upper() not in table:
            known = ", ".join(table)
            raise BadLine(key, f"'{word}' is not a {what} — use a comma list of {known}")
        bits |= table[word.upper()]
    return bits


# --- matches and targets ---------------------------------------------------------------------------------


@dataclass
class _Option:
    negated: bool
    args: list[str]


@dataclass
class _Ctx:
    family: int
    proto: int  # 0: any
    proto_negated: bool


Translator = Callable[["_Ext", _Ctx], "list[Json] | None"]  # None: keep the extension opaque (xt)


@dataclass(frozen=True)
class _Spec:
    """The options an extension takes: spelling -> (canonical name, number of arguments, may be negated)."""

    options: dict[str, tuple[str, int, bool]]
    translate: Translator
    families: tuple[int, ...] = (4, 6)
    protocols: tuple[int, ...] = ()  # the -p it needs (the kernel refuses the rule otherwise)


@dataclass
class _Ext:
    kind: str  # "match" or "target"
    name: str
    spec: _Spec | None  # None: not understood here, its options are skipped and it stays opaque
    options: dict[str, _Option] = field(default_factory=dict)

    def flag(self, name: str) -> bool:
        return name in self.options

    def arg(self, name: str) -> str | None:
        option = self.options.get(name)
        return option.args[0] if option else None

    def negated(self, name: str) -> bool:
        option = self.options.get(name)
        return bool(option and option.negated)


def _opts(*entries: tuple[str, int, bool]) -> dict[str, tuple[str, int, bool]]:
    """('sport|source-port', 1, True) -> {'--sport': ('sport', 1, True), '--source-port': ('sport', 1, True)}."""
    table: dict[str, tuple[str, int, bool]] = {}
    for spellings, nargs, negatable in entries:
        names = spellings.split("|")
        for name in names:
            table[f"--{name}"] = (names[0], nargs, negatable)
    return table


def _ports_match(proto_name: str, ext: _Ext) -> list[Json]:
    out: list[Json] = []
    for direction in ("sport", "dport"):  # iptables-translate's order, whatever the order written
        text = ext.arg(direction)
        if text is None:
            continue
        first, last = _port_range(text, f"--{direction}", proto_name)
        negated = ext.negated(direction)
        if (first, last) == (0, 65535) and not negated:
            continue  # the whole range: iptables matches every port
        out.append(_match(_payload(proto_name, direction), _port_value(first, last), "!=" if negated else "=="))
    return out


def _tcp(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    if ext.flag("tcp-option"):
        return None  # nft can test an option's presence but not iptables' "option number N" the same way
    if ext.flag("syn") and ext.flag("tcp-flags"):
        raise BadLine("--syn", "--syn and --tcp-flags both given — keep one (--syn is FIN,SYN,RST,ACK SYN)")
    out = _ports_match("tcp", ext)
    if ext.flag("syn"):
        mask, compare, negated = 23, 2, ext.negated("syn")
    elif ext.flag("tcp-flags"):
        mask_text, compare_text = ext.options["tcp-flags"].args
        groups = {**TCP_FLAGS, **TCP_FLAG_GROUPS}
        mask = _words(mask_text, "--tcp-flags", groups, "TCP flag")
        compare = _words(compare_text, "--tcp-flags", groups, "TCP flag")
        negated = ext.negated("tcp-flags")
    else:
        return out
    if compare & ~mask or (mask == 0 and negated):
        return None  # never matches; nft has no plain way to say so
    if mask == 0:
        return out  # no flags tested: every segment matches
    flags = _payload("tcp", "flags")
    if compare == 0:
        # 'tcp flags 0x0 / MASK' lists as a bare flag test: op "!" (none set), "in" (some set)
        out.append(_match(flags, _bits("tcp", mask), "in" if negated else "!"))
    else:
        out.append(_match({"&": [flags, _bits("tcp", mask)]}, _bits("tcp", compare), "!=" if negated else "=="))
    return out


def _udp(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    return _ports_match("udp", ext)


def _sctp(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    if ext.flag("chunk-types"):
        return None
    return _ports_match("sctp", ext)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The elements nft lists for an anonymous set of these ports.

    With a range among them the set is an interval set, which joins overlapping and adjacent elements
    ({ 20-21, 22 } lists as { 20-22 }); without one it is a hash set, which only drops duplicates.
    """
    if all(first == last for first, last in spans):
        return sorted(set(spans))
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _multiport(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    given = [name for name in ("sports", "dports", "ports") if ext.flag(name)]
    if len(given) != 1:
        raise BadLine("-m multiport", "give one of --sports, --dports, --ports — use a second -m multiport for another")
    which = given[0]
    key = f"--{which}"
    proto_name = PROTOCOL_NAMES[ctx.proto]
    spans: list[tuple[int, int]] = []
    slots = 0
    for item in ext.options[which].args[0].split(","):
        first, last = _port_range(item, key, proto_name)
        if ":" in item and (item.startswith(":") or item.endswith(":") or first == last):
            raise BadLine(key, f"'{item}' is not a multiport range — write LOW:HIGH with LOW < HIGH")
        spans.append((first, last))
        slots += 1 if first == last else 2
    if slots > 15:
        raise BadLine(key, "more than 15 ports (a range counts twice) — split the rule")
    values = [_port_value(first, last) for first, last in _merge(spans)]
    op = "!=" if ext.negated(which) else "=="
    if which == "ports":
        # "source or destination port in the list": iptables-translate's concatenation, one element per side
        anyport = {"range": [0, 65535]}
        elements: list[Json] = []
        for value in values:
            elements += [{"concat": [anyport, value]}, {"concat": [value, anyport]}]
        left = {"concat": [_payload(proto_name, "sport"), _payload(proto_name, "dport")]}
        return [_match(left, {"set": elements}, op)]
    right = {"set": values} if len(spans) > 1 else values[0]
    return [_match(_payload(proto_name, which[:-1]), right, op)]


CT_PORT_OPTIONS = {
    "ctorigsrcport": ("original", "proto-src"),
    "ctorigdstport": ("original", "proto-dst"),
    "ctreplsrcport": ("reply", "proto-src"),
    "ctrepldstport": ("reply", "proto-dst"),
}


def _ct_bits(key: str, bits: int, negated: bool) -> Json:
    return _match({"ct": {"key": key}}, _bits(key, bits), "!" if negated else "in")


def _conntrack(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    if any(ext.flag(name) for name in ("ctorigsrc", "ctorigdst", "ctreplsrc", "ctrepldst", "ctexpire")):
        return None  # nft lists masked ct addresses wrongly (1.0.6), and expiry compares differ
    if not ext.flag("ctproto") and any(ext.flag(name) for name in CT_PORT_OPTIONS):
        return None  # nft refuses a ct port test without the ct protocol that gives the port its meaning
    out: list[Json] = []
    direction = ext.arg("ctdir")
    if direction is not None:
        if direction.upper() not in ("ORIGINAL", "REPLY"):
            raise BadLine("--ctdir", f"'{direction}' is not a direction — use ORIGINAL or REPLY")
        out.append(_match({"ct": {"key": "direction"}}, direction.lower()))
    proto = ext.arg("ctproto")
    if proto is not None:
        number = _protocol(proto, "--ctproto")
        op = "!=" if ext.negated("ctproto") else "=="
        out.append(_match({"ct": {"key": "protocol"}}, _protocol_value(number), op))
    state = ext.arg("ctstate")
    if state is not None:
        bits = _words(state, "--ctstate", {**CT_STATES, **CT_PSEUDO_STATES}, "conntrack state")
        if bits & (256 | 512):
            return None
        out.append(_ct_bits("state", bits, ext.negated("ctstate")))
    status = ext.arg("ctstatus")
    if status is not None:
        bits = _words(status, "--ctstatus", {**CT_STATUSES, "NONE": 0}, "conntrack status")
        if bits == 0:
            return None  # 'no status bit set' has no ct status form
        out.append(_ct_bits("status", bits, ext.negated("ctstatus")))
    for option, (nft_dir, nft_key) in CT_PORT_OPTIONS.items():
        text = ext.arg(option)
        if text is not None:
            first, last = _port_range(text, f"--{option}", "tcp")
            left = {"ct": {"key": nft_key, "dir": nft_dir}}
            out.append(_match(left, _port_value(first, last), "!=" if ext.negated(option) else "=="))
    return out


def _state(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    bits = _words(ext.arg("state") or "", "--state", CT_STATES, "connection state")
    return [_ct_bits("state", bits, ext.negated("state"))]


def _iprange(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    out: list[Json] = []
    for option, field_name in (("src-range", "saddr"), ("dst-range", "daddr")):
        text = ext.arg(option)
        if text is None:
            continue
        first_text, dash, last_text = text.partition("-")
        if not dash:
            raise BadLine(f"--{option}", f"'{text}' is not a range — write FIRST-LAST")
        first = _address(first_text, ctx.family, f"--{option}")
        last = _address(last_text, ctx.family, f"--{option}")
        if first > last:
            raise BadLine(f"--{option}", f"range '{text}' starts after it ends — swap the addresses")
        right = {"range": [_format(ctx.family, first), _format(ctx.family, last)]}
        left = _payload(FAMILY_NAMES[ctx.family], field_name)
        out.append(_match(left, right, "!=" if ext.negated(option) else "=="))
    return out


def _addrtype(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    if ext.flag("limit-iface-in") and ext.flag("limit-iface-out"):
        raise BadLine("--limit-iface-in", "--limit-iface-in and --limit-iface-out both given — keep one")
    interface = ["iif"] if ext.flag("limit-iface-in") else ["oif"] if ext.flag("limit-iface-out") else []
    out: list[Json] = []
    for option, flag in (("src-type", "saddr"), ("dst-type", "daddr")):
        text = ext.arg(option)
        if text is None:
            continue
        bits = _words(text, f"--{option}", {name: 1 << rtn for name, rtn in ADDRESS_TYPES.items()}, "address type")
        names: list[Any] = []
        for rtn in range(len(ADDRESS_TYPES)):
            if bits & (1 << rtn):
                names.append(NFT_ADDRESS_TYPES[rtn] if rtn < len(NFT_ADDRESS_TYPES) else rtn)
        right = names[0] if len(names) == 1 else {"set": names}
        left = {"fib": {"result": "type", "flags": [flag, *interface]}}
        out.append(_match(left, right, "!=" if ext.negated(option) else "=="))
    return out


def _icmp_common(
    ext: _Ext, option: str, names: dict[str, tuple[int, int | None]], nft: tuple[str, dict[int, str], dict[int, str]]
) -> list[Json] | None:
    text = ext.arg(option) or ""
    negated = ext.negated(option)
    key = f"--{option}"
    lowered = text.lower()
    if not ext.flag(option):
        return []  # `-m icmp` alone: any type, as in iptables
    if lowered == "any" and option == "icmp-type":
        return None if negated else []  # every ICMP packet: only the protocol (-p icmp) is left to test
    if lowered in names:
        icmp_type, code = names[lowered]
    else:
        candidates = [name for name in names if name.startswith(lowered)] if lowered else []
        if len(candidates) == 1:  # iptables takes an unambiguous prefix of a name
            icmp_type, code = names[candidates[0]]
        elif "/" in text:
            type_text, code_text = text.split("/", 1)
            icmp_type, code = _uint(type_text, key, 255, "ICMP type"), _uint(code_text, key, 255, "ICMP code")
        elif text.isascii() and text.isdigit():
            icmp_type, code = _uint(text, key, 255, "ICMP type"), None
        else:
            raise BadLine(
                key, f"'{text}' is not an ICMP type — use a name such as echo-request, a number, or TYPE/CODE"
            )
    protocol, type_names, code_names = nft
    out = [_match(_payload(protocol, "type"), type_names.get(icmp_type, icmp_type), "!=" if negated else "==")]
    if code is not None:
        if negated:
            return None  # not (type and code) is not two negated matches
        out.append(_match(_payload(protocol, "code"), code_names.get(code, code)))
    return out


def _icmp(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    return _icmp_common(ext, "icmp-type", ICMP_NAMES, ("icmp", NFT_ICMP_TYPES, NFT_ICMP_CODES))


def _icmp6(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    return _icmp_common(ext, "icmpv6-type", ICMPV6_NAMES, ("icmpv6", NFT_ICMPV6_TYPES, NFT_ICMPV6_CODES))


def _limit(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    text = ext.arg("limit") or "3/hour"
    number, slash, unit = text.partition("/")
    seconds = 1
    if slash:
        # iptables accepts any prefix of the unit: /s, /sec, /min, /h ...
        matches = [length for name, length in reversed(LIMIT_UNITS) if unit and name.startswith(unit.lower())]
        if not matches:
            raise BadLine("--limit", f"'{text}' is not a rate — write N/second, N/minute, N/hour or N/day")
        seconds = matches[0]
    rate = _uint(number, "--limit", 2**32 - 1, "rate")
    period = LIMIT_SCALE * seconds // rate if rate else 0
    if period == 0:
        raise BadLine("--limit", f"'{text}' is too fast or zero — use at most 10000/second")
    burst = _uint(ext.arg("limit-burst") or "5", "--limit-burst", 10000, "burst")
    if burst == 0:
        raise BadLine("--limit-burst", "a burst of 0 lets nothing through — use 1 or more")
    # iptables stores only the period and prints it back in the largest unit that keeps it whole enough;
    # nft shows what iptables-restore-translate writes from that, so compute it the same way
    units = [(name, LIMIT_SCALE * length) for name, length in LIMIT_UNITS]
    index = 1
    while index < len(units):
        scaled = units[index][1]
        if period > scaled or scaled // period < scaled % period:
            break
        index += 1
    name, scaled = units[index - 1]
    return [{"limit": {"rate": scaled // period, "burst": burst, "per": name}}]


def _comment(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    return []  # becomes the rule's comment


def _hoplimit(field_name: str, prefix: str) -> Translator:
    def translate(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
        given = [name for name in (f"{prefix}-eq", f"{prefix}-lt", f"{prefix}-gt") if ext.flag(name)]
        if len(given) != 1:
            raise BadLine(f"-m {ext.name}", f"give exactly one of --{prefix}-eq, --{prefix}-lt, --{prefix}-gt")
        option = given[0]
        value = _uint(ext.arg(option) or "", f"--{option}", 255, "hop count")
        op = {"eq": "!=" if ext.negated(option) else "==", "lt": "<", "gt": ">"}[option[-2:]]
        return [_match(_payload(FAMILY_NAMES[ctx.family], field_name), value, op)]

    return translate


def _pkttype(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    text = ext.arg("pkt-type") or ""
    if text.lower() not in PACKET_TYPES:
        raise BadLine("--pkt-type", f"'{text}' is not a packet type — use unicast, broadcast, multicast or otherhost")
    return [_match(_meta("pkttype"), PACKET_TYPES[text.lower()], "!=" if ext.negated("pkt-type") else "==")]


def _c_number(text: str, key: str) -> int:
    """A 32-bit number as iptables reads it (strtoul base 0): 0x1f, 017, 31."""
    digits, base = text, 10
    if text[:2].lower() == "0x":
        digits, base = text[2:], 16
    elif text.startswith("0") and len(text) > 1:
        digits, base = text[1:], 8
    allowed = "0123456789abcdefABCDEF"[: base + (6 if base == 16 else 0)]
    if not digits or not all(char in allowed for char in digits) or int(digits, base) > 0xFFFFFFFF:
        raise BadLine(key, f"'{text}' is not a 32-bit number — write it as 0x1f or 31")
    return int(digits, base)


def _mark(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    value_text, slash, mask_text = (ext.arg("mark") or "").partition("/")
    value = _c_number(value_text, "--mark")
    mask = _c_number(mask_text, "--mark") if slash else 0xFFFFFFFF
    if value & ~mask or mask == 0:
        return None  # never / always true: nft has no form that lists back the same
    left: Json = _meta("mark") if mask == 0xFFFFFFFF else {"&": [_meta("mark"), mask]}
    return [_match(left, value, "!=" if ext.negated("mark") else "==")]


def _log(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    body: Json = {}
    prefix = ext.arg("log-prefix")
    if prefix is not None:
        if len(prefix) > 29:
            raise BadLine("--log-prefix", "longer than 29 characters — shorten it")
        if prefix:
            body["prefix"] = prefix
    level_text = ext.arg("log-level")
    if level_text is not None:
        lowered = level_text.lower()
        if lowered.isascii() and lowered.isdigit():
            level = _uint(lowered, "--log-level", 7, "log level")
        else:
            candidates = {LOG_LEVELS[name] for name in LOG_LEVELS if lowered and name.startswith(lowered)}
            if len(candidates) != 1:
                raise BadLine("--log-level", f"'{level_text}' is not a log level — use 0-7 or emerg ... debug")
            level = candidates.pop()
        if level != 4:  # warn is nft's default and is not listed
            body["level"] = NFT_LOG_LEVELS[level]
    flags = [flag for option, flag in LOG_FLAGS.items() if ext.flag(option)]
    if len(flags) == len(LOG_FLAGS):
        body["flags"] = "all"
    elif flags:
        body["flags"] = _one_or_list(flags)
    return [{"log": body or None}]


def _nflog(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    body: Json = {}
    prefix = ext.arg("nflog-prefix")
    if prefix is not None:
        if len(prefix) > 63:
            raise BadLine("--nflog-prefix", "longer than 63 characters — shorten it")
        if prefix:
            body["prefix"] = prefix
    body["group"] = _uint(ext.arg("nflog-group") or "0", "--nflog-group", 65535, "group")
    size = ext.arg("nflog-size")
    if size is not None:
        body["snaplen"] = _uint(size, "--nflog-size", 2**32 - 1, "size")
    if ext.arg("nflog-range") is not None:
        _uint(ext.arg("nflog-range") or "", "--nflog-range", 2**32 - 1, "size")  # never worked in the kernel
    threshold = ext.arg("nflog-threshold")
    if threshold is not None and _uint(threshold, "--nflog-threshold", 65535, "threshold"):
        body["queue-threshold"] = int(threshold)
    return [{"log": body}]


def _reject(ext: _Ext, ctx: _Ctx) -> list[Json] | None:
    text = ext.arg("reject-with")
    if text is not None and text.lower() in ("tcp-reset", "tcp-rst"):
        if ctx.proto != TCP or ctx.proto_negated:
            raise BadLine("--reject-with", "tcp-reset needs -p tcp (the kernel refuses it otherwise) — add -p tcp")
        return [{"reject": {"type": "tcp reset"}}]
    table, kind = (REJECT_V4, "icmp") if ctx.family == 4 else (REJECT_V6, "icmpv6")
    if text is None:
        return [{"reject": {"type": kind, "expr": "port-unreachable"}}]
    if text.lower() not in table:
        known = ", ".join(name for name in table if name.startswith("icmp"))
        raise BadLine("--reject-with", f"'{text}' is not a reject type here — use tcp-reset or one of {known}")
    return [{"reject": {"type": kind, "expr": table[text.lower()]}}]


PORT_OPTS = _opts(("sport|source-port", 1, True), ("dport|destination-port", 1, True))
MATCHES: dict[str, _Spec] = {
    "tcp": _Spec(
        {**PORT_OPTS, **_opts(("tcp-flags", 2, True), ("syn", 0, True), ("tcp-option", 1, True))},
        _tcp,
        protocols=(TCP,),
    ),
    "udp": _Spec(PORT_OPTS, _udp, protocols=(UDP,)),
    "sctp": _Spec({**PORT_OPTS, **_opts(("chunk-types", 2, True))}, _sctp, protocols=(SCTP,)),
    "multiport": _Spec(
        _opts(("sports|source-ports", 1, True), ("dports|destination-ports", 1, True), ("ports", 1, True)),
        _multiport,
        protocols=(TCP, UDP, UDPLITE, SCTP, DCCP),
    ),
    "conntrack": _Spec(
        _opts(
            ("ctstate", 1, True),
            ("ctproto", 1, True),
            ("ctorigsrc", 1, True),
            ("ctorigdst", 1, True),
            ("ctreplsrc", 1, True),
            ("ctrepldst", 1, True),
            ("ctorigsrcport", 1, True),
            ("ctorigdstport", 1, True),
            ("ctreplsrcport", 1, True),
            ("ctrepldstport", 1, True),
            ("ctstatus", 1, True),
            ("ctexpire", 1, True),
            ("ctdir", 1, False),
        ),
        _conntrack,
    ),
    "state": _Spec(_opts(("state", 1, True)), _state),
    "iprange": _Spec(_opts(("src-range", 1, True), ("dst-range", 1, True)), _iprange),
    "addrtype": _Spec(
        _opts(
            ("src-type", 1, True), ("dst-type", 1, True), ("limit-iface-in", 0, False), ("limit-iface-out", 0, False)
        ),
        _addrtype,
    ),
    "icmp": _Spec(_opts(("icmp-type", 1, True)), _icmp, families=(4,), protocols=(ICMP,)),
    "icmp6": _Spec(_opts(("icmpv6-type", 1, True)), _icmp6, families=(6,), protocols=(ICMPV6,)),
    "limit": _Spec(_opts(("limit", 1, False), ("limit-burst", 1, False)), _limit),
    "comment": _Spec(_opts(("comment", 1, False)), _comment),
    "ttl": _Spec(_opts(("ttl-eq", 1, True), ("ttl-lt", 1, False), ("ttl-gt", 1, False)), _hoplimit("ttl", "ttl"), (4,)),
    "hl": _Spec(_opts(("hl-eq", 1, True), ("hl-lt", 1, False), ("hl-gt", 1, False)), _hoplimit("hoplimit", "hl"), (6,)),
    "pkttype": _Spec(_opts(("pkt-type", 1, True)), _pkttype),
    "mark": _Spec(_opts(("mark", 1, True)), _mark),
}
TARGETS: dict[str, _Spec] = {
    **{name: _Spec({}, lambda ext, ctx: None) for name in VERDICTS},  # no options: `-j ACCEPT --x` is an error
    "LOG": _Spec(
        {
            **_opts(("log-level", 1, False), ("log-prefix", 1, False)),
            **_opts(*((name, 0, False) for name in LOG_FLAGS)),
        },
        _log,
    ),
    "NFLOG": _Spec(
        _opts(
            ("nflog-group", 1, False),
            ("nflog-prefix", 1, False),
            ("nflog-range", 1, False),
            ("nflog-size", 1, False),
            ("nflog-threshold", 1, False),
        ),
        _nflog,
    ),
    "REJECT": _Spec(_opts(("reject-with", 1, False)), _reject),
}
# the match iptables loads by itself when an option follows -p PROTO without -m PROTO
IMPLICIT_MATCHES = {TCP: "tcp", UDP: "udp", SCTP: "sctp", ICMP: "icmp", ICMPV6: "icmp6"}

# core options: spelling -> (canonical, number of arguments)
CORE: dict[str, tuple[str, int]] = {}
for _spellings, _nargs in (
    ("-s --source --src", 1),
    ("-d --destination --dst", 1),
    ("-i --in-interface", 1),
    ("-o --out-interface", 1),
    ("-p --protocol", 1),
    ("-f --fragment", 0),
    ("-m --match", 1),
    ("-j --jump", 1),
    ("-g --goto", 1),
    ("-c --set-counters", 1),  # one or two words, see below
    ("-4 --ipv4", 0),
    ("-6 --ipv6", 0),
):
    for _spelling in _spellings.split():
        CORE[_spelling] = (_spellings.split()[0], _nargs)


# --- one rule ---------------------------------------------------------------------------------------


@dataclass
class _Rule:
    line: int
    head: list[Json]  # interfaces, fragment, protocol: before the addresses, as iptables-translate orders them
    sources: list[Json | None]
    destinations: list[Json | None]
    tail: list[Json]  # the matches, in the order written
    comment: str | None
    target: Json | None  # None: no verdict, or still to resolve (pending)
    pending: str | None = None  # a -j name that is a user chain or an unknown target extension
    goto: bool = False

    def expand(self) -> Iterator[list[Json]]:
        """One expression list per source x destination, as iptables adds one rule per address pair."""
        for source in self.sources:
            for destination in self.destinations:
                exprs = [*self.head, *([source] if source else []), *([destination] if destination else [])]
                exprs += self.tail
                if self.target is not None:
                    exprs.append(self.target)
                yield _drop_dependency(exprs)


def _payload_protocols(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        payload = value.get("payload")
        if isinstance(payload, dict) and isinstance(payload.get("protocol"), str):
            yield payload["protocol"]
        for item in value.values():
            yield from _payload_protocols(item)
    elif isinstance(value, list):
        for item in value:
            yield from _payload_protocols(item)


def _drop_dependency(exprs: list[Json]) -> list[Json]:
    """Leave out `ip protocol tcp` / `meta l4proto tcp` when a later match reads the TCP header.

    nft lists such a protocol test as the implied dependency of the header match and does not print it, so
    the JSON of `-p tcp -m multiport --dports 22,80` has only the `tcp dport` match.
    """
    for index, expr in enumerate(exprs):
        match = expr.get("match")
        if not match or match["op"] != "==" or match["left"] not in (_payload("ip", "protocol"), _meta("l4proto")):
            continue
        right = match["right"]
        number = right if isinstance(right, int) else PROTOCOL_NUMBERS.get(right)
        later = {L4_PAYLOADS.get(name) for expr_after in exprs[index + 1 :] for name in _payload_protocols(expr_after)}
        if number in later:
            return exprs[:index] + exprs[index + 1 :]
        return exprs
    return exprs


def _looks_like_option(word: str) -> bool:
    return word in CORE or (word.startswith("--") and len(word) > 2)


class _RuleParser:
    """The words of one `-A CHAIN ...` line after the chain name -> a _Rule (or None: not for this family)."""

    def __init__(self, words: list[str], family: int, line: int) -> None:
        self.words = words
        self.family = family
        self.line = line
        self.index = 0
        self.core: dict[str, _Option] = {}
        self.exts: list[_Ext] = []  # matches and the target, in the order written
        self.skip = False

    def take(self, count: int, key: str) -> list[str]:
        args = self.words[self.index : self.index + count]
        if len(args) < count:
            raise BadLine(key, f"{key} needs {count} argument(s), found {len(args)} — add the missing one")
        self.index += count
        return args

    def option_args(self, key: str, nargs: int, negatable: bool, negated: bool) -> _Option:
        # the old form puts '!' after the option: `-s ! 198.18.0.1`, `--dport ! 22`
        if nargs and self.index < len(self.words) and self.words[self.index] == "!":
            if negated:
                raise BadLine(key, "negated twice — keep one '!'")
            negated = True
            self.index += 1
        if negated and not negatable:
            raise BadLine(key, f"{key} cannot be negated — remove the '!'")
        return _Option(negated, self.take(nargs, key))

    def parse(self) -> _Rule | None:
        negated = False
        while self.index < len(self.words):
            word = self.words[self.index]
            self.index += 1
            if word == "!":
                if negated:
                    raise BadLine("!", "'!' given twice — keep one")
                negated = True
                continue
            if word in CORE:
                self.core_option(word, negated)
            elif word.startswith("-") and len(word) > 1:
                self.ext_option(word, negated)
            else:
                raise BadLine(word, f"unexpected word '{word}' — options start with '-' and take their arguments after")
            negated = False
        if negated:
            raise BadLine("!", "'!' at the end of the rule — put it before the option it negates")
        return None if self.skip else self.build()

    def core_option(self, word: str, negated: bool) -> None:
        name, nargs = CORE[word]
        if name in ("-m", "-j", "-g"):
            if negated:
                raise BadLine(word, f"{word} cannot be negated — negate the option inside instead")
            (ext_name,) = self.take(1, word)
            if name == "-m":
                self.add_match(ext_name, word)
            else:
                self.add_target(ext_name, word, goto=name == "-g")
            return
        if name == "-c":  # counters, `-c PACKETS BYTES`: not part of what the rule does
            following = self.words[self.index : self.index + 1]
            self.take(1 if following and "," in following[0] else 2, word)
            return
        if name in ("-4", "-6"):
            self.skip = self.skip or (name == "-4") != (self.family == 4)  # ip6tables-restore skips -4 rules
            return
        if name == "-f" and self.family == 6:
            raise BadLine(word, "-f is IPv4 only — use -m frag in ip6tables")
        if name in self.core:
            raise BadLine(word, f"{word} given twice — give it once (a comma list for addresses)")
        self.core[name] = self.option_args(word, nargs, True, negated)

    def add_match(self, name: str, key: str) -> None:
        spec = MATCHES.get(name)
        if spec is not None and self.family not in spec.families:
            other = {"icmp": "icmp6", "icmp6": "icmp", "ttl": "hl", "hl": "ttl"}[name]
            raise BadLine(key, f"-m {name} is not for IPv{self.family} — use -m {other}")
        self.exts.append(_Ext("match", name, spec))

    def add_target(self, name: str, key: str, goto: bool) -> None:
        if any(ext.kind == "target" for ext in self.exts):
            raise BadLine(key, "more than one -j/-g — give one target")
        if not name or name.startswith("-"):
            raise BadLine(key, f"'{name}' is not a target — give a chain or target name")
        kind = "goto" if goto else "target"
        self.exts.append(_Ext(kind, name, None if goto else TARGETS.get(name)))

    def ext_option(self, word: str, negated: bool) -> None:
        ext = self.owner(word)
        if ext is None:
            raise BadLine(word, f"unknown option {word} — load its match first with -m NAME")
        if ext.spec is None:
            # an extension not translated here: skip its arguments (the words up to the next option)
            if self.index < len(self.words) and self.words[self.index] == "!":
                self.index += 1
            while self.index < len(self.words) and not _looks_like_option(self.words[self.index]):
                following = self.words[self.index + 1 : self.index + 2]
                if self.words[self.index] == "!" and following and _looks_like_option(following[0]):
                    break
                self.index += 1
            return
        canonical, nargs, negatable = ext.spec.options[word]
        if canonical in ext.options:
            raise BadLine(word, f"{word} given twice in -m {ext.name} — give it once")
        ext.options[canonical] = self.option_args(word, nargs, negatable, negated)

    def owner(self, word: str) -> _Ext | None:
        """Which loaded match or target an option belongs to (iptables offers it to every loaded one)."""
        for ext in reversed(self.exts):
            if ext.spec is not None and word in ext.spec.options:
                return ext
        proto = self.core.get("-p")
        if proto is not None and not proto.negated:
            name = IMPLICIT_MATCHES.get(_protocol(proto.args[0], "-p"))
            spec = MATCHES.get(name or "")
            loaded = any(ext.name == name for ext in self.exts if ext.kind == "match")
            if name and spec and self.family in spec.families and word in spec.options and not loaded:
                self.exts.append(_Ext("match", name, spec))
                return self.exts[-1]
        for ext in reversed(self.exts):
            if ext.spec is None and ext.kind != "goto":
                return ext
        return None

    def build(self) -> _Rule:
        head: list[Json] = []
        for name, key in (("-i", "iifname"), ("-o", "oifname")):
            option = self.core.get(name)
            if option is None:
                continue
            interface = _interface(option.args[0], name)
            if interface == "*" and not option.negated:
                continue  # '+': every interface, iptables stores no match
            head.append(_match(_meta(key), interface, "!=" if option.negated else "=="))
        if "-f" in self.core:
            # a non-first fragment; nft tests the offset bits of frag-off
            left = {"&": [_payload("ip", "frag-off"), 8191]}
            head.append(_match(left, 0, "==" if self.core["-f"].negated else "!="))
        proto, proto_negated = 0, False
        if "-p" in self.core:
            proto, proto_negated = _protocol(self.core["-p"].args[0], "-p"), self.core["-p"].negated
        if proto:  # 'all' (0) tests nothing, negated or not, in the kernel too
            left = _payload("ip", "protocol") if self.family == 4 else _meta("l4proto")
            head.append(_match(left, _protocol_value(proto), "!=" if proto_negated else "=="))
        addresses: dict[str, list[Json | None]] = {}
        for name, field_name in (("-s", "saddr"), ("-d", "daddr")):
            option = self.core.get(name)
            items = option.args[0].split(",") if option else []
            nets = [_network(item, self.family, name) for item in items]
            negated = bool(option and option.negated)
            if negated and len(nets) > 1:
                raise BadLine(name, f"! {name} takes one address — write one rule per address")
            matches = [_address_match(self.family, field_name, net, mask, negated) for net, mask in nets]
            addresses[name] = matches or [None]
        ctx = _Ctx(self.family, proto, proto_negated)
        tail: list[Json] = []
        comment: str | None = None
        target: Json | None = None
        pending: str | None = None
        goto = False
        for ext in self.exts:
            if ext.kind == "goto":
                pending, goto = ext.name, True
                continue
            if ext.kind == "target":
                if ext.name in VERDICTS:
                    target = {VERDICTS[ext.name]: None}
                elif ext.spec is not None:
                    target = self.translate(ext, ctx)[0]
                else:
                    pending = ext.name
                continue
            if ext.spec is not None and ext.spec.protocols and (proto not in ext.spec.protocols or proto_negated):
                wanted = "/".join(PROTOCOL_NAMES[number] for number in ext.spec.protocols)
                raise BadLine(f"-m {ext.name}", f"-m {ext.name} needs -p {wanted} — add it before -m")
            if ext.name == "comment" and ext.spec is not None:
                comment = ext.arg("comment")  # the last one wins, as with iptables-translate
            tail.extend(self.translate(ext, ctx))
        return _Rule(self.line, head, addresses["-s"], addresses["-d"], tail, comment, target, pending, goto)

    def translate(self, ext: _Ext, ctx: _Ctx) -> list[Json]:
        result = ext.spec.translate(ext, ctx) if ext.spec is not None else None
        if result is None:
            return [_xt(ext.kind, ext.name)]
        return result


# --- the file ----------------------------------------------------------------------------------------


def split_words(line: str) -> list[str]:
    """A restore line split as iptables-restore splits it (add_param_to_argv), not as a shell would.

    iptables-save quotes with double quotes and backslash-escapes `"`, `\\` and `'` inside them; single quotes
    are ordinary characters; a closing quote ends the word. shlex differs on the `\\'` escape and on single
    quotes, so it would read some saved comments and log prefixes differently from iptables-restore.
    """
    words: list[str] = []
    buffer: list[str] = []
    quoted = escaped = False
    for char in line:
        if quoted:
            if escaped:
                buffer.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
                words.append("".join(buffer))
                buffer = []
            else:
                buffer.append(char)
        elif char == '"':
            quoted = True
        elif char in " \t":
            if buffer:
                words.append("".join(buffer))
                buffer = []
        else:
            buffer.append(char)
    if quoted:
        raise BadLine("quote", 'a double quote is not closed — close it or escape it as \\"')
    if buffer:
        words.append("".join(buffer))
    return words


def _is_counters(word: str) -> bool:
    packets, colon, octets = word[1:-1].partition(":")
    return word.startswith("[") and word.endswith("]") and bool(colon) and packets.isdigit() and octets.isdigit()


@dataclass
class _Chain:
    name: str
    hook: Hook | None
    policy: str | None
    rules: list[_Rule] = field(default_factory=list)


@dataclass
class _Table:
    name: str
    line: int
    chains: dict[str, _Chain] = field(default_factory=dict)
    ignored: bool = False  # a table already reported bad: its lines are skipped, not reported again


class _Reader:
    def __init__(self, family: int, source: str) -> None:
        self.family = family
        self.family_name = FAMILY_NAMES[family]
        self.source = source
        self.problems: list[Problem] = []
        self.out: list[Json] = []
        self.seen: set[str] = set()
        self.table: _Table | None = None

    def read(self, text: str) -> list[Json]:
        lines = text.split("\n")
        for number, line in enumerate(lines, 1):
            if len(self.problems) >= MAX_PROBLEMS:
                self.problems.append(Problem(self.source, number, "", "too many problems, stopped reading here"))
                break
            try:
                self.line(number, line.rstrip("\r").strip(" \t"))
            except BadLine as bad:
                self.problems.append(Problem(self.source, number, bad.key, bad.message))
        else:
            if self.table is not None:
                key = f"*{self.table.name}"
                self.problems.append(
                    Problem(self.source, self.table.line, key, "no COMMIT — end the table with COMMIT")
                )
        if self.problems:
            raise IptablesSaveError(self.problems)
        return self.out

    def line(self, number: int, line: str) -> None:
        if not line or line.startswith("#"):
            return
        if line == "COMMIT":
            if self.table is None:
                raise BadLine("COMMIT", "COMMIT outside a table — start the table with *NAME")
            table, self.table = self.table, None
            if not table.ignored:
                self.commit(table)
            return
        if line.startswith("*"):
            self.start_table(number, line[1:].strip())
            return
        if self.table is None:
            raise BadLine("", f"'{line[:40]}' is outside a table — start one with *filter (or *nat, *mangle, *raw)")
        if self.table.ignored:
            return
        if line.startswith(":"):
            self.declare(line)
        else:
            self.command(number, line)

    def start_table(self, number: int, name: str) -> None:
        if self.table is not None:
            open_name = self.table.name
            self.table = _Table(name, number, ignored=True)
            raise BadLine(f"*{name}", f"table '{open_name}' has no COMMIT before this one — add COMMIT")
        self.table = _Table(name, number)
        if name not in BUILTIN_CHAINS:
            self.table.ignored = True
            raise BadLine(f"*{name}", f"unknown table '{name}' — use one of {', '.join(BUILTIN_CHAINS)}")
        if name in self.seen:
            self.table.ignored = True
            raise BadLine(f"*{name}", f"table '{name}' appears twice — merge the two sections")
        self.seen.add(name)

    def declare(self, line: str) -> None:
        assert self.table is not None
        words = line[1:].split()
        if not words:
            raise BadLine(":", "a chain line needs a name and a policy — write :NAME ACCEPT|DROP|- [0:0]")
        name = words[0]
        if len(words) < 2 or (len(words) == 3 and not _is_counters(words[2])) or len(words) > 3:
            raise BadLine(f":{name}", "a chain line is :NAME POLICY [PACKETS:BYTES] — fix its fields")
        self.new_chain(name, words[1])

    def new_chain(self, name: str, policy: str) -> None:
        assert self.table is not None
        key = f":{name}"
        hook = BUILTIN_CHAINS[self.table.name].get(name)
        if name in self.table.chains:
            raise BadLine(key, f"chain '{name}' declared twice — keep one")
        if hook is not None:
            if policy not in ("ACCEPT", "DROP"):
                raise BadLine(key, f"'{policy}' is not a policy for built-in chain {name} — use ACCEPT or DROP")
            self.table.chains[name] = _Chain(name, hook, policy)
            return
        if policy != "-":
            raise BadLine(key, f"user chain '{name}' cannot have a policy — write '-'")
        if len(name) > CHAIN_NAME_MAX or name.startswith(("-", "!")) or name in VERDICTS or name in ("QUEUE",):
            raise BadLine(
                key, f"'{name}' is not a usable chain name — use {CHAIN_NAME_MAX} characters at most, no leading -"
            )
        self.table.chains[name] = _Chain(name, None, None)

    def chain(self, name: str, key: str) -> _Chain:
        assert self.table is not None
        if name not in self.table.chains:
            if name not in BUILTIN_CHAINS[self.table.name]:
                raise BadLine(key, f"no chain '{name}' in table {self.table.name} — declare it with :{name} - [0:0]")
            self.table.chains[name] = _Chain(name, BUILTIN_CHAINS[self.table.name][name], "ACCEPT")
        return self.table.chains[name]

    def command(self, number: int, line: str) -> None:
        words = split_words(line)
        if words and _is_counters(words[0]):  # `iptables-save -c` prefixes each rule with [PACKETS:BYTES]
            words = words[1:]
        if not words:
            return
        command, rest = words[0], words[1:]
        if not rest and command in ("-N", "--new-chain", "-P", "--policy", "-A", "--append", "-I", "--insert"):
            raise BadLine(command, f"{command} needs a chain name — add it")
        if command in ("-N", "--new-chain"):
            if len(rest) != 1:
                raise BadLine(command, f"{command} takes only a chain name — remove the rest")
            self.new_chain(rest[0], "-")
        elif command in ("-P", "--policy"):
            if len(rest) != 2 or rest[0] not in BUILTIN_CHAINS[self.table.name if self.table else "filter"]:
                raise BadLine(command, f"{command} needs a built-in chain and ACCEPT or DROP — write -P INPUT DROP")
            if rest[1] not in ("ACCEPT", "DROP"):
                raise BadLine(command, f"'{rest[1]}' is not a policy — use ACCEPT or DROP")
            self.chain(rest[0], command).policy = rest[1]
        elif command in ("-F", "--flush"):
            assert self.table is not None
            for chain in [self.chain(rest[0], command)] if rest else list(self.table.chains.values()):
                chain.rules.clear()
        elif command in ("-A", "--append", "-I", "--insert"):
            chain = self.chain(rest[0], command)
            position = len(chain.rules)
            rest = rest[1:]
            if command in ("-I", "--insert"):
                position = 0
                if rest and rest[0].isascii() and rest[0].isdigit():
                    position = _uint(rest[0], command, len(chain.rules) + 1, "rule position") - 1
                    if position < 0:
                        raise BadLine(command, "rule positions start at 1 — use 1 or more")
                    rest = rest[1:]
            rule = _RuleParser(rest, self.family, number).parse()
            if rule is not None:
                chain.rules.insert(position, rule)
        else:
            raise BadLine(
                command, f"'{command}' is not a restore command — lines are -A CHAIN ..., :CHAIN POLICY, COMMIT"
            )

    def commit(self, table: _Table) -> None:
        out: list[Json] = [{"table": {"family": self.family_name, "name": table.name, "handle": 0}}]
        for chain in table.chains.values():
            body: Json = {"family": self.family_name, "table": table.name, "name": chain.name, "handle": 0}
            if chain.hook is not None:
                body.update(type=chain.hook.type, hook=chain.hook.hook, prio=chain.hook.prio)
                body["policy"] = (chain.policy or "ACCEPT").lower()
            out.append({"chain": body})
        for chain in table.chains.values():
            for rule in chain.rules:
                try:
                    self.resolve(table, rule)
                except BadLine as bad:
                    self.problems.append(Problem(self.source, rule.line, bad.key, bad.message))
                    continue
                for exprs in rule.expand():
                    body = {"family": self.family_name, "table": table.name, "chain": chain.name, "handle": 0}
                    if rule.comment is not None:
                        body["comment"] = rule.comment
                    body["expr"] = exprs
                    out.append({"rule": body})
        self.out.extend(out)

    def resolve(self, table: _Table, rule: _Rule) -> None:
        """-j NAME: a user chain of this table, else a target extension not translated here."""
        name = rule.pending
        if name is None:
            return
        key = "-g" if rule.goto else "-j"
        chain = table.chains.get(name)
        if chain is not None and chain.hook is None:
            rule.target = {"goto" if rule.goto else "jump": {"target": name}}
        elif name in BUILTIN_CHAINS[table.name] or chain is not None:
            raise BadLine(key, f"cannot jump to built-in chain {name} — jump to a user chain")
        elif rule.goto or not name.isupper():
            # target extensions are upper case; a lower-case name is a chain that was never declared
            raise BadLine(key, f"no chain '{name}' in table {table.name} — declare it with :{name} - [0:0]")
        else:
            rule.target = _xt("target", name)


def parse_save(text: str, family: int, *, source: str = "<iptables-save>") -> list[Json]:
    """The `nftables` items of `nft -j list ruleset` (metainfo aside) for iptables-save text of one family.

    family: 4 for iptables-save / iptables-legacy-save, 6 for ip6tables-save. Raises IptablesSaveError
    (an InputError) naming each line that is not iptables-save syntax.
    """
    if family not in FAMILY_NAMES:
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    return _Reader(family, source).read(text)
