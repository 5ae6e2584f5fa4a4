#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: portward contributors
# MIT License (see LICENSE in the portward repository)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: verify
short_description: Scan a host from where this runs and compare with what its portward policy allows
version_added: "0.1.0"
description:
  - Runs C(portward verify -p POLICY --target TARGET --json) where the task runs. Use C(delegate_to) to pick the
    vantage point (the controller, a jump host, a host in another zone); the policy says what that vantage point
    may reach on O(target).
  - Fails listing every port whose answer differs from the policy (C(verify) exit code 3).
  - Changes nothing. The module calls the C(portward) executable; it never imports portward.
author:
  - portward contributors (@portward)
options:
  target:
    description:
      - The host the policy protects (name or address), as the vantage point reaches it.
    type: str
    required: true
  policy:
    description:
      - The policy file, on the machine where the task runs (the delegate).
    type: path
    required: true
  ports:
    description:
      - Scan these TCP ports (C(22,80,1000-2000)) instead of the ones the policy names.
    type: str
  udp:
    description:
      - Also probe the UDP ports the policy names.
    type: bool
    default: false
  interface:
    description:
      - The target's interface our packets arrive on, so rules bound to an interface count.
    type: str
  executable:
    description:
      - The portward executable where the task runs, a name looked up on E(PATH) or an absolute path.
    type: str
    default: portward
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - portward where the task runs.
seealso:
  - module: portward.fleet.policy
"""

EXAMPLES = r"""
- name: Prove from the controller that each host admits what its policy says, and nothing else
  portward.fleet.verify:
    target: "{{ ansible_host }}"
    policy: "{{ playbook_dir }}/files/policy.toml"
  delegate_to: localhost
"""

RETURN = r"""
differences:
  description: The ports whose answer differs from the policy (empty when everything matches).
  returned: always
  type: list
  elements: dict
  sample: [{"port": 23, "proto": "tcp", "state": "open", "expected": "blocked", "problem": "open but the policy
             blocks it", "policy": "no rule admits 198.18.50.100"}]
verify:
  description: The whole C(portward verify --json) document (target, address, source, states, notes, seconds).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.portward.fleet.plugins.module_utils.cli import EXIT_DIFFERS, EXIT_OK, run_portward


def describe(difference):
    return "%s/%s %s (%s)" % (difference.get("port"), difference.get("proto"), difference.get("state"),
                              difference.get("problem"))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            target=dict(type="str", required=True),
            policy=dict(type="path", required=True),
            ports=dict(type="str"),
            udp=dict(type="bool", default=False),
            interface=dict(type="str"),
            executable=dict(type="str", default="portward"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    args = ["verify", "-p", params["policy"], "--target", params["target"]]
    if params["ports"]:
        args += ["--ports", params["ports"]]
    if params["udp"]:
        args.append("--udp")
    if params["interface"]:
        args += ["--interface", params["interface"]]
    rc, document, dummy_err = run_portward(module, params["executable"], args, ok_codes=(EXIT_OK, EXIT_DIFFERS))
    document = document or {}
    differences = document.get("differences", [])
    if rc == EXIT_DIFFERS:
        module.fail_json(
            msg="%d port(s) of %s differ from %s: %s"
            % (len(differences), params["target"], params["policy"], "; ".join(describe(d) for d in differences)),
            differences=differences,
            verify=document,
        )
    module.exit_json(changed=False, differences=differences, verify=document)


if __name__ == "__main__":
    main()
