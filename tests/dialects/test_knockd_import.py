"""import --from knockd: knockd.conf doors become [[knock]] doors that open what their commands opened.

Oracles: the real tools.  ufw's own `--dry-run` (in a private mount namespace over a copy of /etc/ufw) says
which iptables rules a ufw command adds; in the lab, iptables and nft run each start command for the
knocker and the imported kernel door must then open exactly the same ports after a knock.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portward.dialects.knockd import FirewallChange, NotARule, command_argv, read_command, read_policy
from portward.dialects.nft import compile_policy, render_text
from portward.errors import ProblemsError
from portward.policy.toml import LoadedPolicy, load_policy_text
from tests.netlab import LAN4, SRV_LAN4, SRV_WAN4, Lab
from tests.pwutil import ROOT

SEEDS = Path("/work/shared/seeds")
CONFIG_LINE = re.compile(r"^\[[A-Za-z]+\]$|^[A-Za-z_]+(\s*=.*)?$")

# Debian's knockd 0.8 package: /etc/knockd.conf as shipped
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


def seed_configs() -> list[str]:
    """The knockd.conf texts quoted in seed 001 (the stock one, then the author's ufw one)."""
    lines = next(SEEDS.glob("001_*.txt")).read_text(encoding="utf-8").splitlines()
    configs: list[str] = []
    for index, line in enumerate(lines):
        if line.strip() == "[options]":
            block = []
            for following in lines[index:]:
                if not CONFIG_LINE.match(following.strip()):
                    break
                block.append(following)
            configs.append("\n".join(block) + "\n")
    return configs


def portward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "portward", *args], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src")})


def imported(tmp_path: Path, text: str, name: str = "knockd.conf") -> tuple[str, list[str], LoadedPolicy]:
    path = tmp_path / name
    path.write_text(text)
    converted = read_policy([str(path)])
    loaded = load_policy_text(converted.text, str(tmp_path / "imported.toml"))  # what `portward check` does
    compile_policy(loaded)
    return converted.text, converted.notes, loaded


# --- the seed's and Debian's configs ------------------------------------------------------------------


def test_seed_001_stock_config_becomes_one_door_closed_by_time(tmp_path: Path) -> None:
    stock, ufw = seed_configs()
    assert "[closeSSH]" in stock and "ufw allow" in ufw
    _text, notes, loaded = imported(tmp_path, stock)
    [door] = loaded.policy.knock
    assert (door.name, door.sequence, door.seq_timeout, door.open, door.open_for) == (
        "openSSH", ["7000/tcp", "8000/tcp", "9000/tcp"], 5, ["22/tcp"], 30,
    )
    close = [note for note in notes if ": [closeSSH] " in note]
    assert len(close) == 1 and "close by themselves" in close[0] and close[0].startswith(f"{tmp_path}/knockd.conf:")
    assert any("[openSSH]" in note and "open_for = 30" in note for note in notes)


def test_seed_001_ufw_config_keeps_cmd_timeout(tmp_path: Path) -> None:
    _stock, ufw = seed_configs()
    text, notes, loaded = imported(tmp_path, ufw)
    [door] = loaded.policy.knock
    assert (door.name, door.open, door.open_for, door.seq_timeout) == ("openSSH", ["22/tcp"], 30, 5)
    assert "# from" in text and "ufw allow from %IP% to any port 22 proto tcp" in text  # the command, as a comment
    assert not any("stop_command" in note for note in notes)  # the stop command undoes the start exactly


def test_debian_default_keeps_the_unknown_command_as_a_comment(tmp_path: Path) -> None:
    text, notes, loaded = imported(tmp_path, DEBIAN)
    assert [door.name for door in loaded.policy.knock] == ["openSSH"]
    where = f"{tmp_path}/knockd.conf"
    by_door = {match.group(1): note for note in notes if (match := re.search(r"\d: \[(\w+)\] ", note))}
    assert by_door["closeSSH"].startswith(f"{where}:13: [closeSSH]")
    assert by_door["openHTTPS"].startswith(f"{where}:19: [openHTTPS]")
    assert f"portward knockd -c {where}" in by_door["openHTTPS"]
    assert "# start_command = /usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%" in text
    assert '# sequence = ["12345/tcp", "54321/tcp", "24680/tcp", "13579/tcp"]' in text
    assert any("UseSyslog" in note and note.startswith(f"{where}:2:") for note in notes)


def test_cli_import_writes_a_policy_that_checks(tmp_path: Path) -> None:
    (tmp_path / "knockd.conf").write_text(DEBIAN)
    out = tmp_path / "policy.toml"
    done = portward("import", "--from", "knockd", str(tmp_path / "knockd.conf"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "[openHTTPS]" in done.stdout and out.exists()
    check = portward("check", "-p", str(out))
    assert check.returncode == 0, check.stderr


def test_bad_knockd_conf_is_exit_2_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "knockd.conf").write_text("[openSSH]\nsequence = 7000,70000\ncommand = iptables -A INPUT\n")
    done = portward("import", "--from", "knockd", str(tmp_path / "knockd.conf"))
    assert done.returncode == 2 and f"{tmp_path}/knockd.conf:2: sequence:" in done.stderr
    assert "Traceback" not in done.stderr


# --- doors and their notes ------------------------------------------------------------------------------


def test_options_and_door_keys_are_carried_or_noted(tmp_path: Path) -> None:
    text, notes, loaded = imported(tmp_path, """[options]
  Interface = eth-lan
  LogFile = /var/log/knockd.log
[web]
  sequence = 2222:udp,3333,4444:udp
  seq_timeout = 15
  tcpflags = fin,!ack
  start_command = nft add rule inet filter input ip saddr %IP% tcp dport { 80, 443 } accept
  cmd_timeout = 0
  stop_command = /usr/bin/logger closed
  target = 198.18.0.1
[elements]
  sequence = 1111,2222,3333
  start_command = nft add element inet filter knocked { %IP% timeout 1m }
[otp]
  one_time_sequences = /etc/knockd/otp
  start_command = iptables -A INPUT -s %IP% -p tcp --dport 25 -j ACCEPT
""")
    [door] = loaded.policy.knock
    assert (door.sequence, door.seq_timeout, door.open, door.open_for, door.interface) == (
        ["2222/udp", "3333/tcp", "4444/udp"], 15, ["80/tcp", "443/tcp"], 1, "eth-lan",
    )
    joined = "\n".join(notes)
    for needed in ("knockd.conf:7: [web] tcpflags = fin,!ack", "knockd.conf:10: [web] stop_command: logger is not",
                   "knockd.conf:9: [web] cmd_timeout = 0", "knockd.conf:11: [web] target = 198.18.0.1",
                   "knockd.conf:14: [elements] adds the knocker to nft set inet filter knocked",
                   "knockd.conf:17: [otp] takes one-time sequences", "knockd.conf:3: [options] LogFile"):
        assert needed in joined, needed
    assert text.count("# open = []") == 2  # [elements] and [otp] kept as comments


def test_names_are_made_valid_and_unique(tmp_path: Path) -> None:
    conf = "".join(f"[{name}]\nsequence = 1,2,3\ncommand = ufw allow from %IP% to any port 22 proto tcp\n"
                   for name in ("open SSH!", "open-SSH", "-x-", "ünï", "…"))
    _text, _notes, loaded = imported(tmp_path, conf)
    assert [door.name for door in loaded.policy.knock] == ["open-SSH", "open-SSH-2", "x", "n", "door"]


def test_long_sequence_and_unpaired_close(tmp_path: Path) -> None:
    long = ",".join(str(port) for port in range(1001, 1018))
    _text, notes, loaded = imported(tmp_path, f"""[long]
sequence = {long}
command = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
[close]
sequence = 5,6,7
command = iptables -D INPUT -s %IP% -p tcp --dport 80 -j ACCEPT
[nothing]
sequence = 8,9,10
""")
    assert loaded.policy.knock == []
    joined = "\n".join(notes)
    assert "[long] has 17 knocks" in joined and "[close] only takes access back" in joined
    assert "[nothing] has no start_command" in joined


# --- commands -> what they open ------------------------------------------------------------------------

OPENS = [
    ("/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", ("22/tcp",)),
    ("iptables -w -I INPUT 1 -s %IP% -p tcp -m multiport --dports 22,80,8000:8100 -m conntrack --ctstate NEW "
     "-j ACCEPT", ("22/tcp", "80/tcp", "8000-8100/tcp")),
    ("/usr/sbin/iptables -A INPUT -s %IP% -p tcp --syn -j ACCEPT", ("1-65535/tcp",)),
    ("ip6tables -A INPUT -s %IP% -i eth0 -p udp --dport 53 -j ACCEPT", ("53/udp",)),
    ("iptables -A INPUT -s %IP% -p tcp --dport ssh -j ACCEPT", ("22/tcp",)),
    ("sudo iptables -t filter -A INPUT -s %IP%/32 -p sctp --dport 9 -j ACCEPT", ("9/sctp",)),
    ("nft add rule inet filter input ip saddr %IP% tcp dport 22 accept", ("22/tcp",)),
    ("nft insert rule inet filter input ip saddr %IP% tcp dport { 22, 80, 1000-2000 } ct state new counter accept",
     ("22/tcp", "80/tcp", "1000-2000/tcp")),
    ("nft add rule inet filter input ip saddr %IP% meta l4proto { tcp, udp } th dport 53 accept", ("53/tcp", "53/udp")),
    ('nft add rule inet filter input iifname "eth0" ip6 saddr %IP% udp dport 53 accept comment "knock"', ("53/udp",)),
    ("nft 'add rule ip filter input ip saddr %IP% tcp flags syn accept'", ("1-65535/tcp",)),
    ("/usr/sbin/ufw allow from %IP% to any port 22 proto tcp", ("22/tcp",)),
    ("ufw insert 1 allow from %IP% to any port 22", ("22/tcp", "22/udp")),
    ("ufw allow proto tcp from %IP% to any port 22,80", ("22/tcp", "80/tcp")),
    ("ufw allow in on eth0 from %IP% to any port 8000:8100 proto tcp", ("8000-8100/tcp",)),
    ("ufw allow from %IP% to any port ssh", ("22/tcp",)),
]

REFUSED = [
    ("/sbin/iptables -A INPUT -s %IP% --dport 22 -j ACCEPT", "would refuse it"),  # knockd(1)'s own example
    ("iptables -t nat -A PREROUTING -s %IP% -p tcp --dport 22 -j DNAT --to 198.18.0.9", "nat table"),
    ("iptables -A FORWARD -s %IP% -j ACCEPT", "chain FORWARD"),
    ("iptables -A INPUT -s %IP% -p icmp -j ACCEPT", "no ports"),
    ("iptables -A INPUT -s %IP% -p tcp ! --dport 22 -j ACCEPT", "negated"),
    ("iptables -A INPUT -s %IP% -m recent --set -j ACCEPT", "recent"),
    ("iptables -A INPUT -s 198.18.0.0/24 -p tcp --dport 22 -j ACCEPT", "not the knocker"),
    ("iptables -A INPUT -s %IP% -p tcp --dport 22 -j DROP", "does not accept"),
    ("nft add rule inet filter forward ip saddr %IP% accept", "chain forward"),
    ("nft add rule inet filter input ip saddr %IP% tcp dport 22 drop", "does not accept"),
    ("nft add rule inet filter input ip saddr %IP% fib daddr type local accept", "not one portward reads"),
    ("nft list ruleset", "neither adds nor deletes"),
    ("ufw allow from %IP% to any app OpenSSH", "application profile"),
    ("ufw allow from %IP% to any port 22,80", "without proto"),
    ("ufw deny from %IP%", "does not open"),
    ("ufw allow out to any port 53", "outbound"),
    ("/usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%", "not iptables"),
    ("/usr/bin/wakeonlan 00:11:22:33:44:55", "not iptables"),
]


@pytest.mark.parametrize(("command", "ports"), OPENS)
def test_commands_that_open(command: str, ports: tuple[str, ...]) -> None:
    change = read_command(command)
    assert change.opens and change.ports == ports


@pytest.mark.parametrize(("command", "why"), REFUSED)
def test_commands_portward_cannot_enforce(command: str, why: str) -> None:
    with pytest.raises(NotARule, match=re.escape(why)):
        read_command(command)


@pytest.mark.parametrize(
    ("start", "stop", "undoes"),
    [
        ("iptables -I INPUT 1 -s %IP% -p tcp --dport 22 -j ACCEPT",
         "iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", True),
        ("iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT",
         "iptables -D INPUT -s %IP% -p tcp --dport 80 -j ACCEPT", False),
        ("ufw allow from %IP% to any port 22 proto tcp", "ufw delete allow from %IP% to any port 22 proto tcp", True),
        ("nft add element inet filter ok { %IP% }", "nft delete element inet filter ok { %IP% }", True),
        ("nft add rule inet filter input ip saddr %IP% tcp dport 22 accept",
         "nft delete rule inet filter input handle 7", False),
        ("iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", "ufw delete allow from %IP% to any port 22 proto tcp",
         False),
    ],
)
def test_stop_commands_pair_with_their_start(start: str, stop: str, undoes: bool) -> None:
    assert read_command(stop).undoes(read_command(start)) is undoes


WORDS = ["iptables", "ip6tables", "nft", "ufw", "-A", "-I", "-D", "INPUT", "input", "-s", "%IP%", "-p", "tcp", "udp",
         "--dport", "22", "80:90", "-j", "ACCEPT", "DROP", "add", "delete", "rule", "element", "inet", "filter", "{",
         "}", ",", "saddr", "ip", "dport", "accept", "allow", "from", "to", "any", "port", "proto", "insert", "1", "'",
         '"', "-m", "multiport", "--dports", "th", "meta", "l4proto", "timeout", "30s", "ct", "state", "new", "!"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=14))
def test_any_words_are_read_or_refused(words: list[str]) -> None:
    try:
        change = read_command(" ".join(words))
    except NotARule:
        return
    assert isinstance(change, FirewallChange)
    assert change.ports is None or all(re.fullmatch(r"\d+(-\d+)?/(tcp|udp|sctp)", spec) for spec in change.ports)


# --- ufw itself says what its commands add --------------------------------------------------------------

UFW_COMMANDS = [
    "allow from %IP% to any port 22 proto tcp",
    "allow from %IP% to any port 22",
    "allow from %IP% to any port ssh",
    "allow proto udp from %IP% to any port 53,123",
    "allow proto tcp from %IP% to any port 8000:8100",
    "allow from %IP% port 22",
    "allow in on eth0 from %IP% to any port 443 proto tcp",
    "allow from %IP% to any port 22,80",
]


@pytest.fixture(scope="module")
def ufw_etc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ufw") is None or shutil.which("unshare") is None:
        pytest.skip("ufw or unshare missing")
    copy = tmp_path_factory.mktemp("ufw") / "etc-ufw"
    shutil.copytree("/etc/ufw", copy)  # ufw --dry-run reads it; the bind mount below keeps /etc untouched
    return copy


def ufw_dry_run(etc: Path, args: str) -> subprocess.CompletedProcess[str]:
    script = 'mount --bind "$0" /etc/ufw && exec ufw --dry-run "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, str(etc), *args.split()], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args", UFW_COMMANDS)
def test_ufw_commands_open_what_ufw_adds(ufw_etc: Path, args: str) -> None:
    done = ufw_dry_run(ufw_etc, args.replace("%IP%", LAN4))
    try:
        ours = read_command(f"ufw {args}")
    except NotARule:
        assert "ERROR" in done.stdout + done.stderr, done.stdout  # ufw refuses it too
        return
    rules = [line for line in done.stdout.splitlines() if line.startswith("-A ufw-user-input ")]
    assert rules, done.stdout + done.stderr
    theirs: list[str] = []
    for rule in rules:  # the same rules read as `iptables -A INPUT …` commands
        change = read_command(rule.replace("-A ufw-user-input", "iptables -A INPUT").replace(LAN4, "%IP%"))
        assert change.interface == ours.interface
        theirs.extend(change.ports or ())
    assert sorted(theirs) == sorted(ours.ports or ())


# --- in the lab: the door opens what the command opened -------------------------------------------------

PROBED = ["22/tcp", "23/tcp", "80/tcp", "443/tcp", "8080/tcp", "53/udp", "54/udp"]
IPTABLES_BASE = ["iptables -P INPUT DROP", "iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
NFT_BASE = """table inet filter {
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
    }
}
"""
LAB_COMMANDS = [
    ("iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", "iptables"),
    ("iptables -I INPUT 1 -s %IP% -p tcp -m multiport --dports 80,443,8000:8100 -j ACCEPT", "iptables"),
    ("iptables -A INPUT -s %IP% -p udp --dport 53 -j ACCEPT", "iptables"),
    ("nft add rule inet filter input ip saddr %IP% tcp dport { 22, 443 } ct state new accept", "nft"),
    ("nft add rule inet filter input ip saddr %IP% meta l4proto { tcp, udp } th dport { 53, 80 } accept", "nft"),
]


def knock(lab: Lab, host: str, ports: list[str]) -> None:
    done = lab.run("lan", [sys.executable, "-m", "portward", "knock", "-d", "10", host, *ports],
                   env={"PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr


def opened(lab: Lab) -> set[str]:
    return {port for port, state in lab.probe("lan", SRV_LAN4, PROBED, timeout=0.3).items() if state == "open"}


def test_imported_doors_open_what_the_commands_opened(lab: Lab, tmp_path: Path) -> None:
    lab.listen("srv", PROBED)
    for command, tool in LAB_COMMANDS:
        lab.flush_ruleset()
        if tool == "iptables":
            for line in IPTABLES_BASE:
                assert lab.run("srv", line.split()).returncode == 0
        else:
            lab.nft("srv", "-f", "-", stdin=NFT_BASE)
        assert opened(lab) == set(), command
        ran = lab.run("srv", command_argv(command, LAN4))
        assert ran.returncode == 0, ran.stderr
        by_command = opened(lab)
        assert by_command, command
        lab.flush_ruleset()
        _text, _notes, loaded = imported(tmp_path, f"[door]\nsequence = 7000,9000:udp,8000\nseq_timeout = 5\n"
                                                   f"start_command = {command}\n")
        lab.nft("srv", "-f", "-", stdin=render_text(compile_policy(loaded)))
        assert opened(lab) == set(), command
        knock(lab, SRV_LAN4, ["7000", "9000:udp", "8000"])
        assert opened(lab) == by_command, command


def test_seed_door_opens_for_the_knocker_in_the_kernel(lab: Lab, tmp_path: Path) -> None:
    """Seed 001's ufw door, imported, compiled and loaded in srv: `knock` from lan opens ssh for lan only."""
    _stock, ufw = seed_configs()
    _text, _notes, loaded = imported(tmp_path, ufw)
    lab.listen("srv", ["22/tcp"])
    lab.nft("srv", "-f", "-", stdin=render_text(compile_policy(loaded)))
    assert lab.probe("lan", SRV_LAN4, ["22/tcp"], timeout=0.3)["22/tcp"] == "filtered"
    knock(lab, SRV_LAN4, ["7000", "8000", "9000"])
    assert lab.probe("lan", SRV_LAN4, ["22/tcp"], timeout=0.3)["22/tcp"] == "open"
    assert lab.probe("wan", SRV_WAN4, ["22/tcp"], timeout=0.3)["22/tcp"] == "filtered"
    grants = lab.nft("srv", "list", "set", "inet", "portward", "knock_openSSH_open_v4")
    assert "198.18.0.2" in grants and "expires" in grants


def test_problems_error_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "k.conf").write_text("[x]\nseq_timeout = 5s\n")
    with pytest.raises(ProblemsError) as caught:
        read_policy([str(tmp_path / "k.conf")])
    assert caught.value.exit_code == 2
