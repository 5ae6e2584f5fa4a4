"""plan, apply, confirm, rollback, restore, status: the policy's way into the kernel.

Every change is one kernel transaction. The state dir records each generation so that a detached
timer can roll an unconfirmed apply back by itself, and `restore` can re-apply at boot without the
policy file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from portward.dialects.nft import FAMILY, TABLE, Ruleset, compile_policy
from portward.errors import InputError, PortwardError
from portward.kernel.nft import Nft, ruleset_from_listing
from portward.ops.plan import Plan, diff
from portward.ops.state import State, write_atomic
from portward.policy.sysctls import wanted as sysctl_wanted
from portward.policy.toml import LoadedPolicy, load_policy
from portward.result import Result

Json = dict[str, Any]


# ------------------------------------------------------------------------------------- live state


def kernel_generation() -> int | None:
    try:
        from portward.kernel.nfnetlink import get_generation

        return get_generation()
    except (ImportError, OSError):
        return None


def trusted_snapshot(state: State) -> tuple[int, str] | None:
    """The snapshot that describes the live table exactly, when nothing was committed since we wrote it
    (same kernel generation id): much cheaper than listing 100k set elements back."""
    recorded = state.data.get("kernel")
    if (
        recorded
        and recorded.get("genid") is not None
        and recorded.get("snapshot")
        and recorded["genid"] == kernel_generation()
    ):
        generation, which = recorded["snapshot"]
        return int(generation), str(which)
    return None


def read_live(nft: Nft, state: State) -> tuple[Ruleset | None, tuple[int, str] | None]:
    """The live table, and the on-disk snapshot it equals when that snapshot can be trusted."""
    snapshot = trusted_snapshot(state)
    if snapshot is not None:
        try:
            return state.read_ruleset(*snapshot), snapshot
        except PortwardError:
            snapshot = None
    listing = nft.list_table()
    return (None if listing is None else ruleset_from_listing(listing)), snapshot


def _record_live(state: State, snapshot: tuple[int, str] | None) -> None:
    state.data["kernel"] = {"genid": kernel_generation(), "snapshot": list(snapshot) if snapshot else None}


def execute(nft: Nft, plan: Plan) -> None:
    """Carry a plan out as one transaction."""
    if plan.mode in ("create", "structure", "delete"):
        nft.run(plan.commands)
    elif plan.mode == "elements":
        from portward.kernel.nfnetlink import apply_element_batch, interval_ops

        changes = []
        for element_diff in plan.element_diffs:
            width = 4 if element_diff.family == 4 else 16
            ops = [op for a, b in element_diff.delete for op in interval_ops("delete", a, b, width)]
            ops += [op for a, b in element_diff.add for op in interval_ops("add", a, b, width)]
            changes.append((element_diff.set_name, ops))
        try:
            apply_element_batch(FAMILY, TABLE, changes)
        except OSError as error:
            raise PortwardError(f"the kernel refused the set update: {error} — nothing was changed") from None


def converge(nft: Nft, state: State, target: Ruleset | None, snapshot: tuple[int, str]) -> Plan:
    """Make the live table equal a stored snapshot (rollback, restore) and record that it does."""
    live, _snapshot = read_live(nft, state)
    the_plan = diff(live, target)
    execute(nft, the_plan)
    _record_live(state, snapshot)
    return the_plan


# ------------------------------------------------------------------------------------ lockout guard


def ssh_client() -> tuple[str, int] | None:
    """(client address, server port) of the ssh session we run in, if any."""
    connection = os.environ.get("SSH_CONNECTION", "").split()
    if len(connection) >= 4 and connection[3].isdigit():
        return connection[0], int(connection[3])
    client = os.environ.get("SSH_CLIENT", "").split()
    if len(client) >= 3 and client[2].isdigit():
        return client[0], int(client[2])
    return None


def route_interface(address: str) -> str | None:
    try:
        output = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True, timeout=5)
        routes = json.loads(output.stdout or "[]")
        return str(routes[0]["dev"]) if routes else None
    except (OSError, ValueError, KeyError, IndexError, subprocess.SubprocessError):
        return None


def lockout_problem(loaded: LoadedPolicy) -> str | None:
    from portward.policy.evaluate import inbound_decision

    client = ssh_client()
    if client is None:
        return None
    address, port = client
    address = address.removeprefix("::ffff:") if address.count(".") == 3 else address
    decision = inbound_decision(loaded, address, port, "tcp", route_interface(address))
    if decision.admitted:
        return None
    return (
        f"this policy would lock out your ssh session ({address} → port {port}/tcp): {decision.reason} — "
        f"add an [[inbound]] rule that admits {address} to {port}/tcp, or apply with --confirm SECONDS so "
        "it rolls back unless you confirm from a new session"
    )


# ------------------------------------------------------------------------------------------ plan


def plan(policy_path: str, state_dir: Path) -> Result:
    loaded = load_policy(policy_path)
    wanted = compile_policy(loaded)
    nft = Nft()
    state = State(state_dir)
    state.load()
    live, _snapshot = read_live(nft, state)
    result = diff(live, wanted)
    sysctl_changes, missing = sysctl_plan(loaded)
    changes = result.changes + sysctl_changes
    warnings = loaded.warnings + missing
    lines = [f"warning: {text}" for text in warnings] + [f"note: {text}" for text in wanted.notes]
    lines += _change_lines(changes) or ["in sync: nothing to change"]
    return Result({"changes": changes, "in_sync": not changes, "warnings": warnings}, lines)


# ---------------------------------------------------------------------------------------- sysctl


def sysctl_plan(loaded: LoadedPolicy) -> tuple[list[Json], list[str]]:
    """Sysctl changes the policy's [sysctl] asks for (none when the policy has no [sysctl] table), and
    warnings for keys this kernel does not have (skipped)."""
    if "sysctl" not in loaded.policy.model_fields_set:
        return [], []
    from portward.kernel import sysctl

    values = sysctl_wanted(loaded.policy.sysctl)
    current = sysctl.read_many(list(values))
    changes = [
        {"object": "sysctl", "action": "replace", "key": key, "from": current[key], "to": value}
        for key, value in values.items()
        if current[key] is not None and current[key] != value
    ]
    missing = [f"{key} does not exist on this kernel: skipped" for key, value in current.items() if value is None]
    return changes, missing


def _write_sysctls(state: State, generation: int, changes: list[Json], pending: Json | None) -> None:
    """Set the values and record what they were, so a rollback can put them back."""
    from portward.kernel import sysctl

    values = {change["key"]: change["to"] for change in changes if change["object"] == "sysctl"}
    before = {key: value for key, value in sysctl.write_many(values).items() if value is not None}
    if pending:  # a superseded unconfirmed apply: rolling back returns to what was there before *it*
        before.update(_sysctl_record(state, int(pending["generation"])).get("before", {}))
    record = {"wanted": values, "before": before}
    write_atomic(state.gen_dir(generation) / "sysctl.json", json.dumps(record))


def _sysctl_record(state: State, generation: int) -> Json:
    try:
        return dict(json.loads((state.gen_dir(generation) / "sysctl.json").read_text()))
    except (OSError, ValueError):
        return {}


def _restore_sysctls(values: dict[str, str]) -> list[Json]:
    from portward.kernel import sysctl

    before = sysctl.write_many(values)
    return [
        {"object": "sysctl", "action": "replace", "key": key, "from": before[key], "to": value}
        for key, value in values.items()
        if before[key] != value
    ]


def _change_lines(changes: list[Json]) -> list[str]:
    marks = {"add": "+", "delete": "-", "replace": "~"}
    lines = []
    for change in changes:
        mark = marks.get(change["action"], "?")
        kind = change["object"]
        if kind == "rule":
            lines.append(f"{mark} rule {change['chain']}: {change['rule']}")
        elif kind == "element":
            shown = ", ".join(change["elements"][:5]) + (" …" if change["count"] > 5 else "")
            lines.append(f"{mark} {change['count']} element(s) in set {change['set']}: {shown}")
        elif kind == "set":
            count = f" ({change['count']} elements)" if "count" in change else ""
            lines.append(f"{mark} set {change['name']} {change['type']}{count}")
        elif kind == "chain":
            lines.append(f"{mark} chain {change['name']} (hook {change.get('hook')}, policy {change.get('policy')})")
        elif kind == "sysctl":
            lines.append(f"{mark} sysctl {change['key']} = {change['to']} (was {change['from']})")
        else:
            lines.append(f"{mark} {kind} {change.get('name', '')}")
    return lines


# ----------------------------------------------------------------------------------------- apply


def apply(policy_path: str, state_dir: Path, *, confirm_seconds: int | None = None) -> Result:
    loaded = load_policy(policy_path)
    wanted = compile_policy(loaded)
    if confirm_seconds is None:
        problem = lockout_problem(loaded)
        if problem:
            raise InputError(problem)
    nft = Nft()
    state = State(state_dir)
    with state.locked():
        live, snapshot = read_live(nft, state)
        the_plan = diff(live, wanted)
        sysctl_changes, missing = sysctl_plan(loaded)
        pending = state.data.get("pending")
        before: Ruleset | tuple[int, str] | None
        if pending:
            # an unconfirmed apply is superseded: rolling back this one returns to what was confirmed
            before = (int(pending["generation"]), "before")
            before_generation = pending.get("before_generation")
        else:
            before = snapshot or live
            before_generation = (state.data.get("applied") or {}).get("generation")
        generation = state.new_generation()
        now = time.time()
        state.write_generation(
            generation,
            loaded.text,
            os.path.abspath(policy_path),
            wanted,
            before,
            {"time": now, "changes": len(the_plan.changes) + len(sysctl_changes)},
        )
        state.save()  # the generation number is spent even if the kernel refuses
        if "sysctl" in loaded.policy.model_fields_set:
            from portward.dialects.sysctl import render

            _write_sysctls(state, generation, sysctl_changes, pending)
            # the same values as a sysctl.d drop-in, for hosts that would rather load them with `sysctl --system`
            write_atomic(state.root / "sysctl.conf", render(loaded.policy, os.path.abspath(policy_path)))
        try:
            execute(nft, the_plan)
        except PortwardError:
            _restore_sysctls(_sysctl_record(state, generation).get("before", {}))
            raise
        _record_live(state, (generation, "ruleset"))
        applied = {
            "generation": generation,
            "policy": os.path.abspath(policy_path),
            "time": now,
            "before_generation": before_generation,
        }
        state.data["applied"] = applied
        changes = the_plan.changes + sysctl_changes
        lines = [f"warning: {text}" for text in loaded.warnings + missing] + _change_lines(changes)
        data: Json = {"generation": generation, "changes": changes}
        if confirm_seconds is not None:
            deadline = now + confirm_seconds
            state.data["pending"] = {**applied, "deadline": deadline, "timer_pid": None}
            state.save()
            pid = spawn_timer(state_dir, generation, deadline)
            state.data["pending"]["timer_pid"] = pid
            data["pending"] = {"generation": generation, "deadline": _iso(deadline), "confirm_within": confirm_seconds}
            lines.append(
                f"applied generation {generation}; it rolls back in {confirm_seconds}s unless you run "
                f"`portward confirm --generation {generation}`"
            )
        else:
            _kill_timer(state.data.get("pending"))
            state.data["pending"] = None
            state.data["confirmed"] = {**applied}
            lines.append(f"applied generation {generation}" + ("" if changes else " (no changes)"))
        state.save()
        state.prune()
    return Result(data, lines)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def spawn_timer(state_dir: Path, generation: int, deadline: float) -> int:
    """A detached process (own session: no SIGHUP when the terminal goes) that rolls back at deadline.
    Works without systemd as PID 1."""
    log = open(state_dir / "timer.log", "a")  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "portward.ops.timer",
                "--state-dir",
                str(state_dir),
                "--generation",
                str(generation),
                "--deadline",
                repr(deadline),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
    finally:
        log.close()
    return process.pid


def _kill_timer(pending: Json | None) -> None:
    if not pending or not pending.get("timer_pid"):
        return
    pid = int(pending["timer_pid"])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"portward.ops.timer" in cmdline:  # never signal a recycled pid
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


# --------------------------------------------------------------------------- confirm / rollback


def confirm(state_dir: Path, generation: int | None) -> Result:
    state = State(state_dir)
    with state.locked():
        pending = state.data.get("pending")
        if not pending:
            if generation is not None:
                raise InputError(
                    f"generation {generation} is not pending (it was confirmed, rolled back or superseded) — "
                    "run `portward status` to see what is applied"
                )
            return Result({"confirmed": None, "pending": None}, ["nothing is pending"])
        if generation is not None and int(pending["generation"]) != generation:
            raise InputError(
                f"generation {generation} is not pending; generation {pending['generation']} is — "
                f"confirm that one with `portward confirm --generation {pending['generation']}`"
            )
        _kill_timer(pending)
        state.data["pending"] = None
        state.data["confirmed"] = {key: pending[key] for key in ("generation", "policy", "time")}
        state.save()
        return Result({"confirmed": pending["generation"]}, [f"confirmed generation {pending['generation']}"])


def rollback(state_dir: Path, *, only_generation: int | None = None, reason: str = "rollback") -> Result:
    """Return to the table as it was before the last apply (its `before` snapshot)."""
    state = State(state_dir)
    nft = Nft()
    with state.locked():
        applied = state.data.get("applied")
        pending = state.data.get("pending")
        if only_generation is not None and (not pending or int(pending["generation"]) != only_generation):
            return Result({"rolled_back": None}, [f"generation {only_generation} is no longer pending: nothing to do"])
        if not applied:
            raise InputError("nothing has been applied from this state dir — nothing to roll back")
        generation = int(applied["generation"])
        target = state.read_ruleset(generation, "before")
        the_plan = converge(nft, state, target, (generation, "before"))
        changes = the_plan.changes + _restore_sysctls(_sysctl_record(state, generation).get("before", {}))
        if pending:
            if only_generation is None:
                _kill_timer(pending)
            state.data["pending"] = None
        previous = applied.get("before_generation")
        state.data["applied"] = None if previous is None else state.applied_entry(int(previous))
        state.data.setdefault("events", []).append({"time": time.time(), "event": reason, "generation": generation})
        state.data["events"] = state.data["events"][-50:]
        state.save()
        return Result(
            {"rolled_back": generation, "changes": changes},
            [f"rolled back generation {generation}", *_change_lines(changes)],
        )


def restore(state_dir: Path) -> Result:
    """Re-apply the last confirmed generation (boot time)."""
    state = State(state_dir)
    nft = Nft()
    with state.locked():
        confirmed = state.data.get("confirmed")
        if not confirmed:
            return Result({"generation": None, "changes": []}, ["nothing confirmed to restore"])
        generation = int(confirmed["generation"])
        wanted = state.read_ruleset(generation)
        the_plan = converge(nft, state, wanted, (generation, "ruleset"))
        changes = the_plan.changes + _restore_sysctls(_sysctl_record(state, generation).get("wanted", {}))
        state.data["applied"] = {**confirmed}
        state.data["pending"] = None
        state.save()
        return Result(
            {"generation": generation, "changes": changes},
            [f"restored generation {generation}", *_change_lines(changes)],
        )


# ----------------------------------------------------------------------------------------- status


def status(state_dir: Path) -> Result:
    state = State(state_dir)
    state.load()
    applied = state.data.get("applied")
    pending = state.data.get("pending")
    confirmed = state.data.get("confirmed")
    in_kernel: bool | None
    grants: list[Json] = []
    bans: list[Json] = []
    try:
        nft = Nft()
        in_kernel = nft.table_exists()
        if in_kernel and applied:
            ruleset = state.read_ruleset(int(applied["generation"]))
            grants = door_grants(nft, ruleset)
            bans = watch_bans(nft, ruleset)
    except PortwardError:
        in_kernel = None
    data: Json = {
        "applied": _public(applied),
        "confirmed": _public(confirmed),
        "pending": None,
        "table_present": in_kernel,
        "grants": grants,
        "bans": bans,
    }
    lines = []
    if applied:
        lines.append(
            f"applied: generation {applied['generation']} from {applied.get('policy')} at {_iso(applied['time'])}"
        )
    else:
        lines.append("applied: nothing")
    if pending:
        left = max(0.0, float(pending["deadline"]) - time.time())
        data["pending"] = {
            "generation": pending["generation"],
            "deadline": _iso(pending["deadline"]),
            "seconds_left": round(left, 1),
        }
        lines.append(f"pending: generation {pending['generation']} rolls back in {left:.0f}s unless confirmed")
    if confirmed:
        lines.append(f"confirmed: generation {confirmed['generation']}")
    for grant in grants:
        what = f" {grant['access']}" if grant.get("access") else ""
        lines.append(
            f"open: {grant['kind']} door {grant['door']!r}{what} for {grant['source']} ({grant['expires_in']}s left)"
        )
    for ban in bans:
        lines.append(f"banned: {ban['source']} (scan) for {ban['expires_in']}s more")
    if in_kernel is False and applied:
        lines.append(f"warning: table {FAMILY} {TABLE} is not in the kernel — run `portward restore`")
    return Result(data, lines)


GRANT_SET = re.compile(r"^(knock|spa)_(.+)_open_v[46]$")


def door_grants(nft: Nft, ruleset: Ruleset | None) -> list[Json]:
    """Sources a knock or SPA door has let in, with the seconds the kernel still keeps them.

    Only the door sets are listed (by the names the applied ruleset gives), never a 100k-element block set."""
    if ruleset is None:
        return []
    grants: list[Json] = []
    for name in sorted(ruleset.sets):
        match = GRANT_SET.match(name)
        if not match:
            continue
        for value, body, _set in _set_elements(nft, name):
            grant: Json = {"kind": match.group(1), "door": match.group(2), "source": value,
                           "expires_in": body.get("expires")}
            if isinstance(value, dict) and "concat" in value:  # SPA: source . proto . port
                source, proto, port = value["concat"]
                grant.update(source=source, access=f"{port}/{proto}")
            grants.append(grant)
    return grants


def _set_elements(nft: Nft, name: str) -> list[tuple[Any, Json, Json]]:
    """(value, element attributes such as `expires`, the set) for each element of a set of table inet portward;
    none when the set is not there."""
    try:
        listing = nft.run([{"list": {"set": {"family": FAMILY, "table": TABLE, "name": name}}}])
    except PortwardError:
        return []
    found = []
    for item in listing:
        listed = item.get("set", {})
        for element in listed.get("elem", []):
            body = element.get("elem", {}) if isinstance(element, dict) else {}
            found.append((body.get("val", element), body, listed))
    return found


def watch_bans(nft: Nft, ruleset: Ruleset | None) -> list[Json]:
    """Sources the kernel banned for scanning (`[watch]`), with the seconds each ban has left, soonest first."""
    from portward.dialects.nft import watch_set

    bans: list[Json] = []
    for family in (4, 6):
        name = watch_set("ban", family)
        if ruleset is None or name not in ruleset.sets:
            continue
        for value, body, listed in _set_elements(nft, name):
            bans.append({"source": value, "family": family, "expires_in": body.get("expires"),
                         "timeout": body.get("timeout", listed.get("timeout"))})
    return sorted(bans, key=lambda ban: (ban["expires_in"] is None, ban["expires_in"] or 0))


def _public(entry: Json | None) -> Json | None:
    if not entry:
        return None
    return {"generation": entry["generation"], "policy": entry.get("policy"), "time": _iso(entry["time"])}
