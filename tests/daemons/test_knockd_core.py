"""The knockd core without any IO: packet events in, actions out (log lines, commands, stop timers)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from portward.daemons.knockd import Action, KnockTracker, Log, RunCommand, ScheduleStop, UseOneTimeSequence
from portward.dialects.knockd import KnockdDoor, parse_knockd_conf, parse_one_time_sequences
from portward.kernel.nflog import TCP_ACK, TCP_FIN, TCP_SYN, PacketEvent

LAN4, LAN6, SRV4, SRV6 = "198.18.0.2", "2001:db8:0:1::2", "198.18.0.1", "2001:db8:0:1::1"

CONF = """
[options]
    UseSyslog

[ssh]
    sequence      = 7000,8000,9000
    seq_timeout   = 5
    tcpflags      = syn
    start_command = nft add element inet t allowed { %IP% }
    cmd_timeout   = 10
    stop_command  = nft delete element inet t allowed { %IP% }
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def door(conf: str = CONF, name: str = "ssh") -> KnockdDoor:
    return next(d for d in parse_knockd_conf(conf).doors if d.name == name)


def packet(
    src: str, port: int, proto: str = "tcp", flags: int = TCP_SYN, *, dst: str = "", iface: str = "eth-lan"
) -> PacketEvent:
    family = 6 if ":" in src else 4
    dst = dst or (SRV6 if family == 6 else SRV4)
    return PacketEvent(0.0, family, src, dst, proto, 40000, port, flags if proto == "tcp" else 0, iface, "knock")


def words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def messages(actions: list[Action]) -> list[str]:
    return [a.message for a in actions if isinstance(a, Log)]


def commands(actions: list[Action]) -> list[tuple[str, tuple[str, ...]]]:
    return [(a.kind, a.argv) for a in actions if isinstance(a, RunCommand)]


def knock(
    tracker: KnockTracker, src: str, *ports: int | str, clock: Clock | None = None, step: float = 0.01
) -> list[Action]:
    out: list[Action] = []
    for item in ports:
        port_text, _, proto = str(item).partition(":")
        out += tracker.feed(packet(src, int(port_text), proto or "tcp"))
        if clock is not None:
            clock.t += step
    return out


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ssh(clock: Clock) -> KnockTracker:
    return KnockTracker([door()], clock)


def test_stages_open_and_command_timeout(ssh: KnockTracker, clock: Clock) -> None:
    actions = knock(ssh, LAN4, 7000, 8000, 9000)
    assert messages(actions) == [
        "198.18.0.2: ssh: Stage 1",
        "198.18.0.2: ssh: Stage 2",
        "198.18.0.2: ssh: Stage 3",
        "198.18.0.2: ssh: OPEN SESAME",
    ]
    start = ("start", ("nft", "add", "element", "inet", "t", "allowed", "{", "198.18.0.2", "}"))
    assert commands(actions) == [start]
    assert [a for a in actions if isinstance(a, ScheduleStop)] == [ScheduleStop("ssh", LAN4, clock.t + 10)]
    assert ssh.next_deadline() == clock.t + 10 and ssh.open_doors() == [("ssh", LAN4)]
    assert ssh.tracked() == 0  # a completed attempt is not kept
    clock.t += 9.9
    assert ssh.due() == []
    clock.t += 0.2
    due = ssh.due()
    assert messages(due) == ["198.18.0.2: ssh: command timeout"]
    assert commands(due) == [("stop", ("nft", "delete", "element", "inet", "t", "allowed", "{", "198.18.0.2", "}"))]
    assert ssh.next_deadline() is None and ssh.open_doors() == []


def test_retransmitted_knocks_are_tolerated(ssh: KnockTracker) -> None:
    actions = knock(ssh, LAN4, 7000, 7000, 8000, 8000, 8000, 9000)
    assert "198.18.0.2: ssh: OPEN SESAME" in messages(actions)
    assert [m for m in messages(actions) if "Stage" in m] == [f"198.18.0.2: ssh: Stage {n}" for n in (1, 2, 3)]


def test_wrong_order_opens_nothing(ssh: KnockTracker) -> None:
    actions = knock(ssh, LAN4, 9000, 7000, 9000, 8000)
    assert not commands(actions)
    assert "198.18.0.2: ssh: wrong knock 9000:tcp at stage 1, starting over" in messages(actions)
    assert ssh.tracked() == 0  # 8000 without a stage 1 starts nothing


def test_a_wrong_first_knock_restarts_the_sequence(ssh: KnockTracker) -> None:
    actions = knock(ssh, LAN4, 7000, 8000, 7000, 8000, 9000)  # the 2nd 7000 is wrong at stage 2, and a new stage 1
    assert messages(actions).count("198.18.0.2: ssh: OPEN SESAME") == 1
    assert "198.18.0.2: ssh: wrong knock 7000:tcp at stage 2, starting over" in messages(actions)


def test_other_ports_reset_an_attempt(ssh: KnockTracker) -> None:
    """The capture reports another port after a knock (a sweep, `nmap -r`): that is a wrong knock too."""
    actions = knock(ssh, LAN4, 7000, 7001, 8000, 8999, 9000)
    assert not commands(actions)
    assert "198.18.0.2: ssh: wrong knock 7001:tcp at stage 1, starting over" in messages(actions)
    actions = knock(ssh, LAN4, 7000, "8000:udp", 8000, 9000)  # same port, other protocol: wrong
    assert not commands(actions)


def test_other_sources_do_not_interfere(ssh: KnockTracker) -> None:
    actions = []
    for port in (7000, 8000, 9000):
        actions += ssh.feed(packet(LAN4, port))
        actions += ssh.feed(packet("198.19.0.2", 1234))  # another source's noise
        actions += ssh.feed(packet("198.19.0.3", 7000))  # another source starting
    assert commands(actions) == [("start", ("nft", "add", "element", "inet", "t", "allowed", "{", LAN4, "}"))]


def test_seq_timeout_counts_from_the_first_knock(ssh: KnockTracker, clock: Clock) -> None:
    actions = knock(ssh, LAN4, 7000, 8000, 9000, clock=clock, step=2.0)  # 9000 comes 4 s after 7000
    assert commands(actions)
    clock.t += 60
    actions = knock(ssh, LAN4, 7000, 8000, 9000, clock=clock, step=2.6)  # 9000 comes 5.2 s after 7000
    assert not commands(actions)
    assert "198.18.0.2: ssh: sequence timeout (stage 2)" in messages(actions)
    actions = knock(ssh, LAN4, 8000, 9000)  # and the timed-out attempt cannot be finished
    assert not commands(actions)


def test_stale_attempts_age_out(ssh: KnockTracker, clock: Clock) -> None:
    for n in range(100):
        ssh.feed(packet(f"198.18.1.{n}", 7000))
    assert ssh.tracked() == 100
    clock.t += 5.5
    actions = ssh.due()
    assert ssh.tracked() == 0
    assert len([m for m in messages(actions) if m.endswith("sequence timeout (stage 1)")]) == 100


def test_tcpflags_non_matching_packets_are_ignored_not_wrong(clock: Clock) -> None:
    tracker = KnockTracker([door(CONF.replace("tcpflags      = syn", "tcpflags = syn,!ack"))], clock)
    actions = tracker.feed(packet(LAN4, 7000))
    actions += tracker.feed(packet(LAN4, 1234, flags=TCP_SYN | TCP_ACK))  # refused by !ack: not wrong
    actions += tracker.feed(packet(LAN4, 9000, flags=TCP_ACK))  # refused by syn: not wrong
    actions += tracker.feed(packet(LAN4, 8000, flags=TCP_SYN | TCP_ACK))  # refused: does not advance either
    assert messages(actions) == ["198.18.0.2: ssh: Stage 1"]
    actions = tracker.feed(packet(LAN4, 8000)) + tracker.feed(packet(LAN4, 9000, flags=TCP_SYN | TCP_FIN))
    assert "198.18.0.2: ssh: OPEN SESAME" in messages(actions)  # extra flags are fine unless excluded


def test_tcpflags_negation_alone(clock: Clock) -> None:
    conf = "[fin]\nsequence = 1000,2000:udp,3000\ntcpflags = fin,!syn\ncommand = /bin/true %IP%\n"
    tracker = KnockTracker([door(conf, "fin")], clock)
    actions = knock(tracker, LAN4)  # nothing yet
    actions += tracker.feed(packet(LAN4, 1000, flags=TCP_SYN))  # ignored
    actions += tracker.feed(packet(LAN4, 1000, flags=TCP_FIN))
    actions += tracker.feed(packet(LAN4, 2000, "udp"))  # UDP knocks have no flags to check
    actions += tracker.feed(packet(LAN4, 3000, flags=TCP_FIN | TCP_SYN))  # ignored: !syn
    actions += tracker.feed(packet(LAN4, 3000, flags=TCP_FIN | TCP_ACK))
    assert commands(actions) == [("start", ("/bin/true", LAN4))]


def test_no_tcpflags_means_any_tcp_packet(clock: Clock) -> None:
    tracker = KnockTracker([door(CONF.replace("tcpflags      = syn", ""))], clock)
    actions = tracker.feed(packet(LAN4, 7000, flags=TCP_ACK)) + tracker.feed(packet(LAN4, 8000, flags=TCP_FIN))
    actions += tracker.feed(packet(LAN4, 1234, flags=TCP_ACK))  # so an ACK elsewhere is a wrong knock
    assert "198.18.0.2: ssh: wrong knock 1234:tcp at stage 2, starting over" in messages(actions)


def test_ipv6_commands_and_fallback(clock: Clock) -> None:
    conf = CONF + (
        "\n[v6]\nsequence = 100,200\nstart_command = ipt -A %IP%\nstart_command_6 = ip6t -A %IP%\n"
        "stop_command = ipt -D %IP%\ncmd_timeout = 3\n"
        "[none6]\nsequence = 300,400\nstart_command = ipt -A %IP%\ncommand_6 =\nstop_command = ipt -D %IP%\n"
    )
    tracker = KnockTracker(parse_knockd_conf(conf).doors, clock)
    assert commands(knock(tracker, LAN6, 7000, 8000, 9000)) == [
        ("start", ("nft", "add", "element", "inet", "t", "allowed", "{", LAN6, "}"))  # no _6: the IPv4 command
    ]
    assert commands(knock(tracker, LAN6, 100, 200)) == [("start", ("ip6t", "-A", LAN6))]
    assert commands(knock(tracker, LAN4, 100, 200)) == [("start", ("ipt", "-A", LAN4))]
    assert commands(knock(tracker, LAN6, 300, 400)) == []  # empty command_6: nothing for IPv6, no stop either
    clock.t += 3.5
    stops = commands(tracker.due())
    assert ("stop", ("ipt", "-D", LAN6)) in stops  # stop_command_6 not given: the IPv4 one, for the v6 knocker
    assert ("stop", ("ipt", "-D", LAN4)) in stops
    assert len(stops) == 2


def test_reknock_while_open_postpones_the_stop(ssh: KnockTracker, clock: Clock) -> None:
    assert len(commands(knock(ssh, LAN4, 7000, 8000, 9000))) == 1
    first = ssh.next_deadline()
    clock.t += 6
    actions = knock(ssh, LAN4, 7000, 8000, 9000)
    assert commands(actions) == []  # the start command does not run twice
    assert "198.18.0.2: ssh: still open, stop_command postponed by 10 s" in messages(actions)
    assert first is not None and ssh.next_deadline() == first + 6
    clock.t = first + 0.1
    assert ssh.due() == []
    clock.t = first + 6.1
    assert [kind for kind, _ in commands(ssh.due())] == ["stop"]
    assert ssh.due() == []


def test_shutdown_closes_what_is_open(ssh: KnockTracker) -> None:
    knock(ssh, LAN4, 7000, 8000, 9000)
    knock(ssh, LAN6, 7000, 8000, 9000)
    actions = ssh.shutdown()
    assert sorted(argv[-2] for kind, argv in commands(actions) if kind == "stop") == sorted([LAN4, LAN6])
    assert "198.18.0.2: ssh: closing at shutdown" in messages(actions)
    assert ssh.shutdown() == [] and ssh.next_deadline() is None


DEBIAN_CONF = """
[options]
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
"""


def test_start_without_stop_schedules_nothing(clock: Clock) -> None:
    tracker = KnockTracker(parse_knockd_conf(DEBIAN_CONF).doors, clock)
    actions = knock(tracker, LAN4, 7000, 8000, 9000)
    assert commands(actions) == [("start", words("/sbin/iptables -A INPUT -s 198.18.0.2 -p tcp --dport 22 -j ACCEPT"))]
    assert tracker.next_deadline() is None
    # closeSSH shares the ports: its stage 1 (9000) does not keep the reverse sequence from working
    actions = knock(tracker, LAN4, 9000, 8000, 7000)
    assert commands(actions) == [("start", words("/sbin/iptables -D INPUT -s 198.18.0.2 -p tcp --dport 22 -j ACCEPT"))]


def test_target_and_interface(clock: Clock) -> None:
    conf = "[wol]\nsequence = 5000,6000\ntarget = 198.18.5.5\ncommand = wake %IP%\ninterface = eth-lan\n"
    tracker = KnockTracker([door(conf, "wol")], clock)
    assert not commands(knock(tracker, LAN4, 5000, 6000))  # to this host, not to the target
    actions = tracker.feed(packet(LAN4, 5000, dst="198.18.5.5"))
    actions += tracker.feed(packet(LAN4, 6000, dst="198.18.5.5", iface="eth-wan"))  # other interface: ignored
    actions += tracker.feed(packet(LAN4, 1234, dst=SRV4))  # another destination: not wrong for this door
    actions += tracker.feed(packet(LAN4, 6000, dst="198.18.5.5"))
    assert commands(actions) == [("start", ("wake", LAN4))]


def test_non_tcp_udp_is_ignored(ssh: KnockTracker) -> None:
    ssh.feed(packet(LAN4, 7000))
    assert ssh.feed(replace(packet(LAN4, 0), proto="icmp")) == []
    assert ssh.tracked() == 1


def test_one_time_sequences(clock: Clock) -> None:
    conf = "[otp]\none_time_sequences = /etc/knockd/otp\nstart_command = open %IP%\n"
    sequences = parse_one_time_sequences("#1000,2000\n 1111,2222\n 3333:udp,4444\n")
    tracker = KnockTracker([door(conf, "otp")], clock, one_time={"otp": sequences})
    assert tracker.watched_ports()["otp"] == {(1111, "tcp"), (2222, "tcp"), (3333, "udp"), (4444, "tcp")}
    assert not commands(knock(tracker, LAN4, 1000, 2000))  # already used in the file
    tracker.feed(packet("198.19.0.2", 3333, "udp"))  # someone else at the next sequence's stage 1
    actions = knock(tracker, LAN4, 1111, 2222)
    assert commands(actions) == [("start", ("open", LAN4))]
    assert [a for a in actions if isinstance(a, UseOneTimeSequence)] == [
        UseOneTimeSequence("otp", "/etc/knockd/otp", 2, 11)
    ]
    assert tracker.tracked() == 0  # attempts at the old sequence are dropped with it
    assert not commands(knock(tracker, LAN4, 1111, 2222))  # replay
    actions = knock(tracker, LAN4, "3333:udp", 4444)
    assert commands(actions) == [("start", ("open", LAN4))]
    assert any("disabling the door" in m for m in messages(actions))
    assert not commands(knock(tracker, LAN4, "3333:udp", 4444))


def test_flood_from_random_sources_is_bounded_and_opens_nothing(ssh: KnockTracker, clock: Clock) -> None:
    rng = random.Random(7)
    sources = [f"198.{18 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}" for n in rng.sample(range(1 << 8, 1 << 17), 10_000)]
    opened: list[str] = []
    peak = 0

    def flood(batch: list[str]) -> None:
        nonlocal peak
        for src in batch:  # one packet each: often the first knock, else a random port
            port = 7000 if rng.random() < 0.5 else rng.randrange(1, 65536)
            opened.extend(a.src for a in ssh.feed(packet(src, port)) if isinstance(a, RunCommand))
            peak = max(peak, ssh.tracked())
            clock.t += 0.0001

    flood(sources[:1000])
    knock(ssh, LAN4, 7000)  # the real knocker, in the middle of it
    flood(sources[1000:3000])
    knock(ssh, LAN4, 8000)  # stage 2: no longer among the first to be dropped
    flood(sources[3000:])  # ~3500 more first knocks: past the limit of 4096
    actions = knock(ssh, LAN4, 9000)
    assert commands(actions) and "198.18.0.2: ssh: OPEN SESAME" in messages(actions)
    assert opened == []  # no flood source opened anything
    assert peak <= 4096
    clock.t += 6
    ssh.due()
    assert ssh.tracked() == 0


def test_flood_past_the_limit_drops_oldest_first_stages(clock: Clock) -> None:
    tracker = KnockTracker([door()], clock, max_sources=100)
    knock(tracker, LAN4, 7000, 8000)
    actions: list[Action] = []
    for n in range(1000):
        actions += tracker.feed(packet(f"198.19.{n >> 8}.{n & 255}", 7000))
    assert tracker.tracked() == 100
    assert sum(1 for a in actions if isinstance(a, Log) and a.event == "evicted") == 10  # at the 1st, then every 100th
    assert commands(knock(tracker, LAN4, 9000))  # the stage-2 knocker was kept
