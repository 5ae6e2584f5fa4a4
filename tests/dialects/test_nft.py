"""The nft dialect: what the compiler emits is what the kernel lists back (so plans are exact),
address lists stay sets whatever their size, and `export --format nft` is a valid `nft -f` script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from portward.dialects.nft import compile_policy, render_text
from portward.policy.toml import load_policy_text
from tests.netlab import Lab
from tests.pwutil import ROOT

POLICIES = {
    "server": (ROOT / "examples" / "server.toml")
    .read_text()
    .replace("blocklist.txt", str(ROOT / "examples" / "blocklist.txt")),
    "reject-outbound-drop": """
[defaults]
inbound = "reject"
outbound = "reject"
log_denied = true
ping = false
[zones]
v6only = ["2001:db8:5::/48", "2001:db8:6::1"]
mixed = ["198.18.3.0/24", "198.18.4.0/23", "2001:db8:7::/64"]
[[inbound]]
name = "all-from-mgmt"
from = ["v6only"]
[[inbound]]
name = "deny-telnet"
ports = ["23/tcp"]
from = ["any"]
action = "drop"
[[inbound]]
name = "range"
ports = ["1000-2000/udp", "1500/tcp", "3000/sctp"]
from = ["mixed", "198.18.9.9"]
rate = "100/second burst 200"
interface = "eth-lan"
[[outbound]]
name = "dns"
ports = ["53/udp", "53/tcp"]
to = ["198.18.0.53", "2001:db8::53"]
[[outbound]]
name = "drop-rest-wan"
interface = "eth-wan"
action = "drop"
""",
    "accept-all-keep-forward": '[defaults]\ninbound = "accept"\nforward = "keep"\n',
    "watch": """
[defaults]
inbound = "reject"
log_denied = true
[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]
[block]
from = ["203.0.113.0/24", "2001:db8:bad::/48"]
[[knock]]
name = "ssh"
sequence = ["7000/tcp", "8000/udp", "7000/udp"]
open = ["22/tcp"]
[[knock]]
name = "one"
sequence = ["9000/tcp"]
open = ["2222/tcp"]
[watch]
scan_ports = 12
scan_window = 172800
ban_for = 3600
""",
    "watch-alert-only": """
[defaults]
log_denied = true
[[inbound]]
name = "web"
ports = ["443/tcp"]
from = ["any"]
[watch]
scan_ports = 2
ban_for = 0
spawn = ["logger", "%a"]
""",
    "doors": """
[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64", "127.0.0.1"]
[[knock]]
name = "ssh"
sequence = ["7000/tcp", "8000/udp"]
open = ["22/tcp"]
[[spa]]
name = "ssh"
open = ["22/tcp", "53/udp"]
from = ["lan"]
key_base64 = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
hmac_key_base64 = "aG1hY2hrZXlobWFja2V5aG1hY2hrZXlobWFja2V5aG1hY2hrZXk="
[[spa]]
name = "admin"
open = ["2222/tcp"]
from = ["198.19.0.0/24"]
key_base64 = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
hmac_key_base64 = "aG1hY2hrZXlobWFja2V5aG1hY2hrZXlobWFja2V5aG1hY2hrZXk="
[[spa]]
name = "anyone"
port = "40000/udp"
open = ["8443/tcp"]
key_base64 = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
hmac_key_base64 = "aG1hY2hrZXlobWFja2V5aG1hY2hrZXlobWFja2V5aG1hY2hrZXk="
""",
}

CHECK = """
import json, sys
from portward.dialects.nft import compile_policy
from portward.kernel.nft import Nft, ruleset_from_listing
from portward.ops.plan import diff
from portward.policy.toml import load_policy
wanted = compile_policy(load_policy(sys.argv[1]))
nft = Nft()
nft.run(wanted.create_commands())
live = ruleset_from_listing(nft.list_table())
print(json.dumps(diff(live, wanted).changes))
"""


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_compiled_equals_listed(lab_module: Lab, tmp_path: Path, name: str) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(POLICIES[name])
    result = lab_module.run("srv", [sys.executable, "-c", CHECK, str(policy)], env={"PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_export_is_a_valid_nft_script(lab_module: Lab, name: str) -> None:
    text = render_text(compile_policy(load_policy_text(POLICIES[name], str(ROOT / "p.toml"))))
    lab_module.nft("srv", "-c", "-f", "-", stdin=text)
    lab_module.nft("srv", "-f", "-", stdin=text)  # twice: the script replaces its own table
    lab_module.nft("srv", "-f", "-", stdin=text)


def test_rules_do_not_grow_with_the_list() -> None:
    def compiled(count: int) -> tuple[int, int]:
        zone = ", ".join(f'"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"' for i in range(0, 2 * count, 2))
        text = f'[zones]\nmany = [{zone}]\n[[inbound]]\nname = "web"\nports = ["80/tcp"]\nfrom = ["many"]\n'
        ruleset = compile_policy(load_policy_text(text, "p.toml"))
        return len(ruleset.rules), len(ruleset.sets["zone_many_v4"].elements or ())

    small, large = compiled(10), compiled(5000)
    assert small[0] == large[0]
    assert (small[1], large[1]) == (10, 5000)


def test_spa_doors_share_a_port_and_log_only_their_senders() -> None:
    ruleset = compile_policy(load_policy_text(POLICIES["doors"], "p.toml"))
    texts = [" ".join(json.dumps(expr) for expr in rule.expr) for rule in ruleset.rules_of("input")]
    packet_rules = [text for text, rule in zip(texts, ruleset.rules_of("input"), strict=True)
                    if (rule.comment or "").endswith("packet")]
    # doors ssh and admin listen on 62201 (one log rule per family, senders of both); anyone on 40000
    assert len(packet_rules) == 3 and all('"group": 7603' in text for text in packet_rules)
    senders = ruleset.sets["spa_62201_from_v4"].elements
    assert senders == ((0xC6120000, 0xC61200FF), (0xC6130000, 0xC61300FF))  # loopback left out
    grant = ruleset.sets["spa_ssh_open_v6"]
    assert grant.type == ("ipv6_addr", "inet_proto", "inet_service") and grant.flags == ("timeout",)
    assert grant.elements is None  # the kernel's: kept across re-applies


def test_no_other_table_and_no_flush_ruleset() -> None:
    commands = compile_policy(load_policy_text(POLICIES["server"], "p.toml")).create_commands()
    tables = {json.dumps(c[op]["table"]) for c in commands for op in c if "table" in c[op]}
    assert tables == {json.dumps({"family": "inet", "name": "portward"})}
    assert all(op in ("add", "delete") for c in commands for op in c)
    assert "flush" not in json.dumps(commands)


def test_cli_export(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(POLICIES["accept-all-keep-forward"])
    out = subprocess.run(
        [sys.executable, "-m", "portward", "export", "--format", "nft", "-p", str(policy), "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / "etc/portward/portward.nft").read_text().startswith("#!/usr/sbin/nft -f")
    assert "wrote" in out.stdout


def test_cli_offers_every_registered_dialect() -> None:
    from portward import cli, dialects

    assert list(dialects.EXPORTERS) == cli.EXPORT_FORMATS and list(dialects.IMPORTERS) == cli.IMPORT_SOURCES
    for fmt in dialects.EXPORTERS:
        assert callable(dialects.writer(fmt))
    for source in dialects.IMPORTERS:
        assert callable(dialects.reader(source))
