"""The knockd.conf reader: stock and documented configs, every key, errors at FILE:LINE: key, random text.

Differential oracle: knockd itself. `knockd -D -c FILE -i <no such interface>` prints what it parsed
("config: ssh: sequence: 7000:tcp,...") and then fails to open the interface, so it never captures
anything; what it parsed must be what we parse, and what it refuses (with a line number) we refuse at
that line.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portward.dialects.knockd import (
    KnockdConfig,
    KnockdConfigError,
    KnockdDoor,
    KnockPort,
    TcpFlags,
    command_argv,
    parse_knockd_conf,
    parse_one_time_sequences,
    parse_sequence,
    read_knockd_conf,
)
from portward.errors import EXIT_INPUT, InputError

DEBIAN = """[options]
\tUseSyslog

[openSSH]
\tsequence    = 7000,8000,9000
\tseq_timeout = 5
\tcommand     = /sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
\ttcpflags    = syn

[closeSSH]
\tsequence    = 9000,8000,7000
\tseq_timeout = 5
\tcommand     = /sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
\ttcpflags    = syn

[openHTTPS]
\tsequence    = 12345,54321,24680,13579
\tseq_timeout = 5
\tcommand     = /usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%
\ttcpflags    = syn
"""

SEED = """[options]
    LogFile = /var/log/knockd.log

[ssh]
    sequence      = 7000,8000,9000
    seq_timeout   = 5
    tcpflags      = syn
    start_command = nft add element inet filter ssh_ok { %IP% }
    cmd_timeout   = 10
    stop_command  = nft delete element inet filter ssh_ok { %IP% }
"""

# knockd(1), examples 2 and 4, with every key knockd 0.8 has
EVERY_KEY = """[options]
    UseSyslog
    LogFile   = /var/log/knockd.log
    PidFile   = /run/knockd.pid
    Interface = eth-lan

[opencloseSSH]
    sequence        = 2222:udp,3333:tcp,4444:udp
    seq_timeout     = 15
    tcpflags        = syn,!ack
    start_command   = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --syn -j ACCEPT
    start_command_6 = /usr/sbin/ip6tables -A INPUT -s %IP% -p tcp --syn -j ACCEPT
    cmd_timeout     = 5
    stop_command    = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --syn -j ACCEPT
    stop_command_6  = /usr/sbin/ip6tables -D INPUT -s %IP% -p tcp --syn -j ACCEPT
    target          = 198.18.0.1

[opencloseSMTP]
    one_time_sequences = /etc/knockd/smtp_sequences
    seq_timeout        = 15
    tcpflags           = fin,!ack
    start_command      = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 25 -j ACCEPT
    cmd_timeout        = 5
    stop_command       = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 25 -j ACCEPT
    interface          = eth-wan
"""


def problems(text: str) -> list[str]:
    with pytest.raises(KnockdConfigError) as caught:
        parse_knockd_conf(text, "k.conf")
    assert caught.value.exit_code == EXIT_INPUT
    return caught.value.lines()


def one(text: str) -> KnockdDoor:
    doors = parse_knockd_conf(text).doors
    assert len(doors) == 1
    return doors[0]


def test_debian_stock_config() -> None:
    config = parse_knockd_conf(DEBIAN, "/etc/knockd.conf")
    assert config.options.use_syslog and config.options.log_file is None
    assert [d.name for d in config.doors] == ["openSSH", "closeSSH", "openHTTPS"]
    ssh = config.doors[0]
    assert ssh.sequence == (KnockPort(7000, "tcp"), KnockPort(8000, "tcp"), KnockPort(9000, "tcp"))
    assert ssh.seq_timeout == 5 and ssh.tcpflags == TcpFlags(required=0x02) and str(ssh.tcpflags) == "syn"
    assert ssh.start_command == "/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"
    assert ssh.stop_command is None and ssh.cmd_timeout == 10  # knockd's default
    assert ssh.line == 4 and ssh.key_lines == {"sequence": 5, "seq_timeout": 6, "start_command": 7, "tcpflags": 8}
    assert config.doors[2].sequence[3] == (13579, "tcp")


def test_installed_config_reads() -> None:
    path = Path("/etc/knockd.conf")
    if not path.exists():
        pytest.skip("knockd is not installed")
    assert read_knockd_conf(path).doors


def test_seed_config() -> None:
    config = parse_knockd_conf(SEED)
    assert config.options.log_file == "/var/log/knockd.log" and not config.options.use_syslog
    ssh = config.doors[0]
    assert (ssh.seq_timeout, ssh.cmd_timeout, str(ssh.tcpflags)) == (5, 10, "syn")
    assert command_argv(ssh.command("start", 4) or "", "198.18.0.2") == [
        "nft", "add", "element", "inet", "filter", "ssh_ok", "{", "198.18.0.2", "}",
    ]  # fmt: skip
    assert command_argv(ssh.command("stop", 6) or "", "2001:db8::2")[-2] == "2001:db8::2"


def test_every_key() -> None:
    config = parse_knockd_conf(EVERY_KEY)
    assert config.options.use_syslog
    assert (config.options.log_file, config.options.pid_file, config.options.interface) == (
        "/var/log/knockd.log",
        "/run/knockd.pid",
        "eth-lan",
    )
    ssh, smtp = config.doors
    assert ssh.sequence == ((2222, "udp"), (3333, "tcp"), (4444, "udp"))
    assert ssh.tcpflags == TcpFlags(required=0x02, forbidden=0x10) and str(ssh.tcpflags) == "syn,!ack"
    assert ssh.target == "198.18.0.1" and ssh.seq_timeout == 15 and ssh.cmd_timeout == 5
    assert ssh.command("start", 6) == "/usr/sbin/ip6tables -A INPUT -s %IP% -p tcp --syn -j ACCEPT"
    assert ssh.command("stop", 6) == "/usr/sbin/ip6tables -D INPUT -s %IP% -p tcp --syn -j ACCEPT"
    assert ssh.command("stop", 4) == "/usr/sbin/iptables -D INPUT -s %IP% -p tcp --syn -j ACCEPT"
    assert smtp.sequence == () and smtp.one_time_sequences == "/etc/knockd/smtp_sequences"
    assert smtp.tcpflags == TcpFlags(required=0x01, forbidden=0x10) and smtp.interface == "eth-wan"
    assert smtp.command("start", 6) == smtp.start_command  # no _6: the IPv4 command for both


def test_keys_are_case_insensitive_and_old_names_work() -> None:
    door = one("[d]\nSEQUENCE = 1:UDP, 2 ,3:Tcp\nTimeout = 7\nCommand = a %IP%\nCOMMAND_6 =\nTcpFlags = SYN, !Urg\n")
    assert door.sequence == ((1, "udp"), (2, "tcp"), (3, "tcp"))
    assert door.seq_timeout == 7 and door.start_command == "a %IP%"
    assert door.start_command_6 == "" and door.command("start", 6) == ""  # empty: run nothing for IPv6
    assert door.tcpflags == TcpFlags(required=0x02, forbidden=0x20)
    assert one("[Options]\nusesyslog\n[d]\nsequence=1\n").sequence == ((1, "tcp"),)


def test_comments_and_blank_lines() -> None:
    text = "# knockd\n\n[d]   \n  # a comment\n sequence = 7000,8000 # two knocks\n seq_timeout = 5 # s\n"
    door = one(text + " command = /bin/echo '#not a comment' knock#1 %IP% # a comment; not run\n")
    assert door.sequence == ((7000, "tcp"), (8000, "tcp")) and door.seq_timeout == 5
    argv = command_argv(door.start_command or "", "198.18.0.2")
    assert argv == ["/bin/echo", "#not a comment", "knock#1", "198.18.0.2"]  # as sh splits it (shlex cuts a#b)


def test_commands_split_like_a_shell_without_one() -> None:
    door = one("""[d]\nsequence=1\ncommand = sh -c 'logger "knock from %IP%"; touch /tmp/x'\n""")
    assert command_argv(door.start_command or "", "2001:db8::2") == [
        "sh", "-c", 'logger "knock from 2001:db8::2"; touch /tmp/x',
    ]  # fmt: skip
    assert command_argv("a %IP%%IP% b", "198.18.0.2") == ["a", "198.18.0.2198.18.0.2", "b"]


@pytest.mark.parametrize(
    ("command", "syntax"),
    [
        ("iptables -A INPUT -s %IP% -j ACCEPT; logger x", "';'"),
        ("iptables -L | grep x", "'|'"),
        ("echo %IP% >> /tmp/knocks", "'>'"),
        ("echo $HOME", "'$' expansion"),
        ('echo "$(id)"', "'$' expansion"),
        ("echo `id`", "backquotes"),
        ("sleep 1 &", "'&'"),
        ("rm /tmp/*", "a '*' glob"),
        ("ls ~/x", "'~' expansion"),
    ],
)
def test_shell_syntax_is_refused(command: str, syntax: str) -> None:
    (line,) = problems(f"[d]\nsequence = 1\nstop_command = {command}\n")
    assert line.startswith("k.conf:3: stop_command: uses shell syntax (") and syntax in line
    assert "sh -c" in line


def test_errors_at_file_line_key() -> None:
    text = """sequence = 1
[options]
logfile
bogus = 3
[ssh]
sequence = 7000,99999,8000
tcpflags = syn,!syn
seq_timeout = 5s
command = /bin/echo 'unclosed
target = nope
interface = eth0/1
squence = 1
cmd_timeout = -1
[ssh]
sequence = 1:icmp
[empty]
seq_timeout = 3
tcpflags = syn,push
[both]
sequence = 1
one_time_sequences = /x
sequence = 2
[
"""
    assert problems(text) == [
        "k.conf:1: sequence: outside any section — put it under [options] or a [DoorName]",
        "k.conf:3: logfile: expected logfile = VALUE",
        "k.conf:4: bogus: not a knockd key in [options] — known keys: interface, logfile, pidfile, usesyslog",
        "k.conf:6: sequence: '99999': the port must be 1-65535 — write PORT or PORT:tcp or PORT:udp",
        "k.conf:7: tcpflags: syn is both required and excluded — keep one of syn and !syn",
        "k.conf:8: seq_timeout: '5s' is not a whole number of seconds (1-604800) — e.g. 10",
        "k.conf:9: command: cannot split into words (No closing quotation) — check the quotes",
        "k.conf:10: target: 'nope' is not an IPv4 or IPv6 address — knockd matches the knock's destination",
        "k.conf:11: interface: 'eth0/1' is not an interface name (1-15 characters, no '/', ':' or spaces) — e.g. eth0",
        "k.conf:12: squence: not a knockd key in a door — did you mean sequence?",
        "k.conf:13: cmd_timeout: '-1' is not a whole number of seconds (0-604800) — e.g. 10",
        "k.conf:14: door [ssh] is already defined at line 5 — rename it",
        "k.conf:15: sequence: '1:icmp': protocol must be tcp or udp",
        "k.conf:16: sequence: door [empty] has no knock sequence — add sequence = …",
        "k.conf:18: tcpflags: unknown flag 'push' — use fin, syn, rst, psh, ack, urg, each maybe with ! before it",
        "k.conf:21: one_time_sequences: a door takes sequence or one_time_sequences, not both — remove one",
        "k.conf:22: sequence: given twice in [both] (first at line 20) — keep one",
        "k.conf:23: bad section header '[' — write [options] or [DoorName]",
    ]


def test_more_errors() -> None:
    assert problems("") == ["k.conf: no door defined — add a section such as [openSSH] with a sequence"]
    assert problems("[d]\nsequence = 1\nlogfile = /x\n") == [
        "k.conf:3: logfile: not a knockd key in a door — it belongs in [options]"
    ]
    assert problems("[options]\nsequence = 1\n[d]\nsequence = 1\n") == [
        "k.conf:2: sequence: not a knockd key in [options] — it belongs in a door section"
    ]
    assert problems("[d]\nsequence = 1\ncommand = 1\nstart_command = 2\n") == [
        "k.conf:4: start_command: given twice in [d] (first at line 3) — keep one"
    ]
    assert problems("[d]\nsequence = " + ",".join(["1"] * 33) + "\n")[0].endswith("33 ports: knockd takes at most 32")
    assert problems("[d]\nsequence = 1,,2\n")[0].endswith(
        "empty item between commas — write PORT or PORT:tcp or PORT:udp"
    )
    assert problems("[d]\nsequence = ²\n")[0].startswith("k.conf:2: sequence: '²': the port must be 1-65535")
    assert problems("[options]\nUseSyslog = maybe\n[d]\nsequence=1\n") == [
        "k.conf:2: UseSyslog: 'maybe': write UseSyslog alone (or = yes / no)"
    ]
    assert problems("[d]\nsequence = 1\ncommand = # only a comment\n")[0].endswith(
        "nothing but a comment — leave the value empty to run nothing"
    )
    many = "[d]\nsequence = 1\n" + "x = 1\n" * 50
    assert len(problems(many)) == 21 and problems(many)[-1].endswith("too many problems, stopped listing them here")


def test_sequences() -> None:
    assert parse_sequence("7000, 8000:udp ,9000:TCP") == ((7000, "tcp"), (8000, "udp"), (9000, "tcp"))
    assert str(parse_sequence("1:udp")[0]) == "1:udp"
    for bad in ("", " , ", "0", "65536", "a", "1:sctp", "1:", "-1", "1.5"):
        with pytest.raises(ValueError):
            parse_sequence(bad)


def test_one_time_sequences_file(tmp_path: Path) -> None:
    text = "# used ones start with #\n#7000,8000\n 1000,2000:udp\n\n 3000,4000 # next\n"
    found = parse_one_time_sequences(text, "otp")
    assert [(s.line, s.offset, s.sequence) for s in found] == [
        (3, 36, ((1000, "tcp"), (2000, "udp"))),
        (5, 52, ((3000, "tcp"), (4000, "tcp"))),
    ]
    assert text.encode()[36:37] == b" "  # the byte knockd overwrites with '#'
    with pytest.raises(KnockdConfigError) as caught:
        parse_one_time_sequences(" 1,2\n 3,x\n", "otp")
    assert caught.value.lines() == [
        "otp:2: sequence: 'x': the port must be 1-65535 — write PORT or PORT:tcp or PORT:udp"
    ]

    (tmp_path / "seqs").write_text(text)
    conf = tmp_path / "knockd.conf"
    conf.write_text("[otp]\none_time_sequences = seqs\ncommand = x\n")
    door = read_knockd_conf(conf).doors[0]
    assert door.one_time_sequences == str(tmp_path / "seqs")  # relative to the config's directory
    (tmp_path / "seqs").write_text("#1,2\n")
    with pytest.raises(KnockdConfigError) as caught:
        read_knockd_conf(conf)
    assert caught.value.lines() == [f"{conf}:2: one_time_sequences: {tmp_path / 'seqs'} has no unused sequence left"]
    (tmp_path / "seqs").unlink()
    with pytest.raises(KnockdConfigError) as caught:
        read_knockd_conf(conf)
    assert "cannot read one-time sequences: No such file or directory" in caught.value.lines()[0]


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read: No such file or directory"):
        read_knockd_conf(tmp_path / "missing.conf")
    (tmp_path / "bin.conf").write_bytes(b"[d]\nsequence = 1\xff\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_knockd_conf(tmp_path / "bin.conf")


def test_json_rendering_of_errors() -> None:
    with pytest.raises(KnockdConfigError) as caught:
        parse_knockd_conf("[d]\nsequence = 1\nseq_timeout = x\n", "k.conf")
    data = caught.value.as_json()
    assert data["error"] == "invalid knockd configuration" and data["exit_code"] == EXIT_INPUT
    assert data["problems"][0] == {  # type: ignore[index]
        "file": "k.conf",
        "line": 3,
        "key": "seq_timeout",
        "message": "'x' is not a whole number of seconds (1-604800) — e.g. 10",
    }


# --- random text: InputError or a config, never anything else ----------------------------------------

TOKENS = [
    "[options]", "[ssh]", "[", "]", "=", ",", ":", "!", "#", "%IP%", "'", '"', "\\", ";", "|", "$", " ", "\t", "\n",
    "sequence", "seq_timeout", "tcpflags", "command", "start_command_6", "stop_command", "cmd_timeout", "target",
    "one_time_sequences", "interface", "UseSyslog", "LogFile", "PidFile", "Interface", "timeout", "command_6",
    "7000", "0", "65535", "99999999999999999999", "tcp", "udp", "syn", "!ack", "fin", "198.18.0.1", "::1", "²",
    "eth0", "\x00", "é", "\r",
]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_token_soup_raises_only_input_errors(tokens: list[str]) -> None:
    try:
        config = parse_knockd_conf("".join(tokens))
    except InputError as error:
        assert error.lines() and all(line.startswith("knockd.conf") for line in error.lines())
        return
    assert isinstance(config, KnockdConfig) and config.doors
    for door in config.doors:
        assert door.sequence and all(0 < port < 65536 for port, _proto in door.sequence)
        for kind in ("start", "stop"):
            for family in (4, 6):
                command_argv(door.command(kind, family) or "", "198.18.0.2")  # always splits


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_text_raises_only_input_errors(text: str) -> None:
    with contextlib.suppress(InputError):
        parse_knockd_conf(text)
    with contextlib.suppress(InputError):
        parse_one_time_sequences(text)


WORD_PIECES = ["a", "%IP%", "-s", " ", "  ", "\t", "'", '"', "\\", "#", "{", "}", "x#y", "é", "=", ",", ":", "!", "."]


@pytest.mark.skipif(shutil.which("sh") is None, reason="no /bin/sh")
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORD_PIECES), min_size=1, max_size=12))
def test_commands_split_as_sh_splits_them(pieces: list[str]) -> None:
    """Whatever the reader accepts, command_argv() splits into the words /bin/sh would pass to the program."""
    text = "".join(pieces)
    try:
        door = one(f"[d]\nsequence = 1\ncommand = {text}\n")
    except InputError:
        return
    words = command_argv(door.start_command or "", "198.18.0.2")
    script = "printf '%s\\0' " + text.replace("%IP%", "198.18.0.2") if words else "true"
    done = subprocess.run(["sh", "-c", script], capture_output=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert (done.stdout.decode().split("\0")[:-1] if words else []) == words


# --- knockd itself as the oracle ------------------------------------------------------------------

KNOCKD = shutil.which("knockd")
needs_knockd = pytest.mark.skipif(KNOCKD is None, reason="knockd is not installed")


def knockd_parse(path: Path) -> tuple[dict[str, dict[str, str]], str]:
    """What `knockd -D` says it parsed, per door, and its error line ("" when the config was accepted)."""
    assert KNOCKD is not None
    done = subprocess.run(
        [KNOCKD, "-D", "-c", str(path), "-i", "pw-no-such-if0"], capture_output=True, text=True, timeout=30
    )
    doors: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    error = ""
    for line in (done.stdout + done.stderr).splitlines():
        if m := re.fullmatch(r"config: new section: '(.*)'", line):
            current = doors.setdefault(m[1], {}) if m[1] != "options" else {}
        elif m := re.fullmatch(r"config: tcp flag: (.*)", line):
            current["tcpflags"] = ",".join(filter(None, [current.get("tcpflags", ""), m[1].lower()]))
        elif m := re.fullmatch(r"config: [^:]*: (sequence|seq_timeout|start_command|start_command_6|stop_command|"
                               r"stop_command_6|cmd_timeout|target): (.*)", line):  # fmt: skip
            current[m[1]] = m[2]
        elif line.startswith(("config: line", "config: section", "error:")):
            error = line
    if not error and "could not open pw-no-such-if0" not in done.stderr:
        error = done.stderr.strip() or "knockd failed"
    return doors, error


def ours(door: KnockdDoor) -> dict[str, str]:
    """Our reading in knockd's debug terms: the keys given, flags sorted (knockd prints them in config order)."""
    out = {}
    for key in door.key_lines:
        value = getattr(door, key)
        out[key] = ",".join(map(str, value)) if key == "sequence" else str(value)
    if "tcpflags" in out:
        out["tcpflags"] = ",".join(sorted(out["tcpflags"].split(",")))
    return out


@needs_knockd
@pytest.mark.parametrize(
    "text",
    [
        DEBIAN,
        SEED,
        EVERY_KEY.replace("    Interface = eth-lan\n", "").split("[opencloseSMTP]")[0],
        "[d]\nSEQUENCE = 1:UDP,2,3:Tcp\nTimeout = 7\nCommand = a %IP%\nCOMMAND_6 = b\n",
        "[d]\nsequence = 65535:udp\ntcpflags = fin,!syn,rst,!psh,ack,!urg\ncmd_timeout = 0\ntarget = 2001:db8::1\n",
    ],
)
def test_knockd_parses_what_we_parse(text: str, tmp_path: Path) -> None:
    path = tmp_path / "knockd.conf"
    path.write_text(text.replace("/var/log/knockd.log", str(tmp_path / "log")))  # knockd opens it
    theirs, error = knockd_parse(path)
    assert not error, error
    config = parse_knockd_conf(text)
    assert list(theirs) == [door.name for door in config.doors]
    for door in config.doors:
        got = dict(theirs[door.name])
        if "tcpflags" in got:
            got["tcpflags"] = ",".join(sorted(got["tcpflags"].split(",")))
        assert got == ours(door)


@needs_knockd
@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("sequence = 1\n[d]\nsequence = 2\n", 1),
        ("[d]\nsequence = 1,2\nfoo\n", 3),
        ("[d]\nsequence = 1,2\nbogus = 1\n", 3),
        ("[d]\nsequence = 1\ntcpflags = syn,push\n", 3),
        ("[options]\nsequence = 1\n[d]\nsequence = 1\n", 2),
        ("[d]\nsequence = 1\ninterface = eth0 x\n", 3),
        ("[d]\nsequence = 1,2:icmp\n", 2),
        ("[d]\nseq_timeout = 2\n", 1),
    ],
)
def test_what_knockd_refuses_we_refuse(text: str, line: int, tmp_path: Path) -> None:
    path = tmp_path / "knockd.conf"
    path.write_text(text)
    _doors, error = knockd_parse(path)
    assert error
    reported = problems(text)
    assert any(item.startswith(f"k.conf:{line}:") for item in reported), reported
