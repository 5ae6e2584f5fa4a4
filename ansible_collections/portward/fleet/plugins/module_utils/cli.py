# -*- coding: utf-8 -*-
# Copyright: portward contributors
# MIT License (see LICENSE in the portward repository)
"""Run the ``portward`` executable and read its one JSON document.

The modules never import portward: the host's system Python runs them, and portward lives in its own
environment. Everything goes through the command line contract (``--json``, exit codes 0/1/2/3).
"""

from __future__ import annotations

import json

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INPUT = 2
EXIT_DIFFERS = 3


def portward_path(module, executable):
    """An absolute path to the portward executable; a bare name is looked up on PATH (and sbin dirs)."""
    if "/" in executable:
        return executable
    return module.get_bin_path(executable, required=True)


def run_portward(module, executable, args, ok_codes=(EXIT_OK,)):
    """Run ``portward --json ARGS`` and return (exit code, parsed JSON document, stderr).

    Fails the module with portward's own message when the exit code is not in ok_codes: portward's
    stderr already says ``FILE:LINE: key: what is wrong — what to do``.
    """
    argv = [portward_path(module, executable), "--json"] + list(args)
    rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C.UTF-8"})
    document = parse_document(out)
    if rc not in ok_codes:
        message = err.strip() or (document or {}).get("error") or out.strip() or "no output"
        module.fail_json(
            msg="portward %s failed (exit %d): %s" % (args[0], rc, message),
            rc=rc,
            cmd=argv,
            stdout=out,
            stderr=err,
            portward=document,
        )
    return rc, document, err


def parse_document(text):
    """The JSON document portward printed, or None when stdout is empty or not JSON."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
