#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: portward contributors
# MIT License (see LICENSE in the portward repository)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: policy
short_description: Apply a portward policy without ever locking the controller out
version_added: "0.1.0"
description:
  - Copies a portward policy to the host and applies it with C(portward apply --confirm), so the host rolls back
    by itself unless a B(fresh) connection confirms exactly that generation.
  - The action plugin of the same name reads O(src) on the controller, runs this module to plan and apply, resets
    the connection (an ssh ControlPersist master would otherwise keep the old, established session alive), and
    runs this module again over the new connection with O(confirm_generation).
  - When the controller cannot reconnect (the policy cut it off), the task fails for that host only, saying the
    host is rolling back; other hosts go on. The host returns to its previous ruleset within O(confirm_timeout)
    seconds of the apply.
  - In check mode it runs C(portward plan) and changes nothing; V(changed) is true exactly when the plan is not
    empty. With C(--diff) it shows the policy file before and after.
  - The module runs with the host's own Python and calls the C(portward) executable; it never imports portward.
author:
  - portward contributors (@portward)
options:
  src:
    description:
      - A policy file on the controller (searched like M(ansible.builtin.copy) searches C(files/)).
      - Mutually exclusive with O(content). The action plugin turns it into O(content).
    type: path
  content:
    description:
      - The policy text (TOML). Mutually exclusive with O(src).
    type: str
  dest:
    description:
      - Where the policy is written on the host (mode 0600, since a policy may hold SPA keys). Relative paths in the
        policy resolve against this file's folder.
    type: path
    default: /etc/portward/policy.toml
  confirm_timeout:
    description:
      - Seconds the host waits for the confirmation before it rolls back by itself (C(apply --confirm)).
      - Keep it above the connection timeout, so a controller that can reconnect has time to confirm.
    type: int
    default: 30
  executable:
    description:
      - The portward executable on the host, a name looked up on E(PATH) or an absolute path.
    type: str
    default: portward
  confirm_generation:
    description:
      - Internal, set by the action plugin on its second round trip. Confirm this pending generation
        (C(portward confirm --generation)) instead of planning and applying.
      - Confirming fails when the generation is no longer pending (it was rolled back or superseded).
    type: int
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
    details: The action plugin reads O(src) on the controller and confirms over a fresh connection.
requirements:
  - portward on the host (see the role M(portward.fleet.install)), run as root.
notes:
  - V(changed) follows the plan, not the file. When only the file differs (a comment, say), it is rewritten and
    RV(dest_updated) is true while V(changed) stays false.
  - When the host rolls back, O(dest) still holds the new policy; the next run plans the same changes again.
seealso:
  - module: portward.fleet.verify
  - module: portward.fleet.audit
"""

EXAMPLES = r"""
- name: Roll the policy out, one canary host first (see playbooks/canary.yml)
  portward.fleet.policy:
    src: files/policy.toml
    confirm_timeout: 30

- name: Inline policy, portward from a virtual environment
  portward.fleet.policy:
    content: |
      [[inbound]]
      name = "ssh"
      ports = ["22/tcp"]
      from = ["any"]
    dest: /etc/portward/policy.toml
    executable: /opt/portward/bin/portward

- name: What would change (check mode runs portward plan)
  portward.fleet.policy:
    src: files/policy.toml
  check_mode: true
  diff: true
  register: planned
"""

RETURN = r"""
changes:
  description: The changes of the plan (check mode) or of the apply, as C(portward plan --json) lists them.
  returned: success
  type: list
  elements: dict
  sample: [{"action": "add", "object": "rule", "chain": "input", "rule": "tcp dport 22 accept"}]
generation:
  description: The generation this run applied and confirmed; null when nothing was applied.
  returned: success
  type: int
  sample: 4
confirmed:
  description: Whether the generation was confirmed over a fresh connection.
  returned: when a generation was applied
  type: bool
  sample: true
pending:
  description: The pending confirmation C(apply --confirm --json) reported (generation, deadline, confirm_within).
  returned: when a generation was applied
  type: dict
  sample: {"generation": 4, "deadline": "2026-11-23T07:30:00Z", "confirm_within": 30}
rolling_back:
  description: True when the host could not be reached again to confirm and rolls back by itself.
  returned: failure after an apply
  type: bool
  sample: true
seconds:
  description: Wall time of the first round trip (V(apply), plan and apply) and of the second (V(confirm)).
  returned: always
  type: dict
  sample: {"apply": 1.62, "confirm": 0.71}
dest:
  description: Where the policy was written.
  returned: always
  type: str
  sample: /etc/portward/policy.toml
dest_updated:
  description: Whether the policy file on the host was (or, in check mode, would be) rewritten.
  returned: success
  type: bool
  sample: false
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.portward.fleet.plugins.module_utils.cli import EXIT_INPUT, EXIT_OK, run_portward


def read_text(path):
    """The file's text, or None when it does not exist yet."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def stage(content, dest, check_mode):
    """Write the policy to a temporary file beside dest (relative paths in it resolve against dest's folder).

    In check mode, when dest's folder does not exist yet, the file goes to the system temp dir instead:
    check mode creates nothing that outlives the run.
    """
    folder = os.path.dirname(dest) or "."
    if not os.path.isdir(folder):
        if check_mode:
            folder = None
        else:
            os.makedirs(folder, mode=0o755)
    descriptor, path = tempfile.mkstemp(prefix=".portward-", suffix=".toml", dir=folder)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(path, 0o600)
    return path


def install(staged, dest):
    """Put the staged file in place atomically (same folder, so rename never crosses filesystems)."""
    os.replace(staged, dest)


def restore_file(dest, before):
    """Put the previous policy file back after a refused apply, so dest keeps describing the kernel."""
    if before is None:
        os.unlink(dest)
        return
    with open(dest, "w", encoding="utf-8") as handle:
        handle.write(before)


def file_diff(dest, before, after):
    return {
        "before": before or "",
        "after": after,
        "before_header": "%s (before)" % dest,
        "after_header": "%s (after)" % dest,
    }


def confirm(module, params):
    """Second round trip, over the fresh connection: keep exactly the generation the first one applied."""
    generation = params["confirm_generation"]
    rc, document, err = run_portward(
        module, params["executable"], ["confirm", "--generation", str(generation)], ok_codes=(EXIT_OK, EXIT_INPUT)
    )
    if rc == EXIT_INPUT:
        module.fail_json(
            msg="generation %d is no longer pending on this host: it rolled back by itself before the confirmation "
            "arrived (or a newer apply superseded it) — the host runs its previous ruleset; %s"
            % (generation, err.strip()),
            generation=generation,
            confirmed=False,
            rolling_back=True,
        )
    module.exit_json(changed=True, generation=generation, confirmed=True, portward=document)


def plan_and_apply(module, params):
    """First round trip: stage the policy; plan it (check mode, or a file that did not change) or apply it.

    A real run whose file changed goes straight to ``apply --confirm``: its JSON lists the same changes a plan
    would, and one portward run less matters on a fleet. When that apply changed nothing in the kernel it is
    confirmed at once, over this connection: an unchanged ruleset cannot have cut anyone off.
    """
    content = params["content"]
    dest = params["dest"]
    before = read_text(dest)
    result = {"dest": dest, "dest_updated": before != content, "generation": None, "changes": []}
    if module._diff and before != content:
        result["diff"] = file_diff(dest, before, content)
    staged = stage(content, dest, module.check_mode)
    try:
        if module.check_mode or before == content:
            changes = plan(module, params, staged)
            result["changes"] = changes
            if module.check_mode or not changes:
                module.exit_json(changed=bool(changes), **result)
        else:
            install(staged, dest)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    applied = apply(module, params, before, result)
    result.update(generation=applied["generation"], changes=applied.get("changes", []), pending=applied.get("pending"))
    if not result["changes"]:
        run_portward(module, params["executable"], ["confirm", "--generation", str(applied["generation"])])
        module.exit_json(changed=False, confirmed=True, **result)
    module.exit_json(changed=True, confirmed=False, **result)


def plan(module, params, staged):
    dummy, planned, dummy_err = run_portward(module, params["executable"], ["plan", "-p", staged])
    for warning in (planned or {}).get("warnings", []):
        module.warn("portward: %s" % warning)
    return (planned or {}).get("changes", [])


def apply(module, params, before, result):
    """apply --confirm N; when portward refuses, the previous policy file goes back in place."""
    dest = params["dest"]
    rc, applied, err = run_portward(
        module,
        params["executable"],
        ["apply", "-p", dest, "--confirm", str(params["confirm_timeout"])],
        ok_codes=(EXIT_OK, 1, EXIT_INPUT),
    )
    if rc != EXIT_OK:
        if before != params["content"]:
            restore_file(dest, before)
        module.fail_json(msg="portward apply failed (exit %d), nothing changed: %s" % (rc, err.strip()), rc=rc, **result)
    if not isinstance(applied, dict) or not isinstance(applied.get("generation"), int):
        module.fail_json(msg="portward apply printed no generation; it rolls back by itself within %d s"
                         % params["confirm_timeout"], rolling_back=True, **result)
    return applied


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path"),
            content=dict(type="str"),
            dest=dict(type="path", default="/etc/portward/policy.toml"),
            confirm_timeout=dict(type="int", default=30),
            executable=dict(type="str", default="portward"),
            confirm_generation=dict(type="int"),
        ),
        mutually_exclusive=[("src", "content"), ("content", "confirm_generation")],
        required_one_of=[("src", "content", "confirm_generation")],
        supports_check_mode=True,
    )
    params = module.params
    if params["confirm_generation"] is not None:
        if module.check_mode:
            module.exit_json(changed=False, generation=params["confirm_generation"], confirmed=False)
        confirm(module, params)
    if params["content"] is None:
        module.fail_json(msg="src is read on the controller by the action plugin; pass content when calling the "
                         "module directly")
    if params["confirm_timeout"] < 5:
        module.fail_json(msg="confirm_timeout must be at least 5 seconds (portward apply --confirm refuses less)")
    plan_and_apply(module, params)


if __name__ == "__main__":
    main()
