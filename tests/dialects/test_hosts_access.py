"""hosts.allow / hosts.deny: the parser, the tcpdmatch-equivalent evaluator and `import --from hosts`.

The peer is the real Debian `tcpdmatch -d` (reads ./hosts.allow and ./hosts.deny). It reports the
matched line and each option only to syslog, so every batch of queries runs in a private mount namespace
(`unshare -m`) with a tmpfs on /dev whose /dev/log is our socket: nothing on the host changes. Clients are
addresses in 198.18.0.0/15 and 2001:db8::/32 (plus tcpdmatch's `unknown` / `paranoid` pseudo-clients and
user@address); tcpdmatch makes no DNS lookups for those.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portward.dialects.hosts import OTHER, convert, read_policy, render, walk
from portward.dialects.hosts_access import (
    FULL,
    Host,
    HostsAccessError,
    HostsFile,
    Option,
    PatternList,
    Request,
    Rule,
    client_addresses,
    daemon_matches,
    evaluate,
    expand,
    host_addresses,
    host_match,
    parse_hosts_access,
    read_hosts_access,
    render_file,
    render_rule,
    request_like_tcpdmatch,
    string_match,
)
from portward.errors import InputError, PolicyError
from portward.policy.toml import load_policy_text

SEED_ALLOW = "vsftpd : ALL : banners /etc/banners/\n"  # seed 002, 4.4.1.1
SEED_DENY = (  # seed 002, 4.4.1.2 and 4.4.1.3, verbatim
    "ALL : 206.182.68.0 : spawn /bin/echo `date` %c %d >> /var/log/intruder_alert\n"
    "in.telnetd : ALL : severity emerg\n"
)

# name -> (hosts.allow, hosts.deny); LISTDIR is replaced by a folder holding clients.txt
FILES: dict[str, tuple[str, str]] = {
    "seed002": (SEED_ALLOW, SEED_DENY),
    "seed002-lab": (SEED_ALLOW, SEED_DENY.replace("206.182.68.0", "198.18.68.0")),
    "mostly-closed": (
        "# hosts_access(5) MOSTLY CLOSED, with addresses\n"
        "sshd : 198.18.0.0/255.255.255.0 EXCEPT 198.18.0.66 : spawn /bin/echo %a %c %d %h %n %u %s %p %% %r "
        "%H %N %A %R : severity auth.notice\n"
        "vsftpd in.ftpd : [2001:db8:0:1::]/64, 198.19. : severity mail.notice\n"
        "in.fingerd: 198.18.0.0/25 [2001:db8::1] 198.19.0.9\n"
        "ALL : LOCAL, .example.test\n",
        "ALL : ALL : spawn /bin/echo denied %d from %a\\: %c : severity warning\n",
    ),
    "except": (
        "ALL EXCEPT in.telnetd vsftpd : ALL EXCEPT 198.18. EXCEPT 198.18.0.0/255.255.255.128 EXCEPT 198.18.0.5\n"
        "vsftpd : ALL EXCEPT [2001:db8::]/33 EXCEPT [2001:db8::1]\n",
        "in.telnetd, vsftpd : ALL\n"
        "ALL EXCEPT sshd : 198.19.0.0/16 EXCEPT 198.19.255.0/24\n",
    ),
    "masks": (
        "sshd : 198.18.0.0/23 198.19.0.0/255.255.252.0 198.18.0.1/255.255.255.3\n"
        "vsftpd : 198.18.0.? 198.19.* [2001:db8:8000::]/33 LISTDIR/clients.txt\n"
        "in.telnetd : 198.18.1.7 .9 [2001:DB8:0:1::5] \\\n"
        "   [2001:db8:ffff::]/48\n",
        "ALL : ALL\n",
    ),
    "options": (
        "sshd : 198.18.0.0/16 EXCEPT 198.18.0.1 : severity local0.info : deny\n"
        "sshd : ALL : ALLOW\n"
        "in.telnetd : [2001:db8::]/32 : twist /bin/echo 421 %d closed to %a\n"
        "vsftpd : 198.19.0.9 : user nosuch-portward-user\n"
        "vsftpd : ALL : user root : group root : rfc931 5 : keepalive : linger 5 : nice 5 : umask 022 "
        ": setenv PW_CLIENT %a : banners /nonexistent-portward\n"
        "in.fingerd : ALL : aclexec /bin/false %a\n",
        "in.telnetd : ALL : allow\n"
        "ALL : 198.19. : twist /bin/echo go away\n",
    ),
    "names": (
        "sshd : KNOWN UNKNOWN@198.19.0.9 root@198.18.0.5 : spawn /bin/echo %u %c\n"
        "in. : PARANOID 198.18.0.1 : severity crit\n"
        "*ftpd : U* EXCEPT 198.18.0.66\n"
        "sshd@ALL, vsftpd@UNKNOWN : 198.18.0.128/25\n"
        "portmap : 198.18.0.1/255.255.0.3 : deny\n"
        "ALL : @trusted, .example.test, localhost-portward\n",
        "ALL EXCEPT in.fingerd : UNKNOWN : spawn /bin/echo unknown %a\n"
        "ALL : ALL\n",
    ),
    "mostly-open": (
        "",
        "ALL : 198.18.0.66, [2001:db8:0:1::]/64\n"
        "ALL EXCEPT in.fingerd : 198.19.\n",
    ),
}
LIST_FILE = "198.18.3.0/255.255.255.0\n2001:db8::1 [2001:db8:0:1::]/64\n198.19.255.\n"
DAEMONS = ["sshd", "vsftpd", "in.ftpd", "in.telnetd", "in.fingerd", "in.tftpd", "portmap", "foo.d"]
ADDRESSES = [
    "198.18.0.1", "198.18.0.5", "198.18.0.9", "198.18.0.66", "198.18.0.127", "198.18.0.200", "198.18.1.7",
    "198.18.3.9", "198.18.64.1", "198.18.65.2", "198.18.68.0", "198.19.0.9", "198.19.3.3", "198.19.255.9",
    "2001:db8::1", "2001:db8::2", "2001:db8:0:1::5", "2001:db8:8000::9", "2001:db8:ffff::1", "::ffff:198.18.0.5",
]
CLIENTS = [*ADDRESSES, "unknown", "paranoid", "root@198.18.0.5", "nobody@2001:db8::1"]

# --------------------------------------------------------------------------------------- the oracle

ORACLE = r"""
import json, os, select, socket, stat, subprocess, sys
work = sys.argv[1]
queries = json.load(sys.stdin)
# private mount namespace (unshare -m): this tmpfs hides /dev from this process tree only
subprocess.run(["mount", "-t", "tmpfs", "pw-devlog", "/dev"], check=True)
os.mknod("/dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
log.bind("/dev/log")
log.setblocking(False)
answers = []
for daemon, client in queries:
    proc = subprocess.Popen(["tcpdmatch", "-d", daemon, client], cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    # read while it runs: a unix datagram socket queues only net.unix.max_dgram_qlen messages, then
    # tcpdmatch's syslog() would block; after it exits, what it sent is all queued
    while True:
        running = proc.poll() is None
        if running:
            select.select([log], [], [], 0.005)
        while True:
            try:
                lines.append(log.recv(65536).decode(errors="replace").split(": ", 1)[1])
            except BlockingIOError:
                break
        if not running:
            break
    stdout, stderr = proc.communicate()
    answers.append({"pid": proc.pid, "stdout": stdout, "stderr": stderr, "log": lines})
json.dump(answers, sys.stdout)
"""


@dataclass
class Answer:
    access: str
    matched: tuple[str, int] | None
    options: list[tuple[str, str]]
    errors: list[str]
    pid: int


def _answer(raw: dict[str, object]) -> Answer:
    stdout, log = str(raw["stdout"]), [str(line) for line in raw["log"]]  # type: ignore[attr-defined]
    access = next(line.split()[-1] for line in stdout.splitlines() if line.startswith("access:"))
    matched = None
    options: list[tuple[str, str]] = []
    errors: list[str] = []
    for line in log:
        if line.startswith("matched:"):
            words = line.split()
            matched = (words[1], int(words[3]))
        elif line.startswith("option:"):
            key, _space, value = line[len("option:"):].strip(" ").partition(" ")
            options.append((key.lower(), value.strip()))
        elif line.startswith("error:"):
            errors.append(line.split(": ", 2)[-1])  # error: hosts.allow, line 4: unknown user: "x"
    return Answer(access, matched, options, errors, int(raw["pid"]))  # type: ignore[call-overload]


def tcpdmatch(work: Path, queries: list[tuple[str, str]]) -> list[Answer]:
    """Ask the real tcpdmatch -d in `work`, one process per query, with its syslog captured."""
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", ORACLE, str(work)],
                          input=json.dumps(queries), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [_answer(raw) for raw in json.loads(done.stdout)]


needs_tcpdmatch = pytest.mark.skipif(
    shutil.which("tcpdmatch") is None or shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs tcpdmatch (package tcpd), unshare and root (a private mount namespace for /dev/log)",
)


def write_files(folder: Path, allow: str, deny: str) -> tuple[HostsFile, HostsFile]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clients.txt").write_text(LIST_FILE)
    allow, deny = allow.replace("LISTDIR", str(folder)), deny.replace("LISTDIR", str(folder))
    (folder / "hosts.allow").write_text(allow)
    (folder / "hosts.deny").write_text(deny)
    return parse_hosts_access(allow, "hosts.allow"), parse_hosts_access(deny, "hosts.deny")


def ours(allow: HostsFile, deny: HostsFile, daemon: str, client: str, pid: int) -> Answer:
    request = request_like_tcpdmatch(daemon, client)
    decision = evaluate(allow, deny, Request(request.daemon, request.client, request.server, request.user, pid))
    matched = (decision.rule.file, decision.rule.end_line) if decision.rule else None
    options = [(applied.option.keyword, applied.option.value or "" if applied.expanded is None else applied.expanded)
               for applied in decision.options]
    errors = [decision.reason.split(": ", 1)[1]] if ": " in decision.reason else []  # a run-time failure
    return Answer(decision.access, matched, options, errors, pid)


# ------------------------------------------------------------------------------------- grid tests


@dataclass
class Original:
    folder: Path
    allow: HostsFile
    deny: HostsFile
    answers: dict[tuple[str, str], Answer]  # (daemon, client) -> what tcpdmatch said


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Original]:
    """tcpdmatch's answers for every file set, daemon and client, asked once for the module."""
    base = tmp_path_factory.mktemp("hosts-files")
    queries = [(daemon, client) for daemon in DAEMONS for client in CLIENTS]
    found = {}
    for name, (allow_text, deny_text) in FILES.items():
        allow, deny = write_files(base / name, allow_text, deny_text)
        found[name] = Original(base / name, allow, deny, dict(zip(queries, tcpdmatch(base / name, queries),
                                                                  strict=True)))
    return found


@needs_tcpdmatch
def test_evaluator_answers_like_tcpdmatch_on_the_grid(originals: dict[str, Original]) -> None:
    """Every (file set, daemon, client): same access, same matched line, same options (% expanded), same
    run-time error."""
    compared = 0
    for name, original in originals.items():
        for (daemon, client), real in original.answers.items():
            mine = ours(original.allow, original.deny, daemon, client, real.pid)
            assert (mine.access, mine.matched, mine.options) == (real.access, real.matched, real.options), (
                name, daemon, client)
            assert mine.errors == real.errors, (name, daemon, client)
            compared += 1
    assert compared == len(FILES) * len(DAEMONS) * len(CLIENTS) == 1536  # the grid size the report quotes
    verdicts = [a.access for o in originals.values() for a in o.answers.values()]
    # the grid exercises every verdict (945 granted, 573 denied, 18 delegated when written)
    assert min(verdicts.count(v) for v in ("granted", "denied", "delegated")) >= 10


LOST = ("not imported", "cannot be turned", "no known port")  # what the import says it could not carry


def address_grid(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Daemons whose answers the import says it kept: named in the files (or, for every other daemon, matched by
    no daemon-name pattern), and not noted as lost."""
    lost = {daemon for daemon, reasons in data["lossy"].items() if any(w in r for r in reasons for w in LOST)}
    named = set(data["daemons"]) - {OTHER}
    daemons = [d for d in DAEMONS if d not in lost and (
        d in named or (OTHER not in lost and not any(string_match(p, d) for p in data["patterns"])))]
    return [(daemon, client) for daemon in daemons for client in ADDRESSES]


def _comparable(answer: Answer) -> tuple[str, list[tuple[str, str]]]:
    # allow/deny are `action` in the policy and come back as `deny` (or nothing): compare the verdict instead;
    # %p is the pid of each tcpdmatch process
    return answer.access, [(key, value.replace(str(answer.pid), "PID")) for key, value in answer.options
                           if key not in ("allow", "deny")]


@needs_tcpdmatch
def test_import_then_export_answers_like_the_original(originals: dict[str, Original], tmp_path: Path) -> None:
    """import -> policy (passes check) -> export --format hosts: tcpdmatch answers as for the original files,
    access and options, for every daemon the import did not say it lost and every address client."""
    compared = 0
    for name, original in originals.items():
        converted = read_policy([str(original.folder / "hosts.allow"), str(original.folder / "hosts.deny")])
        loaded = load_policy_text(converted.text, f"{name}.toml")
        files, _notes = render(loaded.policy)
        out = tmp_path / f"{name}-exported"
        out.mkdir()
        (out / "hosts.allow").write_text(files["etc/hosts.allow"])
        (out / "hosts.deny").write_text(files["etc/hosts.deny"])
        parse_hosts_access(files["etc/hosts.allow"], "exported hosts.allow")  # our own output parses cleanly
        queries = address_grid(converted.data)
        for query, new in zip(queries, tcpdmatch(out, queries), strict=True):
            assert _comparable(original.answers[query]) == _comparable(new), (name, query, files["etc/hosts.allow"])
            compared += 1
    assert compared == 1180, compared  # 8 file sets x up to 8 daemons x 20 addresses, minus what was noted lost


# ------------------------------------------------------------------------------------------ import


def test_seed_002_imports(tmp_path: Path) -> None:
    (tmp_path / "hosts.allow").write_text(SEED_ALLOW)
    (tmp_path / "hosts.deny").write_text(SEED_DENY)
    out = tmp_path / "policy.toml"
    done = subprocess.run([sys.executable, "-m", "portward", "import", "--from", "hosts", str(tmp_path / "hosts.allow"),
                           str(tmp_path / "hosts.deny"), "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = load_policy_text(out.read_text(), str(out))
    policy = loaded.policy
    assert policy.defaults.inbound == "accept"  # the seed has no `ALL: ALL`: tcpd grants what no rule matches
    by_name = {rule.name: rule for rule in policy.inbound}
    assert by_name["vsftpd-allow-1"].ports == ["21/tcp"] and by_name["vsftpd-allow-1"].from_ == ["any"]
    assert by_name["vsftpd-allow-1"].hosts_options == ["banners /etc/banners/"]
    telnet = [rule for rule in policy.inbound if rule.daemon == "in.telnetd"]
    assert [(r.from_, r.action, r.hosts_options) for r in telnet] == [
        (["206.182.68.0"], "drop", ["spawn /bin/echo `date` %c %d >> /var/log/intruder_alert"]),
        (["any"], "drop", ["severity emerg"]),
    ]
    others = [rule for rule in policy.inbound if rule.daemon == OTHER]
    assert [(r.from_, r.ports, r.action) for r in others] == [(["206.182.68.0"], None, "drop")]
    assert "hosts.deny:1: 206.182.68.0 matches that one address only" in done.stdout


def test_all_all_in_hosts_deny_is_the_drop_default_and_says_what_it_means(tmp_path: Path) -> None:
    allow = parse_hosts_access("sshd : 198.18.0.0/255.255.255.0\n", "hosts.allow")
    deny = parse_hosts_access("ALL: ALL\n", "hosts.deny")
    imported = convert(allow, deny)
    assert imported.inbound_default == "drop"
    assert [(r["daemon"], r["from"], r["action"]) for r in imported.rules] == [
        ("sshd", ["198.18.0.0/24"], "accept"), ("sshd", ["any"], "drop")]
    assert any("hosts.deny:1: `ALL : ALL` refuses every daemon hosts.allow does not admit" in note
               and "services that never used TCP Wrappers" in note for note in imported.notes)


def test_unknown_daemons_names_and_users_are_notes_with_file_and_line() -> None:
    allow = parse_hosts_access("frobd : ALL\nsshd : .example.test KNOWN root@198.18.0.1 @ops\n", "hosts.allow")
    imported = convert(allow, HostsFile("hosts.deny"))
    notes = "\n".join(imported.notes)
    assert "hosts.allow:1: daemon 'frobd' has no well-known port here" in notes
    assert "hosts.allow:2: '.example.test' is matched against host names too" in notes
    assert "hosts.allow:2: KNOWN needs the client's host name" in notes
    assert "hosts.allow:2: 'root@198.18.0.1' needs the client's user name" in notes
    assert "hosts.allow:2: netgroup @ops" in notes
    assert "frobd" not in {rule["daemon"] for rule in imported.rules}
    assert imported.lossy["frobd"] == ["no known port"] and imported.lossy["sshd"]


def test_import_refuses_a_bad_line_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "hosts.allow").write_text("sshd : ALL\nvsftpd : 2001:db8::1\n")
    done = subprocess.run([sys.executable, "-m", "portward", "import", "--from", "hosts",
                           str(tmp_path / "hosts.allow")], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'hosts.allow'}:2: clients: IPv6 address 2001:db8::1 outside [ ]" in done.stderr
    assert "write [2001:db8::1]" in done.stderr


def test_export_writes_options_twist_and_an_accepting_default() -> None:
    loaded = load_policy_text("""
[defaults]
inbound = "accept"

[[inbound]]
name = "telnet-bounce"
ports = ["23/tcp"]
from = ["198.19.0.0/16"]
daemon = "in.telnetd"
action = "reject"
hosts_options = ["severity emerg", "twist /bin/echo 421 a:b %d"]

[[inbound]]
name = "ftp"
ports = ["21/tcp"]
from = ["any"]
daemon = "vsftpd"
hosts_options = ["banners /etc/banners/"]
""")
    files, _notes = render(loaded.policy)
    lines = [line for line in files["etc/hosts.allow"].splitlines() if line and not line.startswith("#")]
    assert lines == ["in.telnetd: 198.19.0.0/255.255.0.0 : severity emerg : twist /bin/echo 421 a\\:b %d",
                     "vsftpd: ALL : banners /etc/banners/"]
    assert "ALL" not in files["etc/hosts.deny"].replace("#", "").split()
    rules = parse_hosts_access(files["etc/hosts.allow"], "hosts.allow").rules
    assert rules[0].options[-1] == Option("twist", "/bin/echo 421 a:b %d")


def test_export_refuses_an_option_value_libwrap_would_refuse() -> None:
    loaded = load_policy_text('[[inbound]]\nname = "x"\nfrom = ["any"]\ndaemon = "sshd"\n'
                              'hosts_options = ["umask 999"]\n')
    with pytest.raises(InputError, match=r"inbound\[0\] \('x'\)\.hosts_options\[0\]: umask '999'"):
        render(loaded.policy)


def test_missing_tables_are_empty_and_expansions_are_made_safe(tmp_path: Path) -> None:
    assert read_hosts_access(str(tmp_path / "hosts.allow")).rules == ()  # libwrap: no file, no rules
    request = Request("sshd", Host(address="2001:db8::1"), user="ro;ot`x`")
    assert expand("%u@%a %c %d %% %", request) == "ro_ot_x_@2001:db8::1 ro_ot_x_@2001:db8::1 sshd % %"


@pytest.mark.parametrize(("options", "message"), [
    ('["allow"]', "say allow/deny with `action`"),
    ('["twist /bin/true", "severity emerg"]', "twist ends a rule in libwrap"),
    ('["frobnicate 3"]', "unknown hosts_options(5) option 'frobnicate'"),
    ('["spawn echo\\nrm -rf /"]', "one hosts_options(5) option per string, on one line"),
])
def test_policy_refuses_bad_hosts_options_at_their_line(options: str, message: str) -> None:
    text = f'[[inbound]]\nname = "x"\nfrom = ["any"]\ndaemon = "sshd"\nhosts_options = {options}\n'
    with pytest.raises(PolicyError) as error:
        load_policy_text(text, "p.toml")
    assert "p.toml:5: inbound[0].hosts_options" in str(error.value) and message in str(error.value)


# ------------------------------------------------------------------------------------------ parser


@pytest.mark.parametrize(("text", "where", "message"), [
    ("sshd 198.18.0.1\n", "h:1: rule", "missing ':'"),
    ("sshd : ALL", "h:1: line", "no newline at the end of the file"),
    ("sshd : ALL \\\n", "h:1: line", "ends with a backslash"),
    ("ok : ALL\n\n  # a comment: ALL\n", "h:3: comment", "only in the first column"),
    ("sshd : 198.18.0.1/24\n", "h:1: clients", "host bits are set"),
    ("sshd : 198.18.0.0/0\n", "h:1: clients", "/0 matches no address"),
    ("sshd : 198.18.0.0/33\n", "h:1: clients", "prefix length is 1-32"),
    ("sshd : 198.18.0.0/255.255.255.255\n", "h:1: clients", "not a valid mask"),
    ("sshd : 198.18.0\n", "h:1: clients", "not an IPv4 address"),
    ("sshd : 198.18.0.1.\n", "h:1: clients", "address prefix is 1 to 3"),
    ("sshd : [2001:db8::/64]\n", "h:1: clients", "[network]/length"),
    ("sshd : [2001:db8::]/129\n", "h:1: clients", "0-128"),
    ("sshd : 198.18.*/16\n", "h:1: clients", "wildcards cannot be combined"),
    ("sshd : 2001:db8::/32 : deny\n", "h:1: clients", "write [2001:db8::]/32"),
    ("sshd : EXCEPT 198.18.0.1\n", "h:1: clients", "EXCEPT needs patterns on both sides"),
    ("sshd : ALL EXCEPT\n", "h:1: clients", "EXCEPT needs patterns on both sides"),
    (" : ALL\n", "h:1: daemons", "empty list"),
    ("sshd : ALL : bogus\n", "h:1: options[0]", "unknown option 'bogus'"),
    ("sshd : ALL :\n", "h:1: options[0]", "missing option name"),
    ("sshd : ALL : allow : spawn x\n", "h:1: options[0]", "must come last"),
    ("sshd : ALL : keepalive 5\n", "h:1: options[0]", "takes no value"),
    ("sshd : ALL : spawn\n", "h:1: options[0]", "needs a value"),
    ("sshd : ALL : umask 0778\n", "h:1: options[0]", "octal"),
    ("sshd : ALL : severity authpriv.info\n", "h:1: options[0]", "facility one of"),
    ("sshd : ALL : rfc931 0\n", "h:1: options[0]", "above 0"),
    ("sshd : ALL : nice 5 6\n", "h:1: options[0]", "whole number"),
    ("sshd : ALL : setenv A=b\n", "h:1: options[0]", "NAME=VALUE"),
    ("sshd : ALL : spawn echo %z\n", "h:1: options[0]", "unknown expansion %z"),
    ("sshd : ALL\n" + "x : " + "198.18.0.1 " * 200 + "\n", "h:2: line", "2047-character line buffer"),
])
def test_bad_lines_are_refused_at_file_and_line(text: str, where: str, message: str) -> None:
    with pytest.raises(HostsAccessError) as error:
        parse_hosts_access(text, "h")
    assert where in str(error.value) and message in str(error.value), str(error.value)


def test_reading_follows_libwrap() -> None:
    text = (
        "# comment \\\n"
        "swallowed : ALL\n"  # a backslash continues a comment too
        "sshd, vsftpd\tin.telnetd : 198.18.0.1,198.18.0.2 \\\n"
        "  [2001:db8::1] : spawn echo a\\:b=c : severity = emerg\n"
        "ALL except in.fingerd : all EXCEPT 198.18. except 198.18.0.5\r\n"
        "\n"
    )
    rules = parse_hosts_access(text, "h").rules
    assert [(r.line, r.end_line) for r in rules] == [(3, 4), (5, 5)]
    assert rules[0].daemons == PatternList(("sshd", "vsftpd", "in.telnetd"))
    assert rules[0].clients.items == ("198.18.0.1", "198.18.0.2", "[2001:db8::1]")
    assert rules[0].options == (Option("spawn", "echo a:b=c"), Option("severity", "emerg"))
    assert rules[1].clients == PatternList(("all",), PatternList(("198.18.",), PatternList(("198.18.0.5",))))
    # libwrap's buffer holds 2,047 characters with the newline (checked with tcpdmatch at 2,046/2,047/2,048)
    assert parse_hosts_access("x : 198.18.0.1".ljust(2046) + "\n", "h").rules
    with pytest.raises(HostsAccessError):
        parse_hosts_access("x : 198.18.0.1".ljust(2047) + "\n", "h")
    joined = "x : 198.18.0.1 \\\n" + "198.18.0.2".ljust(2046 - len("x : 198.18.0.1 ")) + "\n"
    assert parse_hosts_access(joined, "h").rules[0].clients.items == ("198.18.0.1", "198.18.0.2")


# -------------------------------------------------------------------------------------- properties

OCTET = st.integers(0, 255)
DOTTED = st.tuples(OCTET, OCTET, OCTET, OCTET).map(lambda o: ".".join(map(str, o)))
# not in ::/32, so never a v4-mapped (::ffff:a.b.c.d) or v4-compatible address: those are matched as IPv4 text
V6 = st.tuples(st.integers(1, (1 << 32) - 1), st.integers(0, (1 << 96) - 1)).map(
    lambda t: str(ipaddress.IPv6Address(t[0] << 96 | t[1])))


@st.composite
def v4_network(draw: st.DrawFn) -> str:
    length = draw(st.integers(1, 32))
    address = draw(st.integers(0, (1 << 32) - 1)) >> (32 - length) << (32 - length)
    text = str(ipaddress.IPv4Address(address))
    if draw(st.booleans()):
        return f"{text}/{length}"
    if length == 32:
        return text
    return f"{text}/{ipaddress.IPv4Network(f'{text}/{length}').netmask}"


@st.composite
def holey_mask(draw: st.DrawFn) -> str:
    mask = draw(st.integers(0, (1 << 32) - 2)) | (0xFF << 24) | 0xF0
    network = draw(st.integers(0, (1 << 32) - 1)) & mask
    return f"{ipaddress.IPv4Address(network)}/{ipaddress.IPv4Address(mask)}"


@st.composite
def v6_network(draw: st.DrawFn) -> str:
    length = draw(st.integers(0, 128))
    return f"[{draw(V6)}]/{length}"


def _prefix(octets: tuple[int, ...]) -> str:
    return "".join(f"{o}." for o in octets)


HOST_TOKENS = st.one_of(
    DOTTED, v4_network(), holey_mask(), v6_network(), V6.map(lambda a: f"[{a}]"),
    st.lists(OCTET, min_size=1, max_size=3).map(lambda o: _prefix(tuple(o))),
    st.sampled_from(["ALL", "all", "KNOWN", "UNKNOWN", "LOCAL", "PARANOID", "unknown", ".example.test", "u*",
                     "*", "198.18.*", "198.1?.0.*", "*.7", "19?.*.0.1", ".5", ".0.5", "198.18.0.1?", "host-1",
                     "*8", "2001*", "1?.2.", "19?.18.0.", "*.1", "198.18.0.1*"]),
)
USER_TOKENS = st.sampled_from(["ALL", "KNOWN", "UNKNOWN", "root", "r*"])
CLIENT_TOKENS = st.one_of(HOST_TOKENS, st.tuples(USER_TOKENS, HOST_TOKENS).map(lambda t: f"{t[0]}@{t[1]}"),
                          st.sampled_from(["@netgroup"]))
DAEMON_TOKENS = st.sampled_from(["sshd", "vsftpd", "in.telnetd", "ALL", "KNOWN", "in.", "*ftpd", ".telnetd", "SSHD",
                                 "sshd@ALL", "sshd@UNKNOWN", "vsftpd@198.18.0.1", "vsftpd@[2001:db8::1]", "?shd"])
OPTIONS = st.one_of(
    st.sampled_from([Option("keepalive"), Option("rfc931"), Option("rfc931", "3"), Option("nice"),
                     Option("nice", "-5"), Option("umask", "022"), Option("linger", "0"),
                     Option("severity", "mail.notice"), Option("severity", "emerg"), Option("user", "root"),
                     Option("group", "root"), Option("banners", "/etc/banners/")]),
    st.tuples(st.sampled_from(["spawn", "setenv X", "aclexec"]),
              st.lists(st.sampled_from(["a", "b", ":", "\\", "=", " ", "%a", "%c", "%d", "%%", "`", ";", ">&|"]),
                       min_size=1, max_size=8).map("".join).filter(lambda text: text.strip() != ""))
    .map(lambda t: Option(t[0].split(" ")[0], " ".join([*t[0].split(" ")[1:], t[1]]).strip(" "))),
)


def pattern_lists(tokens: st.SearchStrategy[str]) -> st.SearchStrategy[PatternList]:
    """`a b EXCEPT c EXCEPT d e`: one to three groups, folded to the right."""

    def fold(groups: list[list[str]]) -> PatternList:
        result: PatternList | None = None
        for group in reversed(groups):
            result = PatternList(tuple(group), result)
        assert result is not None
        return result

    return st.lists(st.lists(tokens, min_size=1, max_size=2), min_size=1, max_size=3).map(fold)


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    options = draw(st.lists(OPTIONS, max_size=3))
    last = draw(st.sampled_from([None, Option("allow"), Option("deny"), Option("twist", "/bin/echo %d: bye")]))
    options += [last] if last else []
    return Rule("h", 0, 0, draw(pattern_lists(DAEMON_TOKENS)), draw(pattern_lists(CLIENT_TOKENS)), tuple(options))


@settings(max_examples=200, deadline=None)
@given(st.lists(rules(), min_size=1, max_size=3), st.sampled_from([", ", " ", "\t", " ,\t"]))
def test_parse_render_parse_is_identity(generated: list[Rule], separator: str) -> None:
    text = "".join(render_rule(rule).replace(" ", separator, 1) + "\n" for rule in generated)
    first = parse_hosts_access(text, "h").rules
    again = parse_hosts_access(render_file(HostsFile("h", first)), "h").rules
    strip = [(r.daemons, r.clients, r.options) for r in first]
    assert strip == [(r.daemons, r.clients, r.options) for r in again]
    assert strip == [(r.daemons, r.clients, r.options) for r in generated]


def _contains(spans: dict[int, list[tuple[int, int]]], family: int, value: int) -> bool:
    return any(first <= value <= last for first, last in spans[family])


@settings(max_examples=500, deadline=None)
@given(HOST_TOKENS, st.one_of(DOTTED, V6))
def test_addresses_of_a_pattern_are_what_host_match_matches(token: str, address: str) -> None:
    admitted = host_addresses(token)
    if any("not imported" in reason or "cannot be turned" in reason for reason in admitted.reasons):
        return
    value = ipaddress.ip_address(address)
    assert _contains(admitted.spans, value.version, int(value)) == host_match(token, Host(address=address)), token


@settings(max_examples=300, deadline=None)
@given(st.lists(rules(), max_size=2), st.lists(rules(), max_size=2),
       st.sampled_from(["sshd", "vsftpd", "in.telnetd", "portmap"]), st.lists(st.one_of(DOTTED, V6), min_size=5,
                                                                               max_size=5))
def test_import_walk_agrees_with_the_evaluator(allow_rules: list[Rule], deny_rules: list[Rule], daemon: str,
                                                addresses: list[str]) -> None:
    """The pieces the import cuts the address space into answer like evaluate() for each address."""
    allow = HostsFile("hosts.allow", tuple(allow_rules))
    deny = HostsFile("hosts.deny", tuple(deny_rules))
    reasons: list[str] = []
    request = Request(daemon)
    pieces = walk(allow, deny, lambda token: daemon_matches(token, request), lambda _p: None, reasons)
    if any("not imported" in reason or "cannot be turned" in reason for reason in reasons):
        return
    for address in addresses:
        value = ipaddress.ip_address(address)
        piece = next(p for p in pieces if _contains(p.spans, value.version, int(value)))
        decision = evaluate(allow, deny, Request(daemon, Host(address=address)), lambda _p: None)
        if "unknown user" in decision.reason:
            assert piece.access == "denied"
            continue
        assert piece.access == decision.access and piece.rule == decision.rule, (address, render_rule(piece.rule)
                                                                                  if piece.rule else None)


def test_pieces_cover_every_address_once() -> None:
    allow = parse_hosts_access(FILES["except"][0], "hosts.allow")
    deny = parse_hosts_access(FILES["except"][1], "hosts.deny")
    pieces = walk(allow, deny, lambda token: daemon_matches(token, Request("vsftpd")), lambda _p: None, [])
    for family in (4, 6):
        spans = sorted(span for piece in pieces for span in piece.spans[family])
        assert spans[0][0] == 0 and spans[-1][1] == FULL[family][0][1]
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans))
    # ALL EXCEPT (198.18. EXCEPT (198.18.0.0/25 EXCEPT 198.18.0.5)): EXCEPT nests to the right
    admitted = client_addresses(allow.rules[0].clients)
    inside = {a: _contains(admitted.spans, 4, int(ipaddress.IPv4Address(a)))
              for a in ("198.18.0.5", "198.18.0.6", "198.18.0.200", "198.19.0.1")}
    assert inside == {"198.18.0.5": False, "198.18.0.6": True, "198.18.0.200": False, "198.19.0.1": True}
