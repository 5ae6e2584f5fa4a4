"""Tests of the network-namespace harness itself (tests/netlab.py and tests/helpers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import netlab
from tests.netlab import (
    LAN4,
    LAN6,
    SRV_LAN4,
    SRV_LAN6,
    SRV_WAN4,
    SRV_WAN6,
    WAN4,
    WAN6,
    Lab,
    LabError,
)

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parent.parent

LISTENED = ["22/tcp", "8443/tcp", "53/udp", "5353/udp"]
UNLISTED = ["23/tcp", "8444/tcp", "54/udp", "5354/udp"]
ALL = LISTENED + UNLISTED
# Prober namespace -> srv addresses it probes: both sides, both families (one prober run each).
VIEWS = {"lan": [SRV_LAN4, SRV_LAN6], "wan": [SRV_WAN4, SRV_WAN6]}

DROP_CHAIN = "{ type filter hook input priority 0; policy drop; }"
REJECT_RULESET = """
table inet t {
    chain in {
        type filter hook input priority 0; policy drop;
        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
        meta l4proto { tcp, udp } reject%s
    }
}
"""


def host_netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def pid_gone(pid: int) -> bool:
    """Dead: no such process, or a zombie waiting for a parent that is not ours (e.g. init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def test_topology(lab: Lab) -> None:
    for role, name in lab.names.items():
        assert name == f"pw-{os.getpid()}-{name.split('-')[2]}-{role}"
        assert name in host_netns()
    addrs = lab.run("srv", ["ip", "-br", "addr"], check=True).stdout
    assert f"{SRV_LAN4}/24" in addrs and f"{SRV_LAN6}/64" in addrs
    assert f"{SRV_WAN4}/24" in addrs and f"{SRV_WAN6}/64" in addrs
    assert "tentative" not in lab.run("srv", ["ip", "-6", "addr"]).stdout  # nodad: usable at once
    for ns, mine, gw in (("lan", LAN4, SRV_LAN4), ("wan", WAN4, SRV_WAN4)):
        assert f"{mine}/24" in lab.run(ns, ["ip", "-br", "addr"]).stdout
        assert f"default via {gw}" in lab.run(ns, ["ip", "route"]).stdout
    fwd = lab.run("srv", ["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]).stdout
    assert fwd.split() == ["0", "0"]
    assert lab.ruleset("srv")["nftables"][0].get("metainfo")  # empty ruleset, but nft works there
    with pytest.raises(LabError, match="unknown namespace"):
        lab.run("dmz", ["true"])


def test_lab_does_not_touch_the_host() -> None:
    def snapshot() -> tuple[str, str, str]:
        return (
            subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout,
            subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout,
            subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout,
        )

    before = snapshot()
    with Lab() as lab:
        lab.nft("srv", "add table inet t")
        lab.nft("srv", "add chain inet t in", DROP_CHAIN)
        lab.listen("srv", ["22/tcp"])
        assert snapshot() == before
    assert snapshot() == before


def test_no_firewall_listeners_open_others_closed(lab: Lab) -> None:
    lab.listen("srv", LISTENED)
    want = {p: "open" for p in LISTENED} | {p: "closed" for p in UNLISTED}
    for ns, targets in VIEWS.items():
        assert lab.probe_many(ns, targets, ALL) == dict.fromkeys(targets, want), ns
    assert lab.probe("lan", SRV_LAN6, ALL) == want  # the single-target form agrees


def test_drop_policy_gives_filtered(lab: Lab) -> None:
    lab.listen("srv", LISTENED)
    lab.nft("srv", "add table inet t")
    lab.nft("srv", "add", "chain", "inet", "t", "in", DROP_CHAIN)
    chains = [o["chain"] for o in lab.ruleset("srv")["nftables"] if "chain" in o]
    assert [(c["name"], c["hook"], c["policy"]) for c in chains] == [("in", "input", "drop")]
    for ns, targets in VIEWS.items():
        got = lab.probe_many(ns, targets, ALL, timeout=0.3)
        assert got == dict.fromkeys(targets, dict.fromkeys(ALL, "filtered")), ns
    lab.flush_ruleset("srv")
    assert lab.probe("lan", SRV_LAN4, ["22/tcp", "23/tcp"]) == {"22/tcp": "open", "23/tcp": "closed"}


def test_reject_gives_closed_and_admin_prohibited_gives_filtered(lab: Lab) -> None:
    lab.listen("srv", LISTENED)
    lab.nft("srv", "-f", "-", stdin=REJECT_RULESET % "")
    for ns, targets in VIEWS.items():
        assert lab.probe_many(ns, targets, ALL) == dict.fromkeys(targets, dict.fromkeys(ALL, "closed")), ns

    lab.nft("srv", "flush ruleset")
    lab.nft("srv", "-f", "-", stdin=REJECT_RULESET % " with icmpx admin-prohibited")
    for ns, targets in VIEWS.items():
        for target, detail in lab.probe_many_detail(ns, targets, ALL).items():
            assert {s for s, _ in detail.values()} == {"filtered"}, (ns, target, detail)
            # answered at once by ICMP, not by waiting for the timeout
            reasons = {r for _, r in detail.values()}
            assert reasons == ({"EACCES"} if ":" in target else {"EHOSTUNREACH"}), (ns, target, detail)


def test_listen_on_specific_addresses(lab: Lab) -> None:
    lab.listen("srv", ["127.0.0.1:8080/tcp", "[::1]:8080/udp", f"{SRV_LAN4}:2525/tcp", f"[{SRV_WAN6}]:2526/udp"])
    expected = {
        "srv": {
            "127.0.0.1": {"8080/tcp": "open", "8080/udp": "closed"},
            "::1": {"8080/tcp": "closed", "8080/udp": "open"},
        },
        "lan": {
            SRV_LAN4: {"2525/tcp": "open", "8080/tcp": "closed"},
            SRV_LAN6: {"2525/tcp": "closed", "8080/tcp": "closed"},
        },
        "wan": {
            SRV_WAN4: {"2525/tcp": "closed", "2526/udp": "closed"},
            SRV_WAN6: {"2525/tcp": "closed", "2526/udp": "open"},
        },
    }
    for ns, want in expected.items():
        ports = list(next(iter(want.values())))
        assert lab.probe_many(ns, list(want), ports) == want, ns
    # listeners can run in lan/wan too, and v6-only / v4-only binds do not collide
    lab.listen("lan", ["[::]:9000/tcp", "0.0.0.0:9000/tcp"])
    got = lab.probe_many("srv", [LAN4, LAN6], ["9000/tcp"])
    assert got == {LAN4: {"9000/tcp": "open"}, LAN6: {"9000/tcp": "open"}}


def test_listen_errors_are_reported(lab: Lab) -> None:
    lab.listen("srv", ["22/tcp"])
    with pytest.raises(LabError, match="cannot bind"):
        lab.listen("srv", ["22/tcp"])
    with pytest.raises(LabError, match="expected PORT/tcp"):
        lab.listen("srv", ["22"])
    with pytest.raises(LabError, match="prober"):
        lab.probe("lan", SRV_LAN4, ["22/sctp"])


def test_srv_does_not_forward(lab: Lab) -> None:
    lab.listen("wan", ["80/tcp", "53/udp"])
    assert lab.probe("srv", WAN4, ["80/tcp", "53/udp"]) == {"80/tcp": "open", "53/udp": "open"}
    got = lab.probe_many("lan", [WAN4, f"[{WAN6}]"], ["80/tcp", "53/udp"], timeout=0.3)
    assert got == dict.fromkeys([WAN4, f"[{WAN6}]"], dict.fromkeys(["80/tcp", "53/udp"], "filtered"))


def test_probes_run_concurrently(lab: Lab) -> None:
    ports = [f"{p}/{proto}" for p in range(7000, 7010) for proto in ("tcp", "udp")]
    lab.nft("srv", "add table inet t")
    lab.nft("srv", "add chain inet t in", DROP_CHAIN)
    t0 = time.monotonic()
    assert set(lab.probe("lan", SRV_LAN4, ports, timeout=0.5).values()) == {"filtered"}
    assert time.monotonic() - t0 < 2.5  # 20 timeouts of 0.5 s, in parallel


def test_many_closed_ports_are_not_rate_limited(lab: Lab) -> None:
    ports = [f"{p}/{proto}" for p in range(20000, 20100) for proto in ("tcp", "udp")]
    assert set(lab.probe("lan", SRV_LAN4, ports).values()) == {"closed"}
    assert set(lab.probe("wan", SRV_WAN6, ports).values()) == {"closed"}


def test_teardown_removes_namespaces_and_processes() -> None:
    with Lab() as lab:
        names = set(lab.names.values())
        listener = lab.listen("srv", ["22/tcp", "53/udp"])
        sleeper = lab.popen("lan", ["sleep", "300"])
        # a grandchild in the daemon's process group is killed too
        shell = lab.popen("wan", ["sh", "-c", "sleep 300 & wait"])
        assert names <= host_netns()
    assert not names & host_netns()
    for proc in (listener, sleeper, shell):
        assert proc.returncode is not None  # reaped: no zombies
        assert pid_gone(proc.pid)
    lab.teardown()  # idempotent
    with pytest.raises(LabError, match="not set up"):
        lab.run("srv", ["true"])


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failing_body_still_cleans_up(exc: type[BaseException]) -> None:
    seen: dict[str, object] = {}
    with pytest.raises(exc), Lab() as lab:
        seen["names"] = set(lab.names.values())
        seen["proc"] = lab.listen("srv", ["22/tcp"])
        lab.nft("srv", "add table inet t")
        raise exc("boom")
    names = seen["names"]
    proc = seen["proc"]
    assert isinstance(names, set) and isinstance(proc, subprocess.Popen)
    assert not names & host_netns()
    assert proc.returncode is not None and pid_gone(proc.pid)


def test_failing_setup_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlab, "_SYSCTLS", (*netlab._SYSCTLS, "net.ipv4.no_such_knob=1"))
    lab = Lab()
    with pytest.raises(LabError, match="sysctl"):
        lab.setup()
    assert not set(lab.names.values()) & host_netns()


CHILD = """
import os, sys, time
from tests import netlab
netlab.install_sigterm_cleanup()
lab = netlab.Lab()
lab.setup()
proc = lab.listen("srv", ["22/tcp"])
print(" ".join(lab.names.values()), proc.pid, flush=True)
if sys.argv[1] == "wait":
    time.sleep(60)
"""  # leaves its lab behind on purpose: exits, or waits for SIGTERM


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_session_backstop_removes_leftovers(how: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, "wait" if how == "sigterm" else "exit"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    *names, listener_pid = child.stdout.readline().split()
    if how == "sigterm":
        assert set(names) <= host_netns()
        child.terminate()
    assert child.wait(10) == (-signal.SIGTERM if how == "sigterm" else 0)
    assert len(names) == 3 and not set(names) & host_netns()
    assert pid_gone(int(listener_pid))


def test_lab_module_fixture(lab_module: Lab) -> None:
    lab_module.listen("srv", ["22/tcp"])
    assert lab_module.probe("lan", SRV_LAN6, ["22/tcp"]) == {"22/tcp": "open"}
