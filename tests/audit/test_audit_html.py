"""`portward audit --html` on a namespace host whose live ruleset contradicts the policy: the contract's data-
attributes and embedded JSON, per-source mismatch cells, verify results from two vantage points, no network
reference anywhere, and the page as headless Chromium renders it (with and without its sort script)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import SRV_LAN4, Lab
from tests.pwutil import Portward, write

POLICY = """
[zones]
lan = ["198.18.0.0/24", "2001:db8:0:1::/64"]

[[inbound]]
name = "ssh"
ports = ["2222/tcp"]
from = ["any"]

[[inbound]]
name = "app"
ports = ["2224/tcp"]
from = ["lan"]
"""

# Contradictions the policy never wrote: a foreign table drops ssh from the wan side (IPv4 only), and a rule
# slipped into portward's own input chain opens 2225, which the policy's default drops.
FOREIGN = """
table inet foreign {
    chain input {
        type filter hook input priority -10; policy accept;
        ip saddr 198.19.0.0/16 tcp dport 2222 drop
    }
}
"""


@dataclass
class Page:
    """What a test needs from one HTML file: socket rows (their data- attributes and cells) and scripts."""

    rows: list[dict[str, str]] = field(default_factory=list)
    cells: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (row's port/proto, cell attributes)
    scripts: list[tuple[dict[str, str], str]] = field(default_factory=list)
    references: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, attribute, value)
    sort_buttons: int = 0


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._script: dict[str, str] | None = None
        self._text: list[str] = []
        self._row = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        for name in ("src", "href", "action", "srcset", "poster", "data", "xlink:href"):
            if name in values:
                self.page.references.append((tag, name, values[name]))
        if tag == "tr" and "data-port" in values:
            self.page.rows.append(values)
            self._row = f"{values['data-port']}/{values['data-proto']}"
        elif tag == "td" and "data-source" in values:
            self.page.cells.append((self._row, values))
        elif tag == "script":
            self._script, self._text = values, []
        elif tag == "button" and "sort" in values.get("class", ""):
            self.page.sort_buttons += 1

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.page.scripts.append((self._script, "".join(self._text)))
            self._script = None
        elif tag == "tbody":
            self._row = ""


def parse(text: str) -> Page:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser.page


def embedded(page: Page) -> Any:
    found = [body for attrs, body in page.scripts if attrs.get("id") == "portward-audit"]
    assert len(found) == 1
    assert next(a for a, _ in page.scripts if a.get("id") == "portward-audit")["type"] == "application/json"
    return json.loads(found[0])


def row(page: Page, port: int, proto: str, family_address: str) -> dict[str, str]:
    matches = [r for r in page.rows if (r["data-port"], r["data-proto"], r["data-address"]) ==
               (str(port), proto, family_address)]
    assert len(matches) == 1, page.rows
    return matches[0]


def cell(page: Page, port: int, source: str) -> list[dict[str, str]]:
    return [attrs for key, attrs in page.cells if key == f"{port}/tcp" and attrs["data-source"] == source]


@dataclass
class Report:
    lab: Lab
    folder: Path
    html: Path
    printed: Any  # the --json document printed by the same run that wrote the HTML
    text: str


@pytest.fixture(scope="module")
def report(lab_module: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    lab = lab_module
    folder = tmp_path_factory.mktemp("html")
    listener = lab.listen("srv", ["2222/tcp", "127.0.0.1:2223/tcp", "198.18.0.1:2224/tcp", "2225/tcp", "5353/udp"])
    try:
        pw = Portward(lab, folder / "state")
        policy = write(folder / "policy.toml", POLICY)
        pw.ok("apply", "-p", str(policy), "--yes")
        lab.nft("srv", "-f", "-", stdin=FOREIGN)
        lab.nft("srv", "insert", "rule", "inet", "portward", "input", "tcp", "dport", "2225", "accept")
        verify_files = []
        for role in ("lan", "wan"):
            outcome = Portward(lab, folder / "state", ns=role).run(
                "verify", "-p", str(policy), "--target", SRV_LAN4, "--ports", "2222-2226", "--json"
            )
            assert outcome.returncode in (0, 3), outcome.stderr
            verify_files.append(str(write(folder / f"verify-{role}.json", outcome.stdout)))
        html = folder / "report.html"
        argv = ["audit", "-p", str(policy), "--html", str(html)]
        for name in verify_files:
            argv += ["--verify", name]
        printed = pw.json(*argv)
        yield Report(lab, folder, html, printed, html.read_text())
    finally:
        lab.stop(listener)


def test_rows_carry_the_contract_attributes(report: Report) -> None:
    page = parse(report.text)
    sockets = report.printed["sockets"]
    assert len(page.rows) == len(sockets) == 8  # one <tr> per socket, v4 and v6 apart
    for entry in sockets:
        found = row(page, entry["port"], entry["proto"], entry["address"])
        assert found["data-exposure"] == entry["exposure"]
        assert found["data-mismatch"] == ("false" if entry["matches_policy"] else "true")
    mismatched = {(r["data-port"], r["data-address"]) for r in page.rows if r["data-mismatch"] == "true"}
    assert mismatched == {("2222", "0.0.0.0"), ("2225", "0.0.0.0"), ("2225", "::")}
    assert row(page, 2222, "tcp", "0.0.0.0")["data-exposure"] == "restricted"  # the foreign drop, IPv4 only
    assert row(page, 2222, "tcp", "::")["data-exposure"] == "world"
    assert row(page, 2225, "tcp", "0.0.0.0")["data-exposure"] == "world"  # the slipped-in accept
    assert row(page, 2223, "tcp", "127.0.0.1")["data-exposure"] == "local"
    assert row(page, 5353, "udp", "0.0.0.0")["data-exposure"] == "blocked"


def test_embedded_json_is_the_audit_document(report: Report) -> None:
    document = embedded(parse(report.text))
    assert document == report.printed
    assert set(document) >= {"sockets", "sysctl", "firewalls", "legacy"}
    assert any(f["name"] == "foreign" or "inet foreign" in f.get("tables", []) for f in document["firewalls"]), (
        document["firewalls"]
    )


def test_cells_show_where_policy_and_live_disagree(report: Report) -> None:
    page = parse(report.text)
    sources = [attrs["data-source"] for key, attrs in page.cells if key == "2224/tcp"]
    assert sources == ["lan", "any", "localhost"]  # each zone, then any, then localhost
    ssh_any = cell(page, 2222, "any")
    assert [(c["data-policy"], c["data-live"], c.get("data-cell-mismatch")) for c in ssh_any] == [
        ("all", "some", "true"),  # 0.0.0.0: the wan side is dropped live
        ("all", "all", None),  # ::
    ]
    assert [(c["data-policy"], c["data-live"]) for c in cell(page, 2222, "lan")] == [("all", "all")] * 2
    assert {(c["data-policy"], c["data-live"], c.get("data-cell-mismatch")) for c in cell(page, 2225, "any")} == {
        ("none", "all", "true")
    }
    app = cell(page, 2224, "lan") + cell(page, 2224, "any")
    assert [(c["data-policy"], c["data-live"]) for c in app] == [("all", "all"), ("some", "some")]
    assert "inbound rule 'app'" in cell(page, 2224, "lan")[0]["title"]  # the policy's own reason
    local = cell(page, 2223, "any") + cell(page, 2223, "localhost")
    assert [c["data-live"] for c in local] == ["none", "all"]


def test_verify_results_and_header(report: Report) -> None:
    text = report.text
    wan = json.loads((report.folder / "verify-wan.json").read_text())
    lan = json.loads((report.folder / "verify-lan.json").read_text())
    assert lan["ok"] is False and wan["ok"] is False  # 2225 answers everywhere; 2222 is filtered from the wan
    assert {(d["port"], d["state"]) for d in wan["differences"]} >= {(2222, "filtered"), (2225, "open")}
    for data in (lan, wan):
        assert f'data-source="{data["source"]}" data-ok="false"' in text
        for difference in data["differences"]:
            port, state = difference["port"], difference["state"]
            assert f'data-verify-port="{port}" data-verify-proto="tcp" data-state="{state}"' in text
    assert re.search(r"generation <b>1</b>", text)
    assert f"<code>{report.folder / 'policy.toml'}</code>" in text
    assert "version 0.1.0" in text and report.printed["time"] in text


def test_no_network_reference(report: Report) -> None:
    page = parse(report.text)
    remote = [ref for ref in page.references if not ref[2].startswith("#")]
    assert remote == []
    assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:[a-z]+:)?//""", report.text, re.IGNORECASE)
    assert "@import" not in report.text
    assert all("src" not in attrs for attrs, _ in page.scripts)


def test_verify_needs_html_and_a_verify_document(report: Report, tmp_path: Path) -> None:
    pw = Portward(report.lab, tmp_path / "state")
    alone = pw.run("audit", "--verify", str(report.folder / "verify-lan.json"))
    assert alone.returncode == 2 and "--html" in alone.stderr
    bogus = write(tmp_path / "bogus.json", '{"sockets": []}')
    wrong = pw.run("audit", "--html", str(tmp_path / "r.html"), "--verify", str(bogus))
    assert wrong.returncode == 2 and "not `portward verify --json` output" in wrong.stderr
    assert not (tmp_path / "r.html").exists()


# ------------------------------------------------------------------------------------------ in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={home}", *args]
    environment = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, env=environment)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_chromium_renders_rows_and_mismatches(report: Report, tmp_path: Path) -> None:
    url = report.html.resolve().as_uri()
    dumped = chromium("--dump-dom", url, home=tmp_path)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    page = parse(dumped.stdout)
    assert len(page.rows) == len(report.printed["sockets"])
    assert {(r["data-port"], r["data-address"]) for r in page.rows if r["data-mismatch"] == "true"} == {
        ("2222", "0.0.0.0"), ("2225", "0.0.0.0"), ("2225", "::")
    }
    assert sum(1 for _key, attrs in page.cells if attrs.get("data-cell-mismatch") == "true") >= 3
    assert page.sort_buttons >= 15  # the sort script ran: every sortable heading became a button
    assert embedded(page) == report.printed

    # JavaScript off: a Content-Security-Policy forbidding every script keeps the page's own script from running
    # (--dump-dom itself goes through DevTools, which the policy does not stop); the page must read the same
    locked = tmp_path / "no-script.html"
    locked.write_text(report.text.replace(
        "<head>", "<head><meta http-equiv=\"Content-Security-Policy\" content=\"script-src 'none'\">", 1))
    plain = chromium("--dump-dom", locked.resolve().as_uri(), home=tmp_path)
    assert plain.returncode == 0, plain.stderr[-2000:]
    static = parse(plain.stdout)
    assert static.sort_buttons == 0  # the script really did not run
    assert [(r["data-port"], r["data-mismatch"]) for r in static.rows] == [
        (r["data-port"], r["data-mismatch"]) for r in parse(report.text).rows
    ]

    # the sort script: a click on "port" twice sorts the socket rows by port, descending
    clicked = tmp_path / "clicked.html"
    click = ("<script>var b = Array.from(document.querySelectorAll('#sockets button.sort')).find("
             "function (x) { return x.textContent.trim() === 'port'; }); b.click(); b.click();</script></body>")
    clicked.write_text(report.text.replace("</body>", click, 1))
    sorted_dom = chromium("--dump-dom", clicked.resolve().as_uri(), home=tmp_path)
    ports = [int(r["data-port"]) for r in parse(sorted_dom.stdout).rows]
    assert ports == sorted(ports, reverse=True) and ports != [int(r["data-port"]) for r in page.rows]

    pdf = tmp_path / "report.pdf"
    printed = chromium("--no-pdf-header-footer", f"--print-to-pdf={pdf}", url, home=tmp_path)
    assert printed.returncode == 0 and pdf.exists(), printed.stderr[-2000:]
    boxes = set(re.findall(rb"/MediaBox \[0 0 ([0-9.]+) ([0-9.]+)\]", pdf.read_bytes()))
    assert boxes and all(float(width) > float(height) for width, height in boxes)  # the print CSS: A4 landscape

    picture = tmp_path / "report.png"
    shot = chromium(f"--screenshot={picture}", "--window-size=1280,1600", "--hide-scrollbars", url, home=tmp_path)
    assert shot.returncode == 0 and picture.exists(), shot.stderr[-2000:]
    header = picture.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24])[0] == 1280


# ------------------------------------------------------------------------------------------ without a lab


def synthetic(process: str) -> dict[str, Any]:
    """An audit document without a policy, as run_audit shapes it."""
    socket_entry = {
        "proto": "tcp", "family": 4, "address": "0.0.0.0", "port": 8080, "pid": 4242, "process": process,
        "unit": "web.service", "scope": "any", "exposure": "world", "allowed_from": ["any"],
        "reach": {"any": {"live": "all"}, "localhost": {"live": "all"}},
    }
    return {
        "host": "h<1>", "time": "2026-11-23T07:30:00Z", "policy": None, "profile": "host", "interfaces": ["eth0"],
        "sockets": [socket_entry], "sysctl": [], "firewalls": [], "legacy": [], "notes": ["a & b"], "seconds": 0.1,
    }


def test_hostile_names_stay_text_and_json_survives() -> None:
    from portward.audit.html import ReportContext, render_html

    hostile = "</script><script>alert(1)</script>"
    document = synthetic(hostile)
    text = render_html(document, ReportContext("0.1.0"))
    assert "<script>alert(1)" not in text
    page = parse(text)
    assert embedded(page) == document
    assert [r.get("data-mismatch") for r in page.rows] == [None]  # no policy: nothing to disagree with
    assert [attrs["data-source"] for _key, attrs in page.cells] == ["any", "localhost"]
    assert "nothing applied by portward" in text and "h&lt;1&gt;" in text
