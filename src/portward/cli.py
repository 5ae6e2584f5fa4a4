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
    else:
        for line in result.lines:
            print(line)
    sys.exit(result.exit_code)


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
        from portward.ops.engine import Result
        from portward.policy.toml import load_policy

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


EXPORT_FORMATS = ["nft"]


@cli.command()
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True, help="Target dialect.")
@policy_option
@click.option("--root", metavar="DIR", help="Write files under DIR instead of printing.")
@json_option
@click.pass_context
def export(ctx: click.Context, fmt: str, policy: str, root: str | None, json_output: bool) -> None:
    """Render the policy in another dialect."""

    def action() -> Any:
        from portward.dialects.nft import compile_policy, render_text
        from portward.ops.engine import Result
        from portward.ops.state import write_atomic
        from portward.policy.toml import load_policy

        loaded = load_policy(policy)
        text = render_text(compile_policy(loaded))
        files = {"etc/portward/portward.nft": text}
        if root:
            for relative, content in files.items():
                target = Path(root) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, content)
            return Result(
                {"format": fmt, "files": [str(Path(root) / name) for name in files]},
                [f"wrote {Path(root) / name}" for name in files],
            )
        return Result({"format": fmt, "files": [], "text": text}, [text.rstrip("\n")])

    run(ctx, json_output, action)


def main() -> None:
    cli(prog_name="portward")


if __name__ == "__main__":
    main()
