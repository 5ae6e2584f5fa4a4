"""The TOML frontend: every bad input is placed at FILE:LINE: key with a fix, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portward.errors import PolicyError
from portward.policy.toml import load_policy, load_policy_text, locate_keys

CORPUS = Path(__file__).parent.parent / "corpus" / "bad"
BAD = sorted(CORPUS.glob("*.toml"))


def expectation(path: Path) -> tuple[str, int, str, str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' line"
    where, key, fragment = first.removeprefix("# expect: ").split(" ", 2)
    file_name, _, line = where.rpartition(":")
    return file_name or path.name, int(line), key, fragment


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_policy_is_located(path: Path) -> None:
    file_name, line, key, fragment = expectation(path)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    problems = caught.value.problems
    assert any(
        Path(p.file).name == file_name and p.line == line and p.key == key and fragment in p.message for p in problems
    ), "\n".join(str(p) for p in problems)
    for problem in problems:
        assert " — " in problem.message or problem.key == "syntax", f"no fix given: {problem}"


def test_corpus_is_not_empty() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("name", ["syntax.toml", "unknown-zone.toml", "missing-file.toml"])
def test_cli_exit_2_without_traceback(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "portward", "check", "-p", str(CORPUS / name)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(str(CORPUS / name) + ":")
    assert result.stdout == ""


def test_cli_json_error_is_one_document() -> None:
    import json

    result = subprocess.run(
        [sys.executable, "-m", "portward", "check", "--json", "-p", str(CORPUS / "port-range.toml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert document["problems"][0]["line"] == 4
    assert document["problems"][0]["key"] == "inbound[0].ports[0]"


def test_contract_example_is_valid(tmp_path: Path) -> None:
    (tmp_path / "blocklist.txt").write_text("# comment\n198.18.7.0/24\n2001:db8:7::/48  # trailing\n\n")
    (tmp_path / "k").write_text("x")
    text = CONTRACT_EXAMPLE.replace("/etc/portward/blocklist.txt", "blocklist.txt")
    loaded = load_policy_text(text, str(tmp_path / "policy.toml"))
    policy = loaded.policy
    assert policy.inbound[0].from_ == ["any"]
    assert policy.knock[0].sequence == ["7000/tcp", "9000/tcp", "8000/udp"]
    assert policy.sysctl.overrides == {"net.ipv4.conf.all.rp_filter": 2}
    assert [str(n) for n in loaded.block_nets] == ["198.18.7.0/24", "203.0.113.0/24", "2001:db8:7::/48"]


def test_locate_keys_multiline_and_arrays() -> None:
    text = (
        '[zones]\nlan = [\n  "198.18.0.0/24",  # first\n  "2001:db8::/64",\n]\n\n'
        '[[inbound]]\nname = "a"\n[[inbound]]\nname = "b"\n'
    )
    lines = locate_keys(text)
    assert lines[("zones", "lan")] == 2
    assert lines[("zones", "lan", 0)] == 3
    assert lines[("zones", "lan", 1)] == 4
    assert lines[("inbound", 0, "name")] == 8
    assert lines[("inbound", 1, "name")] == 10


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        load_policy_text(text, "fuzz.toml", read_files=False)
    except PolicyError as error:
        assert all(problem.file == "fuzz.toml" for problem in error.problems)


rule_values = st.one_of(
    st.text(max_size=12),
    st.integers(-5, 70000),
    st.booleans(),
    st.lists(st.one_of(st.text(max_size=12), st.integers(0, 70000)), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["name", "ports", "from", "rate", "interface", "action", "bogus"]), rule_values, max_size=6
    )
)
def test_arbitrary_rules_never_crash(rule: dict[str, object]) -> None:
    import json

    lines = ["[[inbound]]"] + [f"{key} = {json.dumps(value)}" for key, value in rule.items()]
    try:
        load_policy_text("\n".join(lines) + "\n", "fuzz.toml", read_files=False)
    except PolicyError as error:
        for problem in error.problems:
            assert problem.line >= 1


CONTRACT_EXAMPLE = """
[defaults]
inbound  = "drop"      # drop | reject | accept
outbound = "accept"    # drop | reject | accept
forward  = "drop"      # drop | accept | keep (leave forwarding to others, e.g. Docker)
log_denied = false

[zones]                # names usable in from/to; built in: any, localhost
lan = ["198.18.0.0/24", "2001:db8::/64"]

[[inbound]]
name  = "ssh"                  # unique
ports = ["22/tcp"]             # "N/proto", "N-M/proto"; proto tcp | udp | sctp
from  = ["any"]                # zone names, addresses or CIDRs (v4/v6)
rate  = "10/minute"            # optional, per source address
interface = "eth0"             # optional
unit   = "sshd.service"        # optional: systemd unit for the systemd export
daemon = "sshd"                # optional: daemon name for the hosts.allow export
listen = "198.18.0.1"          # optional, .socket units: ListenStream override + FreeBind

[[outbound]]
name = "web-out"
ports = ["22/tcp", "443/tcp"]
to = ["any"]
interface = "eth1"             # optional

[block]                        # never admitted, any port
from  = ["203.0.113.0/24"]
files = ["/etc/portward/blocklist.txt"]   # one address/CIDR a line, # comments

[[knock]]
name = "ssh"
sequence = ["7000/tcp", "9000/tcp", "8000/udp"]
seq_timeout = 5                # seconds for the whole sequence
open = ["22/tcp"]
open_for = 30                  # seconds the source may open new connections

[[spa]]                        # single packet authorization, fwknop-compatible
name = "ssh"
port = "62201/udp"             # where SPA packets arrive (default)
open = ["22/tcp"]              # what a valid packet may open (it names which)
from = ["any"]                 # who may send
key_base64 = "a2V5a2V5a2V5a2V5"          # or key_file = "…"        (Rijndael key)
hmac_key_base64 = "aG1hY2htYWNobWFj"     # or hmac_key_file = "…"   (HMAC-SHA256 key)
open_for = 30                  # seconds (fwknop's FW_ACCESS_TIMEOUT)
max_open_for = 300             # cap on a client-requested timeout

[watch]                        # used when log_denied = true
scan_ports = 10
scan_window = 5
ban_for = 600
severity = "warning"
spawn = ["logger", "-t", "portward", "scan from %a: %n ports"]

[sysctl]
profile = "host"               # host | router
"net.ipv4.conf.all.rp_filter" = 2
"""
