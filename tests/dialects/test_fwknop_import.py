"""import --from fwknop: access.conf stanzas become [[spa]] doors that mean what they meant to fwknopd.

Oracles: fwknopd itself (`fwknopd -D` dumps what it parsed from access.conf and fwknopd.conf, and refuses
what it cannot use), keys made by `fwknop --key-gen`, and SPA packets built by the stock `fwknop` client,
which the imported door's keys must decrypt with portward's own fko code.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portward.daemons import fko
from portward.dialects.fwknop import (
    ACCESS_KEYS,
    FwknopConfigError,
    Stanza,
    parse_access_conf,
    parse_fwknopd_conf,
    read_policy,
    stanza_door,
)
from portward.dialects.nft import compile_policy
from portward.errors import InputError, ProblemsError
from portward.policy.model import NAME_RE
from portward.policy.toml import LoadedPolicy, load_policy_text
from tests.pwutil import ROOT

# Debian's fwknop-server 2.6.10 package: /etc/fwknop/access.conf as shipped
DEBIAN_ACCESS = """##############################################################################
#
# File:    access.conf
#
# Purpose: This file defines how fwknopd will modify firewall access
#          controls for specific IPs/networks.  It gets installed in
#          the fwknop config directory and is consulted by fwknopd on
#          startup or a reconfiguration signal.
#
# Note:    This file supports multiple entries (stanzas) for different
#          levels of access based on the SOURCE of the incoming SPA packet.
#          If multiple stanzas are used, you should make sure they are
#          entered in order from most specific to the more general SOURCE
#          specifications as the first matching SOURCE wins.
#
#          For example, a SOURCE that is a specific IP address should come
#          before a SOURCE that specifies multiple IP's or a Subnet.  The
#          SOURCE: "ANY" (if used) should be the last one.
#
#          At least one stanza MUST be defined.
#
##############################################################################
#
### Directives ###

# %include /etc/fwknop/myInlcudeFile.conf
#
# This processes the access.conf stanzas from an additional file.
# Complete stanzas should be contained within each file.

# %include_folder /etc/fwknop/myFolder.d
#
# This processes all the *.conf files in the specified directory.

# %include_keys /home/user/fwknop_keys.conf
#
# This directive loads the encryption and HMAC keys from an external file.
# Any other commands in the stanza must come before the %include_keys
# directive.

### Commands ###

# SOURCE                <IP,..,IP/NET,..,NET/ANY>
#
# This defines the source address from which a SPA packet will be accepted.
# Every  authorization stanza in this file must start  with  the  SOURCE
# keyword. Networks should be specified in CIDR  (e.g. "192.168.10.0/24")
# notation. Individual IP addresses can be specified as well.
#
# Also, multiple IP’s and/or networks can be defined as a comma-separated
# list  (e.g. "192.168.10.0/24,10.1.1.123").
#
# The string "ANY" is also accepted if a valid authorization packet should
# be honored from any source IP.
#

# DESTINATION                <IP,..,IP/NET,..,NET/ANY>
#
# This defines the destination address for which a SPA packet will be accepted.
# Networks should be specified in CIDR  (e.g. "192.168.10.0/24") notation.\x20
# Individual IP addresses can be specified as well.
#
# Also, multiple IP’s and/or networks can be defined as a comma-separated
# list  (e.g. "192.168.10.0/24,10.1.1.123").
#
# The string "ANY" is also accepted if a valid authorization packet should
# be honored to any destination IP.
#

# OPEN_PORTS            <proto/port>, ..., <proto/port
#
# Define a set of ports and protocols (tcp or udp) that are allowed to be
# opened if a valid SPA packet is received and its access request matches
# one of the entries here.
#
# If this entry is not set, then fwknopd will attempt to honor the request
# specified in the SPA data.
#

# RESTRICT_PORTS        <proto/port>, ..., <proto/port>
#
# Define a set of ports and protocols (tcp or udp) that are *NOT* allowed
# to be opened even if a valid SPA packet is received.
#

# KEY                   <password>
#
# Define the key used for decrypting an incoming SPA packet that is using
# its built-in encryption (e.g. not GPG).  This variable is required for
# all non-GPG-encrypted SPA packets.
#

# FW_ACCESS_TIMEOUT     <seconds>
#
# Define the length of time access will be granted by fwknop through the
# firewall after a valid SPA packet is received from the source IP address
# that matches this stanza's SOURCE.
#
# If FW_ACCESS_TIMEOUT is not set then a default timeout of 30 seconds will
# automatically be set.
#

# MAX_FW_TIMEOUT     <seconds>
#
# Define the maximum length of time access will be granted by fwknop through
# the firewall after a valid SPA packet is received. This is mostly useful to
# ensure that clients using the --fw-timeout argument do not grant themselves
# unduly long access.
#
# If MAX_FW_TIMEOUT is not set then a default timeout of 300 seconds (five
# minutes) will automatically be set.
#

# ENABLE_CMD_EXEC       <Y/N>
#
# This specifies whether or not fwknopd will accept complete commands that
# are contained within a SPA packet.  Any such command will be executed as
# user specified using the CMD_EXEC_USER parameter by the fwknopd server.
# If not set here, the default is "N".
#

# CMD_EXEC_USER         <username>
#
# This specifies the user that will execute commands contained within a SPA
# packet.  If not specified, fwknopd will execute it as the user it is
# running as (most likely root). Setting this to a non-root user is highly
# recommended.
#

# REQUIRE_USERNAME      <username>
#
# Require a specific username from the client system as encoded in the SPA
# data.  This variable is optional and if not specified, the username data
# in the SPA data is ignored.
#

# REQUIRE_SOURCE_ADDRESS    <Y/N>
#
# Force all SPA packets to contain a real IP address within the encrypted
# data.  This makes it impossible to use the "-s" command line argument
# on the fwknop client command line, so either "-R" has to be used to
# automatically resolve the external address (if the client is behind a
# NAT) or the client must know the external IP.  If not set here, the
# default is "N".
#

# GPG_HOME_DIR          <path>
#
# Define the path to the GnuPG directory to be used by fwknopd.  If this
# keyword is not specified here, then fwknopd will default to using the
# "/root/.gnupg" directory for the server key(s).
#

# GPG_DECRYPT_ID        <keyID>
#
# Define a GnuPG key ID to use for decrypting SPA messages that have been
# encrypted by an fwknop client using GPG.  This keyword is required for
# authentication that is based on gpg keys.  The gpg key ring on the client
# must have imported and signed the fwknopd server key, and vice versa.
#
# It is ok to use a sensitive personal gpg key on the client, but each
# fwknopd server should have its own gpg key that is generated specifically
# for fwknop communications.  The reason for this is that this decryption
# password within this file.
#
# Note that you can use either keyID or its corresponding email address.
#
# For more information on using fwknop with GnuPG keys, see the following
# link: http://www.cipherdyne.org/fwknop/docs/gpghowto.html
#

# GPG_DECRYPT_PW        <decrypt password>
#
# Specify the decryption password for the gpg key defined by the
# GPG_DECRYPT_ID above.  This is a required field for gpg-based
# authentication.
#

# GPG_REQUIRE_SIG       <Y/N>
#
# With this setting set to 'Y',  fwknopd check all GPG-encrypted SPA
# messages for a signature (signed by the sender's key).  If the incoming
# message is not signed, the decryption process will fail.  If not set, the
# default is 'N'.

# GPG_IGNORE_SIG_VERIFY_ERROR   <Y/N>
#
# Setting this will allow fwknopd to accept incoming GPG-encrypted packets
# that are signed, but the signature did not pass verification (i.e. the
# signer key was expired, etc.).  This setting only applies if the
# GPG_REQUIRE_SIG is also set to 'Y'.

# GPG_REMOTE_ID         <keyID,...,keyID>
#
# Define a list of gpg key ID’s that are required to have signed any
# incoming SPA messages that have been encrypted with the fwknopd server
# key.  This ensures that the verification of the remote user is accomplished
# via a strong cryptographic mechanism. This setting only applies if the
# GPG_REQUIRE_SIG is set to 'Y'.
#

#### fwknopd access.conf stanzas ###

SOURCE              ANY
KEY_BASE64          __CHANGEME__
HMAC_KEY_BASE64     __CHANGEME__

# If you want to use GnuPG keys then define the following variables
#
#GPG_HOME_DIR           /homedir/path/.gnupg
#GPG_DECRYPT_ID         ABCD1234
#GPG_DECRYPT_PW         __CHANGEME__

# If you want to require GPG signatures:
#GPG_REQUIRE_SIG                    Y
#GPG_IGNORE_SIG_VERIFY_ERROR        N
#GPG_REMOTE_ID                      1234ABCD
"""

needs_fwknop = pytest.mark.skipif(shutil.which("fwknopd") is None or shutil.which("fwknop") is None,
                                  reason="fwknop-server / fwknop-client not installed")


def key_gen(home: Path) -> tuple[str, bytes, bytes]:
    """`fwknop --key-gen` output as printed (`KEY_BASE64: …` lines), and the two keys it holds."""
    home.mkdir(exist_ok=True)
    done = subprocess.run(["fwknop", "--no-rc-file", "--key-gen"], capture_output=True, text=True, check=True,
                          env={"HOME": str(home), "PATH": os.environ["PATH"]})
    found = dict(re.findall(r"^(\w+): (\S+)$", done.stdout, re.MULTILINE))
    return done.stdout, base64.b64decode(found["KEY_BASE64"]), base64.b64decode(found["HMAC_KEY_BASE64"])


def fwknopd_dump(tmp_path: Path, access: str, server: str = "") -> tuple[int, str, list[dict[str, str]]]:
    """What fwknopd parsed: (exit code, output, one dict per stanza) from `fwknopd -D`; everything stays in tmp."""
    (tmp_path / "access.conf").write_text(access)
    (tmp_path / "fwknopd.conf").write_text(server)
    for name in ("access.conf", "fwknopd.conf"):
        (tmp_path / name).chmod(0o600)
    done = subprocess.run(
        ["fwknopd", "-c", str(tmp_path / "fwknopd.conf"), "-a", str(tmp_path / "access.conf"), "-D",
         "-r", str(tmp_path / "run"), "-d", str(tmp_path / "digest"), "-p", str(tmp_path / "pid")],
        capture_output=True, text=True, timeout=30,
    )
    stanzas: list[dict[str, str]] = []
    for line in done.stdout.splitlines():
        if match := re.match(r"SOURCE \(\d+\):\s+(.*)$", line):
            stanzas.append({"SOURCE": match.group(1)})
        elif stanzas and (match := re.match(r"\s*([A-Z_ ()]+):\s+(.*)$", line)):
            stanzas[-1][match.group(1).strip()] = match.group(2)
    return done.returncode, done.stdout + done.stderr, stanzas


def imported(tmp_path: Path, access: str, server: str | None = None) -> tuple[str, list[str], LoadedPolicy]:
    paths = [tmp_path / "access.conf"]
    paths[0].write_text(access)
    if server is not None:
        paths.append(tmp_path / "fwknopd.conf")
        paths[1].write_text(server)
    converted = read_policy([str(path) for path in paths])
    loaded = load_policy_text(converted.text, str(tmp_path / "imported.toml"))  # what `portward check` does
    compile_policy(loaded)
    return converted.text, converted.notes, loaded


def key_of(text: str) -> bytes:
    return base64.b64decode(text)


# --- the shipped file, and the same with real keys -------------------------------------------------------


@needs_fwknop
def test_shipped_access_conf_is_refused_at_its_placeholders_like_fwknopd(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    code, output, _stanzas = fwknopd_dump(tmp_path / "d", DEBIAN_ACCESS)
    assert code != 0, output  # fwknopd will not start with __CHANGEME__ keys either
    with pytest.raises(FwknopConfigError) as caught:
        imported(tmp_path, DEBIAN_ACCESS)
    where = [(problem.line, problem.key) for problem in caught.value.problems]
    assert where == [(205, "KEY_BASE64"), (206, "HMAC_KEY_BASE64")]
    assert all("fwknop --key-gen" in problem.message for problem in caught.value.problems)


@needs_fwknop
def test_shipped_access_conf_with_key_gen_keys(tmp_path: Path) -> None:
    printed, key, hmac_key = key_gen(tmp_path / "home")
    lines = DEBIAN_ACCESS.splitlines()
    assert lines[204:206] == ["KEY_BASE64          __CHANGEME__", "HMAC_KEY_BASE64     __CHANGEME__"]
    access = "\n".join([*lines[:204], printed.strip(), *lines[206:]]) + "\n"  # pasted as --key-gen prints it
    (tmp_path / "d").mkdir()
    code, output, [theirs] = fwknopd_dump(tmp_path / "d", access)
    assert code == 0, output
    _text, notes, loaded = imported(tmp_path, access)
    [door] = loaded.policy.spa
    assert door.name == "stanza1-any" and NAME_RE.match(door.name)
    assert key_of(door.key_base64 or "") == key and key_of(door.hmac_key_base64 or "") == hmac_key
    assert len(key) == int(theirs["KEY_LEN"]) and len(hmac_key) == int(theirs["HMAC_KEY_LEN"])
    assert (door.port, door.from_, door.open, door.open_for, door.max_open_for, door.require_source_address) == (
        "62201/udp", ["any"], ["1-65535/tcp", "1-65535/udp"], int(theirs["FW_ACCESS_TIMEOUT"]),
        int(theirs["MAX_FW_TIMEOUT"]), theirs["REQUIRE_SOURCE_ADDRESS"] == "Yes",
    )
    assert any("access.conf:204: no OPEN_PORTS" in note for note in notes)


# --- fwknopd -D agrees, stanza by stanza ---------------------------------------------------------------

GRID = [
    "SOURCE ANY\n{K}\n{H}\nOPEN_PORTS tcp/22, udp/53\nFW_ACCESS_TIMEOUT 45 ; a comment\nREQUIRE_SOURCE_ADDRESS Yes\n",
    "SOURCE: 198.18.0.0/24, 198.19.0.5\nKEY: secret pass  \n{H}\nMAX_FW_TIMEOUT 20\nOPEN_PORTS TCP/22 , udp/53\n",
    "  SOURCE 198.18.0.0/255.255.255.0\n{K}\n{H}\nFW_ACCESS_TIMEOUT 0\nREQUIRE_SOURCE y\nOPEN_PORTS tcp/443\n"
    "SOURCE any\n{K}\n{H}\nOPEN_PORTS udp/1194\nMAX_FW_TIMEOUT 600\nFW_ACCESS_TIMEOUT 120\n",
    "KEY ignored-before-any-source\nSOURCE ANY\nKEY_BASE64 oQV01R4gwb/T5fFos0I8A9vuUQRSq\n{H}\nOPEN_PORTS tcp/22\n",
    "SOURCE 198.18.0.7\nHMAC_KEY a plain hmac key\nKEY plain;after semicolon\nOPEN_PORTS tcp/22\n",
]


@needs_fwknop
@pytest.mark.parametrize("template", GRID)
def test_stanzas_mean_what_fwknopd_parsed(tmp_path: Path, template: str) -> None:
    _printed, key, hmac_key = key_gen(tmp_path / "home")
    access = template.format(K=f"KEY_BASE64 {base64.b64encode(key).decode()}",
                             H=f"HMAC_KEY_BASE64 {base64.b64encode(hmac_key).decode()}")
    (tmp_path / "d").mkdir()
    code, output, theirs = fwknopd_dump(tmp_path / "d", access)
    assert code == 0, output
    _text, _notes, loaded = imported(tmp_path, access)
    assert len(loaded.policy.spa) == len(theirs)
    for door, stanza in zip(loaded.policy.spa, theirs, strict=True):
        assert len(key_of(door.key_base64 or "")) == int(stanza["KEY_LEN"]), stanza
        assert len(key_of(door.hmac_key_base64 or "")) == int(stanza["HMAC_KEY_LEN"]), stanza
        opened = stanza["OPEN_PORTS"]
        assert door.open == [f"{port}/{proto.lower()}" for proto, port in re.findall(r"(\w+)/(\d+)", opened)]
        fw, most = int(stanza["FW_ACCESS_TIMEOUT"]), int(stanza["MAX_FW_TIMEOUT"])
        assert (door.open_for, door.max_open_for) == (min(fw, most), most)  # fwknopd honours the smaller
        assert door.require_source_address is (stanza["REQUIRE_SOURCE_ADDRESS"] == "Yes")
        sources = [item.strip() for item in stanza["SOURCE"].split(",")]
        assert door.from_ == (["any"] if "any" in map(str.lower, sources) else [
            "198.18.0.0/24" if item.endswith("255.255.255.0") else item for item in sources])


K32 = base64.b64encode(b"k" * 32).decode()


@needs_fwknop
@pytest.mark.parametrize(
    ("access", "key"),
    [
        ("SOURCE ANY\nKEY_BASE64 __CHANGEME__\n", "KEY_BASE64"),
        ("SOURCE ANY\nKEY_BASE64 !!!not-base64\n", "KEY_BASE64"),
        (f"SOURCE ANY\nKEY_BASE64 {K32}\nOPEN_PORTS tcp/22,\n", "OPEN_PORTS"),
        (f"SOURCE ANY\nKEY_BASE64 {K32}\nOPEN_PORTS sctp/22\n", "OPEN_PORTS"),
        (f"SOURCE ANY\nKEY_BASE64 {K32}\nFW_ACCESS_TIMEOUT -5\n", "FW_ACCESS_TIMEOUT"),
        (f"SOURCE ANY\nKEY_BASE64 {K32}\nHMAC_KEY_BASE64 {K32}\n", "HMAC_KEY_BASE64"),  # the same key twice
        ("SOURCE 198.18.0.1/33\nKEY k\n", "SOURCE"),
        ("SOURCE ANY\nOPEN_PORTS tcp/22\n", "SOURCE"),  # no key at all
    ],
)
def test_what_fwknopd_refuses_is_refused_at_its_line(tmp_path: Path, access: str, key: str) -> None:
    (tmp_path / "d").mkdir()
    code, output, _theirs = fwknopd_dump(tmp_path / "d", access)
    assert code != 0, output
    with pytest.raises(FwknopConfigError) as caught:
        imported(tmp_path, access)
    assert key in {problem.key for problem in caught.value.problems}
    assert all(problem.line > 0 for problem in caught.value.problems)


@needs_fwknop
@pytest.mark.parametrize("length", [32, 33])
def test_key_length_limit_is_the_clients(tmp_path: Path, length: int) -> None:
    """fwknop takes Rijndael keys of at most 32 bytes ("Error 95 - Invalid key length"); so does the import."""
    key = "k" * length
    (tmp_path / "home").mkdir()
    client = subprocess.run(["fwknop", "--no-rc-file", "--no-save-args", "-A", "tcp/22", "-a", "198.18.0.2",
                             "-D", "198.18.0.1", "-T", "--key-rijndael", key, "--key-hmac", "h", "--use-hmac"],
                            capture_output=True, text=True, env={"HOME": str(tmp_path / "home"),
                                                                 "PATH": os.environ["PATH"]})
    access = f"SOURCE ANY\nKEY {key}\nHMAC_KEY h\nOPEN_PORTS tcp/22\n"
    if client.returncode == 0:
        imported(tmp_path, access)
    else:
        assert "Invalid key length" in client.stdout + client.stderr
        with pytest.raises(FwknopConfigError, match="1-32"):
            imported(tmp_path, access)
    assert (client.returncode == 0) is (length <= 32)


@needs_fwknop
def test_plain_keys_decrypt_real_client_packets(tmp_path: Path) -> None:
    """KEY / HMAC_KEY are their bytes as written, trailing blanks too: base64 of them opens fwknop's packets."""
    access = "SOURCE ANY\nKEY secret pass  \nHMAC_KEY hmac key;ignored\nOPEN_PORTS tcp/22\n"
    _text, notes, loaded = imported(tmp_path, access)
    [door] = loaded.policy.spa
    assert any("access.conf:2: KEY: ends in 2 blank(s)" in note for note in notes)
    (tmp_path / "home").mkdir()
    client = subprocess.run(["fwknop", "--no-rc-file", "--no-save-args", "-A", "tcp/22", "-a", "198.18.0.2",
                             "-D", "198.18.0.1", "-T", "--key-rijndael", "secret pass  ", "--key-hmac", "hmac key",
                             "--use-hmac"], capture_output=True, text=True, check=True,
                            env={"HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"]})
    payload = re.search(r"Final SPA Data: (\S+)", client.stdout).group(1).encode()  # type: ignore[union-attr]
    message = fko.decode(payload, key_of(door.key_base64 or ""), key_of(door.hmac_key_base64 or ""))
    assert (message.allow_ip, message.access) == ("198.18.0.2", (("tcp", 22),))
    with pytest.raises(fko.Rejected):  # without the blanks it is another key
        fko.decode(payload, b"secret pass", key_of(door.hmac_key_base64 or ""))


# --- fwknopd.conf: the SPA port ------------------------------------------------------------------------

SERVER_GRID = [
    ("", "62201/udp"),
    ("PCAP_FILTER                 udp port 40000;\n", "40000/udp"),
    ("PCAP_FILTER udp dst port 40001\n", "40001/udp"),
    ("ENABLE_UDP_SERVER Y;\nUDPSERV_PORT 41000;\nPCAP_FILTER udp port 40000;\n", "41000/udp"),
    ("ENABLE_UDP_SERVER Y;\n", "62201/udp"),
    ("PCAP_FILTER udp dst portrange 10000-65535;\n", "62201/udp"),
]


@needs_fwknop
@pytest.mark.parametrize(("server", "port"), SERVER_GRID)
def test_spa_port_comes_from_fwknopd_conf(tmp_path: Path, server: str, port: str) -> None:
    access = f"SOURCE ANY\nKEY_BASE64 {base64.b64encode(b'k' * 32).decode()}\nHMAC_KEY h\nOPEN_PORTS tcp/22\n"
    (tmp_path / "d").mkdir()
    code, output, _theirs = fwknopd_dump(tmp_path / "d", access, server)
    assert code == 0, output
    settings_ = dict(re.findall(r"^\s*\d+\. (\w+)\s+=\s+'(.*)'$", output, re.MULTILINE))
    udp_server = settings_["ENABLE_UDP_SERVER"] == "Y"
    theirs = settings_["UDPSERV_PORT"] if udp_server else re.sub(r"\D+", " ", settings_["PCAP_FILTER"]).split()[0]
    _text, notes, loaded = imported(tmp_path, access, server)
    [door] = loaded.policy.spa
    assert door.port == port
    if "portrange" in server:
        assert any("fwknopd.conf:1: PCAP_FILTER" in note and "set port by hand" in note for note in notes)
    else:
        assert door.port == f"{theirs}/udp"


def test_fwknopd_conf_settings_a_door_cannot_say_are_noted() -> None:
    found = parse_fwknopd_conf("PCAP_INTF eth1;\nMAX_SPA_PACKET_AGE 30;\nENABLE_TCP_SERVER Y\n", "f.conf")
    assert found.port == "62201/udp"
    assert [note.split(":", 2)[1] for note in found.notes] == ["1", "2", "3"]


def test_files_in_the_wrong_order_are_refused(tmp_path: Path) -> None:
    (tmp_path / "access.conf").write_text("SOURCE ANY\nKEY k\n")
    (tmp_path / "fwknopd.conf").write_text("PCAP_FILTER udp port 1\n")
    with pytest.raises(InputError, match=r"give access\.conf first"):
        read_policy([str(tmp_path / "fwknopd.conf"), str(tmp_path / "access.conf")])
    with pytest.raises(InputError, match=r"optionally fwknopd\.conf"):
        read_policy([str(tmp_path / "access.conf")] * 3)


# --- keys that become notes, includes, errors ---------------------------------------------------------


def test_keys_a_door_cannot_say_are_notes_at_their_line(tmp_path: Path) -> None:
    k, h = base64.b64encode(b"k" * 32).decode(), base64.b64encode(b"h" * 64).decode()
    access = f"""SOURCE 198.18.0.0/24
KEY_BASE64 {k}
HMAC_KEY_BASE64 {h}
OPEN_PORTS tcp/22, tcp/80, udp/53
RESTRICT_PORTS tcp/80
REQUIRE_USERNAME alice
ENABLE_CMD_EXEC N
DESTINATION 198.18.0.1
ACCESS_EXPIRE 12/31/2030
GPG_HOME_DIR /root/.gnupg
HMAC_DIGEST_TYPE sha512
FORCE_NAT 198.18.0.9 22
"""
    _text, notes, loaded = imported(tmp_path, access)
    [door] = loaded.policy.spa
    assert door.open == ["22/tcp", "53/udp"] and door.from_ == ["198.18.0.0/24"]
    for line, key in [(5, "RESTRICT_PORTS"), (6, "REQUIRE_USERNAME"), (7, "ENABLE_CMD_EXEC"), (8, "DESTINATION"),
                      (9, "ACCESS_EXPIRE"), (10, "GPG_HOME_DIR"), (11, "HMAC_DIGEST_TYPE"), (12, "FORCE_NAT")]:
        assert any(note.startswith(f"{tmp_path}/access.conf:{line}: {key}:") for note in notes), key


def test_gpg_only_stanza_is_noted_and_left_out(tmp_path: Path) -> None:
    k = base64.b64encode(b"k" * 32).decode()
    access = f"SOURCE 198.18.0.5\nGPG_DECRYPT_ID ABCD\nGPG_DECRYPT_PW pw\nSOURCE ANY\nKEY_BASE64 {k}\nHMAC_KEY h\n"
    _text, notes, loaded = imported(tmp_path, access)
    assert [door.name for door in loaded.policy.spa] == ["stanza2-any"]
    assert any("access.conf:1: the stanza decrypts with GnuPG only" in note for note in notes)


def test_missing_hmac_key_is_a_note_and_a_placeholder(tmp_path: Path) -> None:
    text, notes, loaded = imported(tmp_path, "SOURCE ANY\nKEY secret\nOPEN_PORTS tcp/22\n")
    assert loaded.policy.spa[0].hmac_key_base64 is None
    assert "# hmac_key_base64 = " in text and any("no HMAC key" in note for note in notes)


def test_includes_are_followed(tmp_path: Path) -> None:
    (tmp_path / "keys.conf").write_text("KEY_BASE64: " + base64.b64encode(b"k" * 16).decode() + "\nHMAC_KEY h\n"
                                        "OPEN_PORTS tcp/1\n")
    (tmp_path / "more.d").mkdir()
    (tmp_path / "more.d" / "b.conf").write_text("SOURCE 198.19.0.0/16\nKEY kb\nHMAC_KEY hb\n")
    (tmp_path / "more.d" / "a.conf").write_text("SOURCE 198.18.0.0/16\nKEY ka\nHMAC_KEY ha\n")
    (tmp_path / "more.d" / "skip.txt").write_text("SOURCE 1.2.3.4\n")
    _text, _notes, loaded = imported(
        tmp_path, "SOURCE ANY\nOPEN_PORTS tcp/22\n%include_keys keys.conf\n%include_folder more.d\n")
    doors = loaded.policy.spa
    assert [door.from_ for door in doors] == [["any"], ["198.18.0.0/16"], ["198.19.0.0/16"]]
    assert key_of(doors[0].key_base64 or "") == b"k" * 16 and doors[0].open == ["22/tcp"]  # only keys come in
    assert [key_of(door.key_base64 or "") for door in doors[1:]] == [b"ka", b"kb"]


@pytest.mark.parametrize(
    ("text", "line", "key", "says"),
    [
        ("SOURCE ANY\nopen_ports tcp/22\nKEY k\n", 2, "open_ports", "write OPEN_PORTS"),
        ("SOURCE ANY\nOPEN_PORT tcp/22\nKEY k\n", 2, "OPEN_PORT", "did you mean OPEN_PORTS"),
        ("SOURCE ANY\nKEY k\nKEY j\n", 3, "KEY", "given twice"),
        ("SOURCE ANY\nKEY k\nOPEN_PORTS tcp/22-25\n", 3, "OPEN_PORTS", "one number"),
        ("SOURCE ANY\nKEY k\nFW_ACCESS_TIMEOUT 45s\n", 3, "FW_ACCESS_TIMEOUT", "whole number"),
        ("SOURCE 198.18.0.0/33\nKEY k\n", 1, "SOURCE", "not ANY, an address or a CIDR"),
        ("SOURCE 198.18.0.0/24,,198.19.0.1\nKEY k\n", 1, "SOURCE", "empty item"),
        ("SOURCE ANY\nOPEN_PORTS tcp/22\n", 1, "SOURCE", "No keys found"),
        ("SOURCE\n", 1, "SOURCE", "needs a value"),
        ("# nothing\n", 0, "SOURCE", "no stanza"),
        ("SOURCE ANY\nKEY k\nKEY_BASE64 aw\n", 3, "KEY_BASE64", "keep one"),
        ("SOURCE ANY\nKEY k\nRESTRICT_PORTS tcp/22\nOPEN_PORTS tcp/22\n", 3, "RESTRICT_PORTS", "opens nothing"),
    ],
)
def test_problems_name_file_line_and_key(tmp_path: Path, text: str, line: int, key: str, says: str) -> None:
    with pytest.raises(FwknopConfigError) as caught:
        imported(tmp_path, text)
    problem = caught.value.problems[0]
    assert (problem.file, problem.line, problem.key) == (f"{tmp_path}/access.conf", line, key)
    assert says in problem.message


def portward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "portward", *args], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src")})


def test_cli_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "access.conf").write_text(DEBIAN_ACCESS)
    done = portward("import", "--from", "fwknop", str(tmp_path / "access.conf"))
    assert done.returncode == 2 and "access.conf:205: KEY_BASE64:" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "access.conf").write_text("SOURCE ANY\nKEY secret\nHMAC_KEY other\nOPEN_PORTS tcp/22\n")
    out = tmp_path / "policy.toml"
    done = portward("import", "--from", "fwknop", str(tmp_path / "access.conf"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o077 == 0  # the keys are in it
    check = portward("check", "-p", str(out))
    assert check.returncode == 0, check.stderr


# --- any text: parsed or refused, never a crash ------------------------------------------------------

KEYS = [*sorted(ACCESS_KEYS), "%include", "%include_keys", "source", "OPEN_PORT", "#", ";", ""]
VALUES = st.one_of(
    st.sampled_from(["ANY", "any", "198.18.0.0/24", "198.18.0.1/255.255.0.0", "2001:db8::/64", "tcp/22",
                     "udp/53, tcp/1", "tcp/0", "30", "0", "Y", "N", "__CHANGEME__", "a2V5", "!!", "k;x", "", " ",
                     "1/2/3", "%IP%"]),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
)
JUNK = st.builds(lambda key, gap, value: f"{key}{gap}{value}", st.sampled_from(KEYS),
                 st.sampled_from([" ", "\t", ": ", "  "]), VALUES)
KEY_TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=";"), min_size=1,
                   max_size=40)
LIKELY = st.one_of(  # lines a real access.conf has, with values that are sometimes out of range
    st.builds("SOURCE {}".format, st.sampled_from(["ANY", "198.18.0.0/24", "198.18.0.9, 2001:db8::/48", "198.19.0.1/16",
                                                   "198.18.0.0/255.255.255.0", "any,198.18.0.1"])),
    st.builds("KEY {}".format, KEY_TEXT),
    st.builds("HMAC_KEY {}".format, KEY_TEXT),
    st.builds("KEY_BASE64 {}".format, st.binary(min_size=1, max_size=40).map(lambda b: base64.b64encode(b).decode())),
    st.builds("OPEN_PORTS {}/{}".format, st.sampled_from(["tcp", "udp", "TCP"]), st.integers(0, 70000)),
    st.builds("RESTRICT_PORTS tcp/{}".format, st.integers(1, 30)),
    st.builds("FW_ACCESS_TIMEOUT {}".format, st.integers(0, 800000)),
    st.builds("MAX_FW_TIMEOUT {}".format, st.integers(0, 800000)),
    st.builds("REQUIRE_SOURCE_ADDRESS {}".format, st.sampled_from(["Y", "N", "yes", "no"])),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([[], ["SOURCE ANY"], ["SOURCE 198.18.0.0/24"]]),
       st.lists(st.one_of(LIKELY, LIKELY, LIKELY, LIKELY, LIKELY, JUNK), max_size=10))
def test_any_lines_parse_or_are_problems(start: list[str], lines: list[str]) -> None:
    """Random key/value lines: either stanzas whose doors pass `check`, or problems — never a crash."""
    try:
        stanzas = parse_access_conf("\n".join(start + lines))
    except ProblemsError as error:
        assert error.problems and all(problem.file == "access.conf" for problem in error.problems)
        return
    for number, stanza in enumerate(stanzas, 1):
        assert isinstance(stanza, Stanza)
        try:
            values, _notes = stanza_door(stanza, number)
        except ProblemsError as error:
            assert all(problem.line > 0 for problem in error.problems)
            continue
        if values is not None:
            assert NAME_RE.match(values["name"])
            block = "\n".join(f"{key} = {_toml(value)}" for key, value in values.items())
            load_policy_text(f"[[spa]]\n{block}\n", "stanza.toml")


def _toml(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
