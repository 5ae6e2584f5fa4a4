"""Command line: parse options, call one operation, print its result. Nothing else lives here.

Heavy modules (pydantic, libnftables, rich) are imported inside the commands so `portward --help`
stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from portward import __version__

DEFAULT_POLICY = "/etc/portward/policy.toml"
F = TypeVar("F", bound=Callable[..., Any])
Json = dict[str, Any]


def json_option(function: F) -> F:
    """`--json` after the command as well as before it."""
    return click.option("--json", "json_output", is_flag=True, help="Print one JSON document.")(function)


def policy_option(function: F) -> F:
    return click.option(
        "-p", "--policy", default=DEFAULT_POLICY, show_default=True, metavar="FILE", help="Policy file."
    )(function)


class Context:
    def __init__(self, state_dir: str | None, json_output: bool) -> None:
        self.state_dir_option = state_dir
        self.json_output = json_output

    @property
    def state_dir(self) -> Path:
        from portward.ops.state import state_dir_from

        return state_dir_from(self.state_dir_option)


def run(ctx: click.Context, json_output: bool, action: Callable[[], Any]) -> None:
    """Run an operation, print its Result, exit with its code; errors become plain lines, never tracebacks."""
    from portward.errors import PortwardError

    as_json = json_output or ctx.find_object(Context).json_output  # type: ignore[union-attr]
    try:
        result = action()
    except PortwardError as error:
        if as_json:
            print(json.dumps(error.as_json()))
        for line in error.lines():
            print(line, file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:
        if os.environ.get("PORTWARD_DEBUG"):
            raise
        message = f"internal error: {type(error).__name__}: {error} — rerun with PORTWARD_DEBUG=1 and report it"
        if as_json:
            print(json.dumps({"error": message, "exit_code": 1}))
        print(f"portward: {message}", file=sys.stderr)
        sys.exit(1)
    if as_json:
        print(json.dumps(result.data, indent=None, default=str))
    elif all(isinstance(line, str) for line in result.lines):
        for line in result.lines:
            print(line)
    else:  # rich tables among the lines
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=False)
        for line in result.lines:
            console.print(line, markup=False) if isinstance(line, str) else console.print(line)
    sys.exit(result.exit_code)


def progress_bar(enabled: bool, description: str) -> Any:
    """A rich progress bar on a terminal, nothing otherwise: (context manager, callback(done, total))."""
    import contextlib

    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
        console=Console(stderr=True),
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="portward")
@click.option("--state-dir", metavar="DIR", help="State directory [env PORTWARD_STATE_DIR; default /var/lib/portward].")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document (any command).")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, json_output: bool) -> None:
    """portward: decide who can reach this host, apply it atomically, prove it from outside."""
    ctx.obj = Context(state_dir, json_output)


@cli.command()
@policy_option
@json_option
@click.pass_context
def check(ctx: click.Context, policy: str, json_output: bool) -> None:
    """Validate a policy (and compile it) without touching the kernel."""

    def action() -> Any:
        from portward.dialects.nft import compile_policy
        from portward.policy.toml import load_policy
        from portward.result import Result

        loaded = load_policy(policy)
        ruleset = compile_policy(loaded)
        summary = {
            "inbound": len(loaded.policy.inbound),
            "outbound": len(loaded.policy.outbound),
            "block": len(loaded.block[4]) + len(loaded.block[6]),
            "knock": len(loaded.policy.knock),
            "spa": len(loaded.policy.spa),
            "sets": len(ruleset.sets),
            "rules": len(ruleset.rules),
        }
        lines = [f"warning: {text}" for text in loaded.warnings] + [f"note: {text}" for text in ruleset.notes]
        lines.append(
            f"{policy}: OK — {summary['inbound']} inbound, {summary['outbound']} outbound rules, "
            f"{summary['block']} blocked ranges; compiles to {summary['rules']} rules and {summary['sets']} sets"
        )
        return Result(
            {"ok": True, "policy": policy, "warnings": loaded.warnings, "notes": ruleset.notes, "summary": summary},
            lines,
        )

    run(ctx, json_output, action)


@cli.command()
@policy_option
@json_option
@click.pass_context
def plan(ctx: click.Context, policy: str, json_output: bool) -> None:
    """Show what apply would change in the kernel (empty = in sync)."""
    from portward.ops import engine

    run(ctx, json_output, lambda: engine.plan(policy, ctx.obj.state_dir))


@cli.command()
@policy_option
@click.option("--yes", is_flag=True, help="Do not ask (apply never asks when stdin is not a terminal).")
@click.option(
    "--confirm",
    "confirm_seconds",
    type=click.IntRange(5, 86400),
    metavar="SECONDS",
    help="Roll back by itself after SECONDS unless `portward confirm` runs.",
)
@json_option
@click.pass_context
def apply(ctx: click.Context, policy: str, yes: bool, confirm_seconds: int | None, json_output: bool) -> None:
    """Apply a policy in one kernel transaction."""
    from portward.ops import engine

    as_json = json_output or ctx.obj.json_output
    if not yes and not as_json and sys.stdin.isatty():
        preview_then_ask(ctx, policy)
    run(ctx, json_output, lambda: engine.apply(policy, ctx.obj.state_dir, confirm_seconds=confirm_seconds))


def preview_then_ask(ctx: click.Context, policy: str) -> None:
    from portward.errors import PortwardError
    from portward.ops import engine

    try:
        result = engine.plan(policy, ctx.obj.state_dir)
    except PortwardError:
        return  # apply reports the same error properly
    for line in result.lines:
        print(line)
    if result.data["in_sync"]:
        return
    if not click.confirm("apply these changes?", default=False):
        print("nothing changed", file=sys.stderr)
        sys.exit(2)


@cli.command()
@click.option("--generation", type=int, metavar="G", help="Confirm only if G is the pending generation.")
@json_option
@click.pass_context
def confirm(ctx: click.Context, generation: int | None, json_output: bool) -> None:
    """Keep the pending apply (cancel its rollback timer)."""
    from portward.ops import engine

    run(ctx, json_output, lambda: engine.confirm(ctx.obj.state_dir, generation))


@cli.command()
@json_option
@click.pass_context
def rollback(ctx: click.Context, json_output: bool) -> None:
    """Go back to the ruleset before the last apply."""
    from portward.ops import engine

    run(ctx, json_output, lambda: engine.rollback(ctx.obj.state_dir))


@cli.command()
@json_option
@click.pass_context
def status(ctx: click.Context, json_output: bool) -> None:
    """What is applied, from which policy, what is pending."""
    from portward.ops import engine

    run(ctx, json_output, lambda: engine.status(ctx.obj.state_dir))


@cli.command()
@json_option
@click.pass_context
def restore(ctx: click.Context, json_output: bool) -> None:
    """Re-apply the last confirmed policy from the state dir (boot time)."""
    from portward.ops import engine

    run(ctx, json_output, lambda: engine.restore(ctx.obj.state_dir))


# = dialects.EXPORTERS / IMPORTERS (a test keeps them equal): importing the registry here would cost every
# command's start-up a few milliseconds
EXPORT_FORMATS = ["nft", "iptables", "ip6tables", "firewalld", "ufw", "systemd", "hosts", "sysctl"]


@cli.command()
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True, help="Target dialect.")
@policy_option
@click.option("--root", metavar="DIR", help="Write files under DIR instead of printing.")
@json_option
@click.pass_context
def export(ctx: click.Context, fmt: str, policy: str, root: str | None, json_output: bool) -> None:
    """Render the policy in another dialect."""

    def action() -> Any:
        from portward import dialects
        from portward.ops.state import write_atomic
        from portward.policy.toml import load_policy
        from portward.result import Result

        loaded = load_policy(policy)
        rendered = dialects.writer(fmt)(loaded, policy, Path(root or "/"))
        files, notes = rendered.files, rendered.notes
        note_lines = [f"note: {note}" for note in notes]
        if root:
            for relative, content in files.items():
                target = Path(root) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, content)
            return Result(
                {"format": fmt, "files": [str(Path(root) / name) for name in files], "notes": notes},
                [*note_lines, *(f"wrote {Path(root) / name}" for name in files)],
            )
        data = {"format": fmt, "files": [], "notes": notes}
        if rendered.stream and len(files) == 1:
            # a stream goes straight into a tool (`| iptables-restore`, `| nft -f -`, `| sh`): notes to stderr
            if not json_output:
                for line in note_lines:
                    print(line, file=sys.stderr)
            text = next(iter(files.values()))
            return Result({**data, "text": text}, [text.rstrip("\n")])
        text = "".join(f"# --- /{name}\n{content}" for name, content in files.items())
        return Result({**data, "text": text}, [*note_lines, text.rstrip("\n")])

    run(ctx, json_output, action)


# ------------------------------------------------------------------------------ audit, init, scan, verify


@cli.command()
@click.option("-p", "--policy", metavar="FILE", help="Also say, per socket, whether the live ruleset matches it.")
@click.option("--profile", type=click.Choice(["host", "router"]), help="Sysctl profile [policy's, else host].")
@click.option("--html", "html_file", metavar="FILE", help="Also write a self-contained HTML report.")
@click.option(
    "--verify", "verify_files", multiple=True, metavar="FILE",
    help="`verify --json` output of a vantage point to show in the HTML report (repeat).",
)
@click.option("--root", default="/", show_default=True, metavar="DIR", help="Where to look for config files.")
@json_option
@click.pass_context
def audit(
    ctx: click.Context, policy: str | None, profile: str | None, html_file: str | None, verify_files: tuple[str, ...],
    root: str, json_output: bool,
) -> None:
    """What listens, who can reach it (live ruleset), sysctls, other firewalls, legacy configs."""
    as_json = json_output or ctx.obj.json_output

    def action() -> Any:
        from portward.audit.report import render, run_audit
        from portward.errors import InputError
        from portward.result import Result

        if verify_files and not html_file:
            raise InputError("--verify FILE only adds to the HTML report — add --html FILE")
        vantage = [(name, read_verify_output(name)) for name in verify_files]
        document = run_audit(policy, root=Path(root), profile=profile)
        lines: list[Any] = [] if as_json else render(document)
        if html_file:
            write_html_report(ctx, document, html_file, vantage)
            lines.append(f"wrote {html_file}")
        return Result(document, lines)

    run(ctx, json_output, action)


def read_verify_output(name: str) -> Json:
    """One `portward verify --json` document, refused plainly when the file is something else."""
    from portward.errors import InputError

    try:
        text = Path(name).read_text()
    except OSError as error:
        raise InputError(f"{name}: cannot read it: {error.strerror} — give the file `verify --json` wrote") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        message = f"{name}:{error.lineno}: not JSON ({error.msg}) — give `portward verify --json` output"
        raise InputError(message) from None
    if not isinstance(data, dict) or not {"target", "states", "differences"} <= set(data):
        raise InputError(f"{name}: not `portward verify --json` output (no target/states/differences)")
    return data


def write_html_report(ctx: click.Context, document: Json, html_file: str, vantage: list[tuple[str, Json]]) -> None:
    """The HTML report: the audit document plus the generation portward applied (from the state dir)."""
    from portward.audit.html import ReportContext, write_report
    from portward.errors import PortwardError
    from portward.ops.state import State

    applied: Json | None = None
    state_dir: Path | None = None
    try:
        state_dir = ctx.obj.state_dir
        applied = State(state_dir).load().get("applied")
    except PortwardError:
        pass
    if applied:
        import time

        stamp = applied.get("time")
        applied = {"generation": applied["generation"], "policy": applied.get("policy"),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)) if stamp else None}
    context = ReportContext(__version__, str(state_dir) if state_dir else None, applied, vantage)
    try:
        write_report(document, Path(html_file), context)
    except OSError as error:
        raise PortwardError(f"{html_file}: cannot write the report: {error.strerror} — choose another path") from None


@cli.command()
@click.option("--lan", multiple=True, metavar="CIDR", help="LAN network (repeat) [directly connected private ones].")
@click.option("-o", "--output", metavar="FILE", help="Write the policy here instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@json_option
@click.pass_context
def init(ctx: click.Context, lan: tuple[str, ...], output: str | None, force: bool, json_output: bool) -> None:
    """Propose a policy from what listens: ssh to any, the rest to localhost + LAN."""

    def action() -> Any:
        from portward.audit.init import private_networks, propose
        from portward.audit.report import run_audit
        from portward.errors import InputError
        from portward.kernel import sysctl
        from portward.ops.state import write_atomic
        from portward.policy.addresses import parse_net
        from portward.policy.toml import load_policy_text
        from portward.result import Result

        for cidr in lan:
            try:
                parse_net(cidr)
            except ValueError as error:
                raise InputError(f"--lan {cidr}: {error}") from None
        document = run_audit(None)
        networks = list(lan)
        if not networks:
            from portward.kernel.links import addresses

            networks = private_networks(addresses())
        forwarding = sysctl.read("net.ipv4.ip_forward") == "1" or any(
            manager["name"] == "docker" for manager in document["firewalls"]
        )
        text = propose(document, networks, forwarding=forwarding)
        load_policy_text(text, output or "<init>")  # what we propose must pass `check`
        data: Json = {"policy": text, "lan": networks, "file": output}
        if output:
            target = Path(output)
            if target.exists() and not force:
                raise InputError(f"{output} exists — choose another file or add --force")
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, text)
            return Result(data, [f"wrote {output}: review it, then `portward check -p {output}`"])
        return Result(data, [text.rstrip("\n")])

    run(ctx, json_output, action)


@cli.command()
@click.argument("host")
@click.option(
    "-p", "--ports", "port_spec", default="1-65535", show_default=True, help="nmap syntax: 22,80,1000-2000, - = all."
)
@click.option("--udp", "udp_spec", metavar="PORTS", help="Also scan these UDP ports.")
@click.option("--all", "all_ports", is_flag=True, help="List filtered ports in the JSON too.")
@click.option("-4", "ipv4", is_flag=True, help="Resolve HOST to IPv4.")
@click.option("-6", "ipv6", is_flag=True, help="Resolve HOST to IPv6.")
@json_option
@click.pass_context
def scan(
    ctx: click.Context, host: str, port_spec: str, udp_spec: str | None, all_ports: bool, ipv4: bool, ipv6: bool,
    json_output: bool,
) -> None:
    """TCP connect scan (nmap -sT meaning): open, closed, filtered."""
    as_json = json_output or ctx.obj.json_output

    def action() -> Any:
        from portward.result import Result
        from portward.verify.scan import parse_ports
        from portward.verify.scan import scan as do_scan

        tcp = parse_ports(port_spec)
        udp = parse_ports(udp_spec) if udp_spec else []
        family = 4 if ipv4 else 6 if ipv6 else None
        bar, update = progress_bar(not as_json, f"scanning {host}")
        with bar:
            result = do_scan(host, tcp, udp, family=family, progress=update)
        data = result.as_json(all_ports=all_ports)
        counts = result.counts()
        lines: list[Any] = [
            f"{host} ({result.address}) from {result.source}: {len(tcp) + len(udp)} ports in {result.seconds:.2f}s — "
            + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        ]
        lines += [
            f"{item.port}/{item.proto:<4} {item.state:<13} {item.reason}"
            for item in result.ports
            if item.state != "filtered" or all_ports
        ]
        return Result(data, lines)

    run(ctx, json_output, action)


@cli.command()
@policy_option
@click.option("--target", required=True, metavar="HOST", help="The host the policy protects.")
@click.option("--ports", "port_spec", metavar="PORTS", help="Scan these TCP ports [what the policy names].")
@click.option("--full", is_flag=True, help="Scan all 65,535 TCP ports.")
@click.option("--udp", is_flag=True, help="Also probe the UDP ports the policy names.")
@click.option("--interface", metavar="NAME", help="The target's interface our packets arrive on.")
@json_option
@click.pass_context
def verify(
    ctx: click.Context, policy: str, target: str, port_spec: str | None, full: bool, udp: bool,
    interface: str | None, json_output: bool,
) -> None:
    """Scan TARGET from here and compare with what the policy lets this vantage point reach (exit 3 = differs)."""
    as_json = json_output or ctx.obj.json_output

    def action() -> Any:
        from portward.policy.toml import load_policy
        from portward.result import Result
        from portward.verify.scan import parse_ports
        from portward.verify.verify import verify as do_verify

        loaded = load_policy(policy)
        ports = parse_ports(port_spec) if port_spec else None
        bar, update = progress_bar(not as_json, f"verifying {target}")
        with bar:
            data, lines, code = do_verify(
                loaded, target, ports=ports, udp=udp, full=full, interface=interface, progress=update
            )
        return Result(data, lines, code)

    run(ctx, json_output, action)


IMPORT_SOURCES = ["iptables-save", "knockd", "hosts", "fwknop"]


@cli.command("import")
@click.option("--from", "source", type=click.Choice(IMPORT_SOURCES), required=True, help="What FILE is.")
@click.argument("files", nargs=-1, required=True)
@click.option("-o", "--output", metavar="OUT", help="Write the policy here instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@json_option
@click.pass_context
def import_(ctx: click.Context, source: str, files: tuple[str, ...], output: str | None, force: bool,
            json_output: bool) -> None:
    """Turn another tool's configuration into a policy (iptables-save: v4 and v6 files together;
    hosts: hosts.allow then hosts.deny)."""

    def action() -> Any:
        from portward import dialects
        from portward.errors import InputError
        from portward.ops.state import write_atomic
        from portward.policy.toml import load_policy_text
        from portward.result import Result

        converted = dialects.reader(source)(list(files))
        text = converted.text
        load_policy_text(text, output or "<import>")  # what we write must pass `check`
        data: Json = {"policy": text, "notes": converted.notes, **converted.data, "file": output}
        if output:
            target = Path(output)
            if target.exists() and not force:
                raise InputError(f"{output} exists — choose another file or add --force")
            write_atomic(target, text)
            return Result(data, [*(f"note: {n}" for n in converted.notes), f"wrote {output}"])
        return Result(data, [text.rstrip("\n")])

    run(ctx, json_output, action)


# ------------------------------------------------------------------------------------------ knocking


@cli.command()
@click.argument("host")
@click.argument("ports", nargs=-1, required=True)
@click.option("-d", "--delay", "delay_ms", type=click.IntRange(0), default=0, help="Milliseconds between knocks.")
@click.option("-u", "--udp", is_flag=True, help="Knock with UDP unless a port says :tcp.")
@click.option("-4", "ipv4", is_flag=True, help="Use IPv4.")
@click.option("-6", "ipv6", is_flag=True, help="Use IPv6.")
@click.option("-v", "--verbose", is_flag=True, help="Say each knock.")
@json_option
@click.pass_context
def knock(
    ctx: click.Context, host: str, ports: tuple[str, ...], delay_ms: int, udp: bool, ipv4: bool, ipv6: bool,
    verbose: bool, json_output: bool,
) -> None:
    """Knock client with knockd's `knock` syntax: PORT[:tcp|udp]…"""

    def action() -> Any:
        from portward.daemons.knock_client import knock as send
        from portward.daemons.knock_client import parse_knocks
        from portward.result import Result

        knocks = parse_knocks(list(ports), "udp" if udp else "tcp")
        address, _last = send(host, knocks, delay_ms=delay_ms, family=4 if ipv4 else 6 if ipv6 else None)
        lines = [f"hitting {k.proto} {address}:{k.port}" for k in knocks] if verbose else []
        return Result({"host": host, "address": address, "knocks": [f"{k.port}/{k.proto}" for k in knocks]}, lines)

    run(ctx, json_output, action)


@cli.command()
@click.option("-c", "--config", default="/etc/knockd.conf", show_default=True, metavar="FILE", help="knockd.conf.")
@click.option("-p", "--policy", metavar="FILE", help="A policy: its [[knock]] doors are kernel doors (see below).")
@click.option("-i", "--interface", metavar="IF", help="Listen on this interface only [all].")
@click.option("--json-log", is_flag=True, help="One JSON object per line instead of knockd's log lines.")
@json_option
@click.pass_context
def knockd(
    ctx: click.Context, config: str, policy: str | None, interface: str | None, json_log: bool, json_output: bool
) -> None:
    """knockd-compatible door daemon for knockd.conf commands (all interfaces, v4+v6, NFLOG capture, no shell)."""
    if policy is not None:
        from portward.errors import InputError

        def refuse() -> Any:
            raise InputError(
                f"{policy}: a policy's [[knock]] doors need no daemon — `portward apply -p {policy}` puts them in the "
                "kernel; `portward knockd -c knockd.conf` serves knockd.conf doors that run commands"
            )

        run(ctx, json_output, refuse)
    from portward.daemons.knockd import main as knockd_main

    argv = ["-c", config] + (["-i", interface] if interface else []) + (["--json-log"] if json_log else [])
    sys.exit(knockd_main(argv))


# ------------------------------------------------------------------------------------------ SPA


@cli.command()
@policy_option
@click.option("--json-log", is_flag=True, help="One JSON object per line (source, door, verdict, reason).")
@click.option("--log-file", metavar="FILE", help="Log here instead of stdout.")
@click.pass_context
def spad(ctx: click.Context, policy: str, json_log: bool, log_file: str | None) -> None:
    """SPA daemon for the policy's [[spa]] doors (fwknop's protocol; the kernel expires every grant)."""
    from portward.daemons.spad import main as spad_main

    argv = ["-p", policy, "--state-dir", str(ctx.obj.state_dir)] + (["--json-log"] if json_log else [])
    sys.exit(spad_main(argv + (["--log-file", log_file] if log_file else [])))


@cli.command()
@policy_option
@click.option("--log-file", metavar="FILE", help="Write the events here instead of stdout.")
@click.option("--json", "json_output", is_flag=True, help="One JSON object per line (watch --json in the contract).")
@click.pass_context
def watch(ctx: click.Context, policy: str, log_file: str | None, json_output: bool) -> None:
    """Follow denied attempts (log_denied): one event per line; scan alerts, kernel bans, spawn commands."""
    from portward.daemons.watch import main as watch_main

    as_json = json_output or ctx.obj.json_output
    argv = ["-p", policy] + (["--json"] if as_json else [])
    sys.exit(watch_main(argv + (["--log-file", log_file] if log_file else [])))


@cli.command()
@click.argument("host")
@click.option("--open", "open_", multiple=True, required=True, metavar="PORT/PROTO", help="What to open (repeat).")
@click.option("--allow", metavar="IP", help="Ask access for this address [the one this host uses to reach HOST].")
@click.option("--source", is_flag=True, help="Ask access for the packet's source address (fwknop -s).")
@click.option("-4", "ipv4", is_flag=True, help="Use IPv4.")
@click.option("-6", "ipv6", is_flag=True, help="Use IPv6.")
@click.option("--port", type=click.IntRange(1, 65535), default=62201, show_default=True, help="The server's SPA port.")
@click.option("--key-base64", metavar="K", help="Rijndael key (fwknop's KEY_BASE64).")
@click.option("--hmac-key-base64", metavar="H", help="HMAC-SHA256 key (fwknop's HMAC_KEY_BASE64).")
@click.option("--key-file", metavar="FILE", help="Read the key from FILE (base64, or fwknop --key-gen output).")
@click.option("--hmac-key-file", metavar="FILE", help="Read the HMAC key from FILE.")
@click.option("--timeout", "--fw-timeout", "timeout", type=click.IntRange(1, 86400),
              help="Ask for this many seconds (the door caps it at max_open_for).")
@json_option
@click.pass_context
def spa(
    ctx: click.Context, host: str, open_: tuple[str, ...], allow: str | None, source: bool, ipv4: bool, ipv6: bool,
    port: int, key_base64: str | None, hmac_key_base64: str | None, key_file: str | None, hmac_key_file: str | None,
    timeout: int | None, json_output: bool,
) -> None:
    """SPA client: one fwknop-compatible packet asking HOST to open ports for one address (v4 and v6)."""

    def action() -> Any:
        from portward.daemons.fko import STOCK_FWKNOPD_MAX_PAYLOAD
        from portward.daemons.spa_client import load_key, parse_access, send
        from portward.errors import InputError
        from portward.result import Result

        if allow and source:
            raise InputError("give --allow IP or --source, not both")
        key = load_key(key_base64, key_file, "KEY_BASE64", missing="no key: give --key-base64 K or --key-file F")
        hmac_key = load_key(hmac_key_base64, hmac_key_file, "HMAC_KEY_BASE64",
                            missing="no HMAC key: give --hmac-key-base64 H or --hmac-key-file F")
        sent = send(host, parse_access(list(open_)), key, hmac_key, allow=allow, source=source,
                    family=4 if ipv4 else 6 if ipv6 else None, port=port, timeout=timeout)
        access = [f"{port_}/{proto}" for proto, port_ in sent.access]
        data = {"host": host, "address": sent.address, "port": sent.port, "allow": sent.allow, "open": access,
                "timeout": sent.timeout, "bytes": sent.size}
        lines = [f"sent SPA packet to {sent.address}:{sent.port}/udp: open {', '.join(access)} for {sent.allow}"
                 + (f" ({sent.timeout} s)" if sent.timeout else "")]
        if sent.size > STOCK_FWKNOPD_MAX_PAYLOAD:  # fwknopd takes longer payloads for GnuPG ones and drops them
            lines.append(f"note: {sent.size} bytes — a stock fwknopd ignores SPA packets over "
                         f"{STOCK_FWKNOPD_MAX_PAYLOAD} bytes; ask for fewer ports per packet if it is one")
        return Result(data, lines)

    run(ctx, json_output, action)


def main() -> None:
    cli(prog_name="portward")


if __name__ == "__main__":
    main()
