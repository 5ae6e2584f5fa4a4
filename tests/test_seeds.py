"""The seeds' scenarios, end to end: apply in the lab's server namespace, probe from LAN and WAN, v4 and v6.

Lab addresses: srv 198.18.0.1 / 2001:db8:0:1::1 towards lan (198.18.0.2, 2001:db8:0:1::2) and
198.19.0.1 / 2001:db8:0:2::1 towards wan (198.19.0.2, 2001:db8:0:2::2).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.netlab import Lab
from tests.pwutil import Portward, write

SRV = {("lan", 4): "198.18.0.1", ("lan", 6): "2001:db8:0:1::1", ("wan", 4): "198.19.0.1", ("wan", 6): "2001:db8:0:2::1"}


def probe_all(lab: Lab, ports: list[str], timeout: float = 0.4) -> dict[tuple[str, int], dict[str, str]]:
    return {
        (client, family): lab.probe(client, SRV[(client, family)], ports, timeout=timeout)
        for client in ("lan", "wan")
        for family in (4, 6)
    }


SEED_004 = """
# seed 004: default INPUT DROP, FORWARD DROP, OUTPUT ACCEPT; the usual server services
[defaults]
inbound = "drop"
outbound = "accept"
forward = "drop"

[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]

[[inbound]]
name = "web"
ports = ["80/tcp", "443/tcp"]
from = ["any"]

[[inbound]]
name = "mail"
ports = ["25/tcp", "110/tcp"]
from = ["any"]

[[inbound]]
name = "dns"
ports = ["53/tcp", "53/udp"]
from = ["any"]

[[inbound]]
name = "proxy"
ports = ["3128/tcp"]
from = ["any"]
"""


def test_seed_004_server_services(lab: Lab, tmp_path: Path) -> None:
    services = ["22/tcp", "80/tcp", "443/tcp", "25/tcp", "110/tcp", "53/tcp", "53/udp", "3128/tcp"]
    others = ["23/tcp", "3306/tcp", "8080/tcp", "161/udp"]
    lab.listen("srv", [*services, *others])
    before = probe_all(lab, services + others)
    assert all(state == "open" for states in before.values() for state in states.values())
    Portward(lab, tmp_path / "state").ok("apply", "-p", str(write(tmp_path / "p.toml", SEED_004)), "--yes")
    after = probe_all(lab, services + others)
    for vantage, states in after.items():
        assert {p: states[p] for p in services} == dict.fromkeys(services, "open"), vantage
        assert {p: states[p] for p in others} == dict.fromkeys(others, "filtered"), vantage


SEED_000 = """
# seed 000: ssh to the world; the other listeners (cockpit, pmcd...) to localhost + the LAN only
[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64"]

[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
unit = "sshd.service"

[[inbound]]
name = "cockpit"
ports = ["9090/tcp"]
from = ["localhost", "lan"]
unit = "cockpit.socket"

[[inbound]]
name = "pmcd"
ports = ["44321/tcp", "44322-44323/tcp"]
from = ["localhost", "lan"]

[[inbound]]
name = "dnsmasq"
ports = ["53/udp", "53/tcp"]
from = ["localhost", "lan"]
"""


def test_seed_000_lan_and_localhost_only(lab: Lab, tmp_path: Path) -> None:
    lan_only = ["9090/tcp", "44321/tcp", "44323/tcp", "53/udp", "53/tcp"]
    lab.listen("srv", ["22/tcp", *lan_only])
    Portward(lab, tmp_path / "state").ok("apply", "-p", str(write(tmp_path / "p.toml", SEED_000)), "--yes")
    states = probe_all(lab, ["22/tcp", *lan_only])
    for family in (4, 6):
        assert states[("lan", family)] == dict.fromkeys(["22/tcp", *lan_only], "open")
        assert states[("wan", family)]["22/tcp"] == "open"
        assert {p: states[("wan", family)][p] for p in lan_only} == dict.fromkeys(lan_only, "filtered")
    # localhost reaches everything, over v4 and v6 loopback
    local = lab.probe("srv", "127.0.0.1", lan_only) | lab.probe("srv", "::1", lan_only)
    assert set(local.values()) == {"open"}


SEED_003 = """
# seed 003: outbound restricted on the WAN interface to ssh and https; replies to inbound still flow
[defaults]
outbound = "drop"

[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]

[[outbound]]
name = "wan-out"
ports = ["22/tcp", "443/tcp"]
interface = "eth-wan"
"""


def test_seed_003_outbound_per_interface(lab: Lab, tmp_path: Path) -> None:
    lab.listen("wan", ["22/tcp", "443/tcp", "80/tcp", "53/udp"])
    lab.listen("lan", ["443/tcp"])
    lab.listen("srv", ["22/tcp"])
    Portward(lab, tmp_path / "state").ok("apply", "-p", str(write(tmp_path / "p.toml", SEED_003)), "--yes")
    for target in ("198.19.0.2", "2001:db8:0:2::2"):
        states = lab.probe("srv", target, ["22/tcp", "443/tcp", "80/tcp", "53/udp"])
        assert states == {"22/tcp": "open", "443/tcp": "open", "80/tcp": "filtered", "53/udp": "filtered"}, target
    # the allowance is for eth-wan only: https towards the LAN is dropped
    assert lab.probe("srv", "198.18.0.2", ["443/tcp"]) == {"443/tcp": "filtered"}
    # replies to inbound connections still flow out
    for client, family in (("lan", 4), ("wan", 6)):
        assert lab.probe(client, SRV[(client, family)], ["22/tcp"]) == {"22/tcp": "open"}


def test_reject_block_and_rate(lab: Lab, tmp_path: Path) -> None:
    policy = """
[defaults]
inbound = "reject"
[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
rate = "5/minute"
[[inbound]]
name = "dns"
ports = ["53/udp"]
from = ["any"]
[block]
from = ["198.19.0.2", "2001:db8:0:2::2"]
"""
    lab.listen("srv", ["22/tcp", "53/udp", "80/tcp", "123/udp"])
    Portward(lab, tmp_path / "state").ok("apply", "-p", str(write(tmp_path / "p.toml", policy)), "--yes")
    for family in (4, 6):
        lan = lab.probe("lan", SRV[("lan", family)], ["22/tcp", "53/udp", "80/tcp", "123/udp"])
        assert lan == {"22/tcp": "open", "53/udp": "open", "80/tcp": "closed", "123/udp": "closed"}
        wan = lab.probe("wan", SRV[("wan", family)], ["22/tcp", "53/udp", "80/tcp"])
        assert set(wan.values()) == {"filtered"}, "a blocked source gets nothing, not even a reject"
    # 5/minute with a burst of 5: the lan client's earlier probes used some; a quick run of 10 more fails
    results = [lab.probe("lan", "198.18.0.1", ["22/tcp"], timeout=0.3)["22/tcp"] for _ in range(10)]
    assert "filtered" in results and results.count("open") <= 5


@pytest.mark.parametrize("forward", ["drop", "keep"])
def test_forward_setting(lab: Lab, tmp_path: Path, forward: str) -> None:
    policy = f'[defaults]\ninbound = "accept"\nforward = "{forward}"\n'
    Portward(lab, tmp_path / "state").ok("apply", "-p", str(write(tmp_path / "p.toml", policy)), "--yes")
    chains = [item["chain"]["name"] for item in lab.ruleset()["nftables"] if "chain" in item]
    assert ("forward" in chains) == (forward == "drop")
