"""`portward knock` opens the REAL knockd's door (knockd 0.8 from Debian, pcap on the LAN interface)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.netlab import SRV_LAN4, Lab
from tests.pwutil import ROOT

pytestmark = pytest.mark.skipif(shutil.which("knockd") is None, reason="knockd (apt package knockd) is missing")

TABLE = """
table inet t {
    set allowed { type ipv4_addr; }
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iif lo accept
        tcp dport 22 ip saddr @allowed accept
    }
}
"""

CONF = """
[options]
    LogFile = {log}
    Interface = eth-lan

[ssh]
    sequence      = 7000,8000:udp,9000
    seq_timeout   = 5
    tcpflags      = syn
    start_command = nft add element inet t allowed {{ %IP% }}
    cmd_timeout   = 30
    stop_command  = nft delete element inet t allowed {{ %IP% }}
"""


def test_portward_knock_opens_real_knockd(lab: Lab, tmp_path: Path) -> None:
    lab.listen("srv", ["22/tcp"])
    lab.nft("srv", "-f", "-", stdin=TABLE)
    conf = tmp_path / "knockd.conf"
    conf.write_text(CONF.format(log=tmp_path / "knockd.log"))
    lab.popen("srv", ["knockd", "-c", str(conf), "-i", "eth-lan"])
    time.sleep(1.0)  # knockd opens its pcap handle
    assert lab.probe("lan", SRV_LAN4, ["22/tcp"])["22/tcp"] == "filtered"
    done = lab.run("lan", [sys.executable, "-m", "portward", "knock", "-d", "50", SRV_LAN4, "7000", "8000:udp",
                           "9000"], env={"PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 3
    while lab.probe("lan", SRV_LAN4, ["22/tcp"], timeout=0.3)["22/tcp"] != "open":
        assert time.monotonic() < deadline, (tmp_path / "knockd.log").read_text()
        time.sleep(0.05)
    log = (tmp_path / "knockd.log").read_text()
    assert "OPEN SESAME" in log and "198.18.0.2" in log
