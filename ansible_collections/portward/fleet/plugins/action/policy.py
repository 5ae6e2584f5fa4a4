# -*- coding: utf-8 -*-
# Copyright: portward contributors
# MIT License (see LICENSE in the portward repository)
"""Action plugin for portward.fleet.policy: apply over one connection, confirm over a fresh one.

Why a fresh one: ssh's ControlPersist master keeps the old TCP session open, and the host always admits
established connections, so confirming over it would prove nothing. Resetting the connection makes the
confirmation need a brand new TCP handshake and login — exactly what the new policy has to allow.
"""

from __future__ import annotations

import time

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

MODULE = "portward.fleet.policy"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("src", "content", "dest", "confirm_timeout", "executable"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        try:
            args = self._module_args(args)
        except AnsibleError as error:
            result.update(failed=True, msg=to_text(error))
            return result
        started = time.monotonic()
        applied = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        result.update(applied)
        result["seconds"] = {"apply": round(time.monotonic() - started, 3)}
        generation = applied.get("generation")
        if applied.get("failed") or self._play_context.check_mode or not applied.get("changed") or generation is None:
            return result
        started = time.monotonic()
        result.update(self._confirm_fresh(args, int(generation), task_vars))
        result["seconds"]["confirm"] = round(time.monotonic() - started, 3)
        return result

    def _module_args(self, args):
        """Read src here, on the controller (vault-encrypted files too), and hand the module its text."""
        src = args.pop("src", None)
        if src is None:
            return args
        if args.get("content") is not None:
            raise AnsibleError("src and content are mutually exclusive")
        path = self._loader.get_real_file(self._find_needle("files", src), decrypt=True)
        try:
            with open(path, "rb") as handle:
                args["content"] = to_text(handle.read(), errors="surrogate_or_strict")
        finally:
            self._loader.cleanup_tmp_file(path)
        return args

    def _confirm_fresh(self, args, generation, task_vars):
        """Confirm the generation over a new connection; a host we cannot reach again fails, rolling back.

        The confirmation is one plain command (``portward --json confirm --generation G``), not a second module:
        it needs no module payload, so the second round trip costs a login and one portward run.
        """
        timeout = int(args.get("confirm_timeout", 30))
        executable = args.get("executable") or "portward"
        command = " ".join(self._connection._shell.quote(part)
                           for part in (executable, "--json", "confirm", "--generation", str(generation)))
        try:
            self._connection.reset()
            answer = self._low_level_execute_command(command, sudoable=True)
        except AnsibleError as error:  # AnsibleConnectionFailure and friends: no fresh connection
            # nothing more can be done on this host over this connection: don't try to clean a remote tmp dir
            self._connection._shell.tmpdir = None
            return self._rolling_back(generation, timeout, to_text(error))
        rc = answer.get("rc")
        if rc == 0:
            return {"confirmed": True}
        if rc == 2:  # portward: generation G is no longer pending
            return {
                "failed": True,
                "confirmed": False,
                "rolling_back": True,
                "msg": "generation %d is no longer pending on this host: it rolled back by itself before the "
                "confirmation arrived (or a newer apply superseded it) — the host runs its previous ruleset; %s"
                % (generation, to_text(answer.get("stderr", "")).strip()),
            }
        return {
            "failed": True,
            "confirmed": False,
            "rolling_back": True,
            "msg": "could not confirm generation %d (exit %s: %s); unless confirmed, the host rolls back by itself "
            "within %d s of the apply" % (generation, rc, to_text(answer.get("stderr", "")).strip(), timeout),
        }

    def _rolling_back(self, generation, timeout, reason):
        host = self._task_host()
        return {
            "failed": True,
            "confirmed": False,
            "rolling_back": True,
            "msg": "%s: applied generation %d but could not reconnect over a fresh connection to confirm it "
            "(%s); the host is rolling back to its previous ruleset by itself within %d s of the apply — "
            "the policy would have locked the controller out" % (host, generation, reason.strip(), timeout),
        }

    def _task_host(self):
        try:
            return to_text(self._connection.get_option("host"))
        except (AnsibleError, KeyError, AttributeError):
            return to_text(self._play_context.remote_addr)
