"""portward.kernel.sockets: parsers on captured kernel text, units from cgroups and unit files, a fake
/proc tree end to end, and live checks against `ss` inside a lab namespace.

Captured text comes from a lab's srv namespace (kernel 6.18, x86_64): the kernel prints /proc/net
addresses word by word in host byte order, so those tests only hold on little-endian hosts. The
link-local address of the capture was replaced by fe80::1; every other address is 198.18.0.0/15,
2001:db8::/32 or loopback.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portward.kernel import sockets
from portward.kernel.sockets import (
    Listener,
    SocketListen,
    SocketRow,
    list_listeners,
    parse_proc_net,
    parse_sctp_eps,
    proc_hex_address,
    socket_units,
    unit_from_cgroup,
)
from tests.netlab import SRV_LAN4, SRV_LAN6, Lab

ROOT = Path(__file__).resolve().parents[2]
little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="captured /proc text is little-endian")

# --- captured /proc/net text ------------------------------------------------------------------
# Listening: 198.18.0.1:25, 127.0.0.1:8080, 0.0.0.0:22. Established: 198.18.0.1:25 <-> :33008.
PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 010012C6:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2868127 1 00000000ac62afcc 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2868128 1 00000000c8415db7 100 0 0 10 0
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2868126 1 00000000b3e90aa5 100 0 0 10 0
   3: 010012C6:0019 010012C6:80F0 01 00000000:00000000 00:00000000 00000000     0        0 2868142 1 000000003a12553a 20 0 0 10 -1
   4: 010012C6:80F0 010012C6:0019 01 00000000:00000000 00:00000000 00000000     0        0 2868141 2 00000000a3af83cd 20 0 0 10 -1
"""  # noqa: E501

# Listening: [2001:db8:0:1::1]:443, [::ffff:198.18.0.1]:9090 (v4-mapped), [::]:22, [::]:80,
# [fe80::1%eth-lan]:2222 (scoped: /proc has no scope), [::1]:8080. Established: 443 <-> :50432.
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: B80D0120010000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2868131 1 000000005851d78c 100 0 0 10 0
   1: 0000000000000000FFFF0000010012C6:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2868133 1 0000000080b1701e 100 0 0 10 0
   2: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2868129 1 0000000083c1abaa 100 0 0 10 0
   3: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2868130 1 0000000004d804c3 100 0 0 10 0
   4: 000080FE000000000000000001000000:08AE 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2868134 1 0000000065cc18fc 100 0 0 10 0
   5: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2868132 1 000000006141892b 100 0 0 10 0
   6: B80D0120010000000000000001000000:C500 B80D0120010000000000000001000000:01BB 01 00000000:00000000 00:00000000 00000000     0        0 2868143 2 00000000232680f9 20 0 0 10 -1
   7: B80D0120010000000000000001000000:01BB B80D0120010000000000000001000000:C500 01 00000000:00000000 00:00000000 00000000     0        0 2868144 1 000000005f072d64 20 0 0 10 -1
"""  # noqa: E501

# Unconnected: 0.0.0.0:53, 198.19.0.1:123. Connected (st 01): 198.18.0.1:40000 -> 198.19.0.2:53.
# Last line: bound to port 0 (nothing can reach it) - skipped although unconnected.
PROC_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 6187: 010012C6:9C40 020013C6:0035 01 00000000:00000000 00:00000000 00000000     0        0 2868145 2 000000003467be4b 0
15392: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2868135 2 000000001e949dcf 0
15462: 010013C6:007B 00000000:0000 07 00000000:00000000 00:00000000 00000000   102        0 2868136 2 00000000e6fa5b69 0
15463: 010013C6:0000 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2868199 2 00000000e6fa5b69 0
"""

# Unconnected: [::ffff:198.18.0.1]:5353, [::]:53, [2001:db8:0:2::1]:123, [fe80::1%eth-lan]:546.
# Connected: [2001:db8:0:1::1]:40001 -> [2001:db8:0:2::2]:53.
PROC_UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 4308: 0000000000000000FFFF0000010012C6:14E9 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2868140 2 000000003dda0d67 0
 6188: B80D0120010000000000000001000000:9C41 B80D0120020000000000000002000000:0035 01 00000000:00000000 00:00000000 00000000     0        0 2868146 2 0000000052f9c5f9 0
15392: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2868137 2 00000000296ab96c 0
15462: B80D0120020000000000000001000000:007B 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2868138 2 000000006b9f747c 0
15885: 000080FE000000000000000001000000:0222 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2868139 2 00000000676b745a 0
"""  # noqa: E501

# /proc/net/sctp/eps as net/sctp/proc.c prints it (sctp_eps_seq_show: "%8p %8p %-3d %-3d %-4d %-5d %5u
# %5llu " then each local address with %pI4 / %pI6 and a space). STY 2: one-to-one, 0: one-to-many.
# Rows: listening on two v4 addresses; listening v6 socket on a v6 and a v4 address; a one-to-many
# socket that never called listen() (SST 7); a v6 wildcard; a garbage line.
SCTP_EPS = "".join(
    f"{line}\n"
    for line in [
        " ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS",
        "000000004f1c7a2e 00000000b8d0f3c1 2   10  29   3868      0 2868200 198.18.0.1 198.19.0.1 ",
        "00000000913ad7e0 000000006a55c2d9 2   10  12   36412  1000 2868201 "
        "2001:0db8:0000:0001:0000:0000:0000:0001 198.18.0.1 ",
        "0000000017c3e6aa 00000000dd02b5f8 0   7   40   5000      0 2868202 0.0.0.0 ",
        "00000000c09e8a1b 00000000a5f36e0c 0   10  41   2905      0 2868203 0000:0000:0000:0000:0000:0000:0000:0000 ",
        "not a row at all",
    ]
)


def rows(text: str, proto: str, family: int) -> list[tuple[str, int, int, int]]:
    return [(r.address, r.port, r.inode, r.uid) for r in parse_proc_net(text, proto, family)]


@little_endian
def test_parse_tcp_keeps_listen_only() -> None:
    assert rows(PROC_TCP, "tcp", 4) == [
        ("198.18.0.1", 25, 2868127, 0),
        ("127.0.0.1", 8080, 2868128, 0),
        ("0.0.0.0", 22, 2868126, 1000),
    ]
    row = parse_proc_net(PROC_TCP, "tcp", 4)[0]
    assert row == SocketRow("tcp", 4, 25, "198.18.0.1", 2868127, 0, None, 0)


@little_endian
def test_parse_tcp6_v4_mapped_and_scoped() -> None:
    assert rows(PROC_TCP6, "tcp", 6) == [
        ("2001:db8:0:1::1", 443, 2868131, 0),
        ("::ffff:198.18.0.1", 9090, 2868133, 0),  # v4-mapped stays an IPv6 address
        ("::", 22, 2868129, 0),
        ("::", 80, 2868130, 0),
        ("fe80::1", 2222, 2868134, 0),  # the scope (interface) is not in /proc
        ("::1", 8080, 2868132, 0),
    ]
    assert {r.v6only for r in parse_proc_net(PROC_TCP6, "tcp", 6)} == {None}  # /proc does not know


@little_endian
def test_parse_udp_unconnected_with_a_port() -> None:
    assert rows(PROC_UDP, "udp", 4) == [("0.0.0.0", 53, 2868135, 0), ("198.19.0.1", 123, 2868136, 102)]
    assert rows(PROC_UDP6, "udp", 6) == [
        ("::ffff:198.18.0.1", 5353, 2868140, 0),
        ("::", 53, 2868137, 0),
        ("2001:db8:0:2::1", 123, 2868138, 0),
        ("fe80::1", 546, 2868139, 0),
    ]


def test_parse_proc_net_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        parse_proc_net("", "sctp", 4)
    with pytest.raises(ValueError):
        parse_proc_net("", "tcp", 5)
    assert parse_proc_net("", "tcp", 4) == []


def test_parse_proc_net_skips_malformed_lines() -> None:
    ok = f"   0: {proc_hex_address('198.18.0.1', 4)}:0016 00000000:0000 0A 0:0 0:0 0 0 0 42 1 0"
    text = "\n".join(
        [
            ok,
            ok.replace(proc_hex_address("198.18.0.1", 4), "XYZ"),  # not hex
            ok.replace(proc_hex_address("198.18.0.1", 4), "0012C6"),  # wrong width
            ok.replace(":0016", ":1FFFFF"),  # port out of range
            ok.replace(" 42 ", " -1 "),  # negative inode
            ok.replace(" 42 ", " x "),
            "   1: truncated",
            "",
        ]
    )
    assert rows(text, "tcp", 4) == [("198.18.0.1", 22, 42, 0)]


def test_parse_sctp_eps() -> None:
    assert parse_sctp_eps(SCTP_EPS) == [
        SocketRow("sctp", 4, 3868, "198.18.0.1", 2868200, 0),
        SocketRow("sctp", 4, 3868, "198.19.0.1", 2868200, 0),
        SocketRow("sctp", 6, 36412, "2001:db8:0:1::1", 2868201, 1000),
        SocketRow("sctp", 4, 36412, "198.18.0.1", 2868201, 1000),  # v4 address bound by a v6 socket
        SocketRow("sctp", 6, 2905, "::", 2868203, 0),
    ]
    assert parse_sctp_eps("") == []
    assert parse_sctp_eps(" ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS\n") == []


# --- hypothesis: parsers never crash, the hex encoding round-trips --------------------------------
ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@given(address=ipv4, port=st.integers(1, 65535), inode=st.integers(1, 2**63), uid=st.integers(0, 2**32 - 2))
def test_hex_roundtrip_v4(address: ipaddress.IPv4Address, port: int, inode: int, uid: int) -> None:
    line = f"   0: {proc_hex_address(str(address), 4)}:{port:04X} 00000000:0000 07 0:0 0:0 0 {uid} 0 {inode} 2 0 0"
    assert parse_proc_net(line, "udp", 4) == [SocketRow("udp", 4, port, str(address), inode, uid)]
    assert int(proc_hex_address(str(address), 4), 16).to_bytes(4, sys.byteorder) == address.packed


@given(address=ipv6, port=st.integers(1, 65535), inode=st.integers(1, 2**63))
def test_hex_roundtrip_v6(address: ipaddress.IPv6Address, port: int, inode: int) -> None:
    text = proc_hex_address(str(address), 6)
    assert re.fullmatch(r"[0-9A-F]{32}", text)
    line = f"  1: {text}:{port:04X} {'0' * 32}:0000 0A 0:0 0:0 0 0 0 {inode} 1 0"
    (row,) = parse_proc_net(line, "tcp", 6)
    assert ipaddress.IPv6Address(row.address) == address
    assert row.address == socket.inet_ntop(socket.AF_INET6, address.packed)  # inet_ntop form, as ss prints


hex_field = st.text(alphabet="0123456789ABCDEFabcdef:xX-", max_size=40)
proc_line = st.lists(st.one_of(hex_field, st.sampled_from(["0A", "07", "01", "0", "-1", "socket:[1]"])), max_size=14)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.one_of(st.text(max_size=120), proc_line.map(" ".join)), max_size=8))
def test_parsers_never_crash(lines: list[str]) -> None:
    text = "\n".join(lines)
    for proto in ("tcp", "udp"):
        for family in (4, 6):
            for row in parse_proc_net(text, proto, family):
                assert 0 <= row.port <= 65535 and ipaddress.ip_address(row.address).version == family
    for row in parse_sctp_eps(text):
        assert 0 < row.port <= 65535
    unit_from_cgroup(text)


@settings(max_examples=200, deadline=None)
@given(
    fields=st.lists(
        st.one_of(st.text(alphabet="0123456789abcdef:.*", max_size=40), st.sampled_from(["10", "7", "ENDPT"])),
        min_size=8,
        max_size=12,
    )
)
def test_sctp_parser_never_crashes(fields: list[str]) -> None:
    for row in parse_sctp_eps(" ".join(fields)):
        assert row.proto == "sctp" and row.family in (4, 6)


# --- units from cgroups --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("0::/system.slice/ssh.service\n", "ssh.service"),
        ("0::/init.scope\n", "init.scope"),
        ("0::/user.slice/user-0.slice/user@0.service/app.slice/x.service\n", "x.service"),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
        ("0::/user.slice/user-0.slice/user@0.service/init.scope\n", "user@0.service"),
        ("0::/system.slice/foo.service/payload/worker\n", "foo.service"),  # delegated subtree
        ("0::/system.slice/docker-0123abcd.scope\n", "docker-0123abcd.scope"),
        ("0::/system.slice\n", "system.slice"),
        ("0::/\n", None),
        ("", None),
        ("0::/docker/0123456789abcdef\n", None),  # not a unit of this host's systemd
        ("0::/docker/0123456789abcdef/system.slice/nginx.service\n", None),  # systemd inside a container
        ("0::/lxc.payload.c1/system.slice/ssh.service\n", None),
        # cgroup v1 (and hybrid, where the v2 line is unused)
        ("12:pids:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n", "cron.service"),
        ("4:memory:/process_api/64bb\n9:name=systemd:/\n0::/\n", None),
        ("1:name=systemd:/system.slice/ntp.service\n0::/\n", "ntp.service"),
        ("0::/system.slice/ssh.service\n1:name=systemd:/system.slice/other.service\n", "ssh.service"),
        ("garbage\n0:/system.slice/a.service\n", None),
    ],
)
def test_unit_from_cgroup(text: str, unit: str | None) -> None:
    assert unit_from_cgroup(text) == unit


# --- .socket units in a temporary root ------------------------------------------------------------
def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def unit_tree(root: Path) -> None:
    etc, run, usr, lib = "etc/systemd/system", "run/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"
    write(root, f"{usr}/ssh.socket", "[Socket]\nListenStream=2200\n")  # shadowed by /etc
    write(root, f"{etc}/ssh.socket", "[Unit]\nDescription=ssh\n[Socket]\nListenStream=22\nAccept=no\n")
    write(
        root,
        f"{lib}/dns.socket",
        "[Socket]\nListenDatagram=198.18.0.1:53\nListenStream=[2001:db8::1]:53\n"
        "ListenStream=/run/dns.sock\n# ListenStream=9999\n; ListenStream=9998\n",
    )
    # drop-ins: /etc's 10-reset.conf shadows /usr/lib's of the same name; 20-more.conf applies after it
    write(root, f"{usr}/dns.socket.d/10-reset.conf", "[Socket]\nListenDatagram=0.0.0.0:1\n")
    write(root, f"{etc}/dns.socket.d/10-reset.conf", "[Socket]\nListenDatagram=\nListenDatagram=0.0.0.0:5353\n")
    write(root, f"{run}/dns.socket.d/20-more.conf", "[Socket]\nListenStream=[::]:5353\n")
    write(root, f"{run}/dns.socket.d/README", "[Socket]\nListenStream=7\n")  # not a .conf
    write(root, f"{usr}/masked.socket", "[Socket]\nListenStream=8080\n")
    (root / etc / "masked.socket").symlink_to("/dev/null")
    write(root, f"{usr}/empty.socket", "")  # empty: masked too
    write(root, f"{usr}/sshd@.socket", "[Socket]\nListenStream=22\nAccept=yes\n")  # template
    write(root, f"{usr}/diameter.socket", "[Socket]\nSocketProtocol=sctp\nListenSequentialPacket=3868\n")
    write(root, f"{usr}/unix.socket", "[Socket]\nListenStream=/run/unix.sock\nListenSequentialPacket=9\n")
    write(
        root,
        f"{usr}/web.socket",
        "[Socket]\nListenStream=198.18.0.1:80 \\\n\n[Install]\nListenStream=81\n",  # continuation, other section
    )
    write(root, f"{usr}/alias-target.socket", "[Socket]\nListenDatagram=[fe80::1%eth0]:547\n")
    (root / etc / "alias.socket").symlink_to("/usr/lib/systemd/system/alias-target.socket")  # inside root
    write(root, f"{usr}/bad.socket", "[Socket]\nListenStream=::1:22\nListenStream=70000\nListenStream=1.2.3:4\n")


def test_socket_units(tmp_path: Path) -> None:
    unit_tree(tmp_path)
    units = socket_units(tmp_path)
    assert units == {
        "alias-target.socket": (SocketListen("alias-target.socket", "udp", "fe80::1", 547),),
        "alias.socket": (SocketListen("alias.socket", "udp", "fe80::1", 547),),
        "diameter.socket": (SocketListen("diameter.socket", "sctp", None, 3868),),
        "dns.socket": (
            SocketListen("dns.socket", "udp", "0.0.0.0", 5353),
            SocketListen("dns.socket", "tcp", "::", 5353),
        ),
        "ssh.socket": (SocketListen("ssh.socket", "tcp", None, 22),),
        "web.socket": (SocketListen("web.socket", "tcp", "198.18.0.1", 80),),
    }
    assert socket_units(tmp_path / "missing") == {}


# --- a fake /proc tree, end to end -----------------------------------------------------------------
def fake_proc(root: Path, processes: dict[int, tuple[str, str, list[str]]]) -> Path:
    """proc/net/* from the captured text, and proc/PID/{comm,cgroup,fd/N -> link} per process."""
    proc = root / "proc"
    for name, text in (("tcp", PROC_TCP), ("tcp6", PROC_TCP6), ("udp", PROC_UDP), ("udp6", PROC_UDP6)):
        write(proc, f"net/{name}", text)
    write(proc, "net/sctp/eps", SCTP_EPS)
    for pid, (comm, cgroup, links) in processes.items():
        write(proc, f"{pid}/comm", f"{comm}\n")
        write(proc, f"{pid}/cgroup", cgroup)
        (proc / str(pid) / "fd").mkdir()
        for fd, link in enumerate(links):
            (proc / str(pid) / "fd" / str(fd)).symlink_to(link)
    (proc / "77").mkdir()  # a process without fd/ (gone, or no permission): skipped
    (proc / "self").mkdir()
    return proc


PROCESSES = {
    1: ("systemd", "0::/init.scope\n", ["/dev/null", "socket:[2868126]", "socket:[2868129]", "socket:[2868135]"]),
    # the activated sshd shares the socket systemd holds (and has a socket of its own that is no listener)
    200: ("sshd", "0::/system.slice/ssh.service\n", ["/dev/null", "socket:[2868126]", "socket:[999]", "pipe:[5]"]),
    # a forked server: parent and child share the socket, the parent dup()ed it
    300: ("master", "0::/system.slice/postfix.service\n", ["socket:[2868127]", "socket:[2868127]"]),
    301: ("smtpd", "0::/system.slice/postfix.service\n", ["anon_inode:[eventpoll]", "socket:[2868127]"]),
    1000: ("python3", "0::/user.slice/user-1000.slice/session-3.scope\n", ["socket:[2868201]"]),
}


@little_endian
def test_list_listeners_on_a_fake_proc(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PROCESSES)
    write(tmp_path, "etc/systemd/system/ssh.socket", "[Socket]\nListenStream=0.0.0.0:22\n")
    found = list_listeners(proc, unit_root=tmp_path)
    assert found == sorted(found, key=lambda x: (x.proto, x.family, x.port, x.address))
    by_key = {(x.proto, x.address, x.port): x for x in found}
    assert len(by_key) == len(found) == 3 + 6 + 2 + 4 + 5  # tcp, tcp6, udp, udp6, sctp addresses
    ssh = by_key[("tcp", "0.0.0.0", 22)]
    assert ssh == Listener("tcp", 4, "0.0.0.0", 22, 2868126, 1000, None, 1, (1, 200), "systemd", "ssh.socket", None)
    smtp = by_key[("tcp", "198.18.0.1", 25)]
    assert (smtp.pid, smtp.pids, smtp.process, smtp.unit) == (300, (300, 301), "master", "postfix.service")
    # held by systemd, no unit file matches: the other holder's unit, else PID 1's own
    assert by_key[("tcp", "::", 22)].unit == "init.scope"
    assert by_key[("udp", "0.0.0.0", 53)].unit == "init.scope"
    sctp = by_key[("sctp", "2001:db8:0:1::1", 36412)]
    assert (sctp.family, sctp.pid, sctp.unit, sctp.uid) == (6, 1000, "session-3.scope", 1000)
    assert by_key[("sctp", "198.18.0.1", 36412)].pid == 1000  # same socket, its v4 address
    nobody = by_key[("tcp", "::1", 8080)]
    assert (nobody.pid, nobody.pids, nobody.process, nobody.unit) == (None, (), None, None)
    assert {x.v6only for x in found} == {None} and {x.interface for x in found} == {None}

    bare = list_listeners(proc, resolve_processes=False, unit_root=tmp_path)
    assert [(x.proto, x.address, x.port, x.inode) for x in bare] == [
        (x.proto, x.address, x.port, x.inode) for x in found
    ]
    assert {(x.pid, x.pids, x.process, x.unit) for x in bare} == {(None, (), None, None)}


@little_endian
def test_socket_unit_lookup_only_for_systemd(tmp_path: Path) -> None:
    write(tmp_path, "etc/systemd/system/ssh.socket", "[Socket]\nListenStream=22\n")
    write(tmp_path, "usr/lib/systemd/system/dns.socket", "[Socket]\nListenDatagram=53\n")
    processes = dict(PROCESSES)
    proc = fake_proc(tmp_path / "a", processes)
    by_key = {(x.proto, x.address, x.port): x for x in list_listeners(proc, unit_root=tmp_path)}
    assert by_key[("tcp", "0.0.0.0", 22)].unit == "ssh.socket"  # port-only ListenStream=22: any address
    assert by_key[("tcp", "::", 22)].unit == "ssh.socket"
    assert by_key[("udp", "0.0.0.0", 53)].unit == "dns.socket"
    # PID 1 is not systemd (a container's init): its unit files mean nothing, the cgroup says it
    processes[1] = ("tini", "0::/init.scope\n", PROCESSES[1][2])
    proc = fake_proc(tmp_path / "b", processes)
    by_key = {(x.proto, x.address, x.port): x for x in list_listeners(proc, unit_root=tmp_path)}
    assert by_key[("tcp", "0.0.0.0", 22)].unit == "init.scope"
    assert by_key[("tcp", "0.0.0.0", 22)].process == "tini"


@little_endian
def test_activated_service_unit_when_no_socket_unit_matches(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, PROCESSES)
    by_key = {(x.proto, x.address, x.port): x for x in list_listeners(proc, unit_root=tmp_path / "empty")}
    assert by_key[("tcp", "0.0.0.0", 22)].unit == "ssh.service"  # sshd also holds it
    assert by_key[("tcp", "0.0.0.0", 22)].pid == 1


def test_source_proc_needs_the_files(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    assert list_listeners(tmp_path, source="proc") == []


# --- live, inside a lab namespace ------------------------------------------------------------------
# Binds the sockets below, forks once (the child shares everything, and holds one socket of its own
# in addition), prints "ready <parent> <child>" and lives until stdin closes.
HOLDER = """
import os, socket, sys
A4, A6, TCP, UDP = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM, socket.SOCK_DGRAM
specs = [
    (A4, TCP, "0.0.0.0", 7001, None), (A4, TCP, "127.0.0.1", 7002, None), (A4, TCP, sys.argv[1], 7003, None),
    (A6, TCP, "::", 7001, 1), (A6, TCP, "::", 7004, 0), (A6, TCP, sys.argv[2], 7003, 1), (A6, TCP, "::1", 7002, 1),
    (A6, TCP, "::ffff:" + sys.argv[1], 7005, 0),
    (A4, UDP, "0.0.0.0", 7053, None), (A4, UDP, sys.argv[1], 7123, None),
    (A6, UDP, "::", 7053, 1), (A6, UDP, "::", 7054, 0), (A6, UDP, sys.argv[2], 7123, 1),
]
held = []
for family, kind, host, port, v6only in specs:
    s = socket.socket(family, kind)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind((host, port))
    if kind == TCP:
        s.listen(8)
    held.append(s)
dev = socket.socket(A4, UDP)
dev.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth-lan")
dev.bind(("0.0.0.0", 7200))
held.append(dev)
connected = socket.socket(A4, UDP)
connected.bind((sys.argv[1], 7300))
connected.connect(("198.18.0.2", 53))  # connected: no listener
r, w = os.pipe()
child = os.fork()
if child == 0:
    own = socket.socket(A4, TCP)
    own.bind(("0.0.0.0", 7400))
    own.listen(1)
    os.write(w, b"x")
    sys.stdin.read()
    os._exit(0)
os.read(r, 1)
print("ready", os.getpid(), child, flush=True)
sys.stdin.read()
"""

DUMP = """
import dataclasses, json, sys
from portward.kernel.sockets import list_listeners
print(json.dumps([dataclasses.asdict(x) for x in list_listeners(source=sys.argv[1])]))
"""


def start_holder(lab: Lab) -> tuple[int, int]:
    proc = lab.popen(
        "srv",
        [sys.executable, "-c", HOLDER, SRV_LAN4, SRV_LAN6],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    readable, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode() if readable else ""
    if not line.startswith("ready"):
        proc.kill()
        pytest.fail(f"socket holder did not start: {proc.stderr.read().decode()}")
    # pids as the holder sees them (its own and its child's): the ones /proc/*/fd shows
    _, parent, child = line.split()
    return int(parent), int(child)


def listeners_in(lab: Lab, source: str) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cp = lab.run("srv", [sys.executable, "-c", DUMP, source], env=env)
    assert cp.returncode == 0, cp.stderr
    found: list[dict[str, Any]] = json.loads(cp.stdout)
    return found


def ss_listeners(lab: Lab) -> set[tuple[str, str, int, tuple[int, ...]]]:
    """(proto, address, port, pids) of `ss -tulnp -H` in srv; "*" (v6 dual-stack any) is "::"."""
    cp = lab.run("srv", ["ss", "-tulnp", "-H"])
    assert cp.returncode == 0, cp.stderr
    found = set()
    for line in cp.stdout.splitlines():
        fields = line.split()
        proto, local = fields[0], fields[4]
        host, _, port = local.rpartition(":")
        host = host.partition("%")[0].strip("[]")  # 0.0.0.0%eth-lan: SO_BINDTODEVICE
        pids = tuple(sorted({int(p) for p in re.findall(r"pid=(\d+)", line)}))
        found.add((proto, "::" if host == "*" else host, int(port), pids))
    return found


def test_live_matches_ss(lab: Lab) -> None:
    parent, child = start_holder(lab)
    found = listeners_in(lab, "auto")
    ours = {(x["proto"], x["address"], x["port"], tuple(x["pids"])) for x in found}
    assert ours == ss_listeners(lab)
    assert [(x["proto"], x["family"], x["port"], x["address"]) for x in found] == sorted(
        (x["proto"], x["family"], x["port"], x["address"]) for x in found
    )
    by_key = {(x["proto"], x["address"], x["port"]): x for x in found}
    assert len(by_key) == 15  # 13 specs + the device-bound one + the child's own; not the connected one
    shared = by_key[("tcp", "0.0.0.0", 7001)]
    assert (shared["pid"], shared["pids"]) == (min(parent, child), sorted([parent, child]))
    assert shared["process"].startswith("python")
    assert by_key[("tcp", "0.0.0.0", 7400)]["pids"] == [child]
    # sock_diag knows IPV6_V6ONLY and SO_BINDTODEVICE
    assert by_key[("tcp", "::", 7001)]["v6only"] is True
    assert by_key[("tcp", "::", 7004)]["v6only"] is False
    assert by_key[("udp", "::", 7054)]["v6only"] is False
    assert by_key[("tcp", "::ffff:198.18.0.1", 7005)]["family"] == 6
    assert by_key[("tcp", SRV_LAN6, 7003)]["v6only"] is True
    assert {x["v6only"] for x in found if x["family"] == 4} == {None}
    assert by_key[("udp", "0.0.0.0", 7200)]["interface"] == "eth-lan"
    assert {x["interface"] for x in found if x["port"] != 7200} == {None}


def test_live_proc_reader_agrees_with_sock_diag(lab: Lab) -> None:
    start_holder(lab)
    diag, proc = listeners_in(lab, "sock_diag"), listeners_in(lab, "proc")
    ignore = {"v6only", "interface"}  # not in /proc/net
    assert [{k: v for k, v in x.items() if k not in ignore} for x in proc] == [
        {k: v for k, v in x.items() if k not in ignore} for x in diag
    ]
    assert {x["v6only"] for x in proc} == {None}


def test_listener_is_frozen() -> None:
    item = Listener("tcp", 4, "198.18.0.1", 22, 1, 0, None, None, (), None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.port = 23  # type: ignore[misc]


# --- the sock_diag parser on crafted replies, and the fallback to /proc ----------------------------
def diag_reply(seq: int, family: int, sport: int, src: str, inode: int, attrs: bytes = b"", **kw: int) -> bytes:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    packed = socket.inet_pton(af, src).ljust(16, b"\0")
    dst = socket.inet_pton(socket.AF_INET6, "2001:db8::9") if kw.get("connected") else bytes(16)
    body = struct.pack("=BBBB", af, kw.get("state", 10), 0, 0)
    body += struct.pack(">HH", sport, kw.get("dport", 0)) + packed + dst
    body += struct.pack("=I8s", kw.get("ifindex", 0), bytes(8))
    body += struct.pack("=IIIII", 0, 0, 0, kw.get("uid", 0), inode) + attrs
    return struct.pack("=IHHII", 16 + len(body), 20, 2, seq, 0) + body


def rta(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + bytes(-len(raw) % 4)


def done(seq: int) -> bytes:
    return struct.pack("=IHHIIi", 20, 3, 2, seq, 0, 0)


def error(seq: int, code: int) -> bytes:
    return struct.pack("=IHHIIi", 36, 2, 0, seq, 0, -code) + bytes(16)


def run_dump(replies: list[bytes], proto: str, family: int, seq: int = 7) -> list[SocketRow]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        for reply in replies:
            kernel.send(reply)
        return sockets._dump_table(ours, seq, proto, family, bytearray(sockets._RECV_BUFFER))


def test_dump_table_parses_replies() -> None:
    shutdown, v6only, sockopt = rta(8, b"\0"), rta(11, b"\1"), rta(22, b"\0\0")
    replies = [
        diag_reply(6, 6, 1, "2001:db8::1", 1),  # stale: an earlier request's
        diag_reply(7, 6, 22, "2001:db8::1", 100, shutdown + v6only + sockopt, uid=1000)
        + diag_reply(7, 6, 80, "::", 101, shutdown + rta(11, b"\0"), ifindex=1)
        + diag_reply(7, 6, 443, "::ffff:198.18.0.1", 102, shutdown),  # no SKV6ONLY: unknown
        done(7),
    ]
    assert run_dump(replies, "tcp", 6) == [
        SocketRow("tcp", 6, 22, "2001:db8::1", 100, 1000, True, 0),
        SocketRow("tcp", 6, 80, "::", 101, 0, False, 1),
        SocketRow("tcp", 6, 443, "::ffff:198.18.0.1", 102, 0, None, 0),
    ]
    udp = [
        diag_reply(7, 4, 53, "198.18.0.1", 200, state=7)
        + diag_reply(7, 4, 0, "198.18.0.1", 201, state=7)  # port 0
        + diag_reply(7, 4, 5353, "0.0.0.0", 202, state=7, dport=53, connected=1),  # connected
        done(7),
    ]
    assert run_dump(udp, "udp", 4) == [SocketRow("udp", 4, 53, "198.18.0.1", 200, 0, None, 0)]


def test_dump_table_errors() -> None:
    with pytest.raises(sockets.SockDiagUnavailable) as caught:
        run_dump([error(7, errno.ENOENT)], "udp", 6)
    assert caught.value.errno == errno.ENOENT
    with pytest.raises(sockets.SockDiagUnavailable):  # a length that runs past what was received
        run_dump([diag_reply(7, 4, 22, "198.18.0.1", 1)[:-8]], "tcp", 4)
    with pytest.raises(ValueError):
        run_dump([], "sctp", 4)


def test_fallback_to_proc_per_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """No kernel involved: netlink is a socketpair, the dump and /proc/net readers are stand-ins."""
    read: list[tuple[str, int]] = []
    pairs: list[socket.socket] = []

    def fake_socket() -> socket.socket:
        ours, other = socket.socketpair()
        pairs.append(other)
        return ours

    def dump(sock: socket.socket, seq: int, proto: str, family: int, buffer: bytearray) -> list[SocketRow]:
        if proto == "udp":  # as when udp_diag is missing
            raise sockets.SockDiagUnavailable(errno.ENOENT, "no udp_diag")
        row = SocketRow(proto, family, 22, "::" if family == 6 else "0.0.0.0", 1, 0, True if family == 6 else None)
        return [row, row]  # a resumed dump may repeat a socket: reported once

    def proc_rows(proc: str, tables: list[tuple[str, int]]) -> list[SocketRow]:
        read.extend(tables)
        return [SocketRow(proto, family, 53, "::" if family == 6 else "0.0.0.0", 2, 0) for proto, family in tables]

    def no_netlink() -> socket.socket:
        raise sockets.SockDiagUnavailable(errno.EAFNOSUPPORT, "no netlink")

    monkeypatch.setattr(sockets, "_diag_socket", fake_socket)
    monkeypatch.setattr(sockets, "_dump_table", dump)
    monkeypatch.setattr(sockets, "_read_proc_rows", proc_rows)
    monkeypatch.setattr(sockets, "_read_sctp_rows", lambda proc: [])
    found = list_listeners(Path("/proc"), resolve_processes=False)
    assert read == [("udp", 4), ("udp", 6)]
    assert [(x.proto, x.family, x.port, x.v6only) for x in found] == [
        ("tcp", 4, 22, None),
        ("tcp", 6, 22, True),
        ("udp", 4, 53, None),
        ("udp", 6, 53, None),
    ]
    with pytest.raises(sockets.SockDiagUnavailable):
        list_listeners(resolve_processes=False, source="sock_diag")
    read.clear()
    monkeypatch.setattr(sockets, "_diag_socket", no_netlink)
    assert len(list_listeners(resolve_processes=False)) == 4
    assert read == list(sockets._TABLES)
    for other in pairs:
        other.close()


def test_halves_keep_order_and_every_fd() -> None:
    work = [(1, b"a", [b"0", b"1", b"2"]), (2, b"b", [b"0"]), (3, b"c", [b"0", b"1", b"2", b"3"])]
    first, second = sockets._halves(work, 8)
    assert first == [(1, b"a", [b"0", b"1", b"2"]), (2, b"b", [b"0"])]
    assert second == [(3, b"c", [b"0", b"1", b"2", b"3"])]
    first, second = sockets._halves([(5, b"x", [str(i).encode() for i in range(9)])], 9)
    assert [n for _p, _d, names in first + second for n in names] == [str(i).encode() for i in range(9)]
    assert {p for p, _d, _n in first + second} == {5}


def test_holders_threaded_scan_equals_single(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links = [f"socket:[{1000 + i}]" for i in range(1500)] + ["/dev/null"] * 300
    proc = fake_proc(tmp_path, {10: ("a", "", links), 11: ("b", "", links[700:]), 12: ("c", "", ["socket:[1001]"])})
    wanted = set(range(1000, 2500)) | {7}
    threaded = sockets._holders(str(proc), wanted)
    monkeypatch.setattr(sockets, "_SPLIT_FDS", 10**9)
    assert threaded == sockets._holders(str(proc), wanted)
    assert threaded[1001] == (10, 12) and threaded[1700] == (10, 11) and 7 not in threaded
    assert len(threaded) == 1500
