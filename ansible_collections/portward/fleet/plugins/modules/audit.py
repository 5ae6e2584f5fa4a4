#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: portward contributors
# MIT License (see LICENSE in the portward repository)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: audit
short_description: Gather portward's audit of a host as the fact C(portward_audit)
version_added: "0.1.0"
description:
  - Runs C(portward audit --json) on the host and sets the fact C(portward_audit) to its document
    (listening sockets with their exposure, sysctls, other firewall managers, legacy configs).
  - Changes nothing on the host.
  - The module runs with the host's own Python and calls the C(portward) executable; it never imports portward.
author:
  - portward contributors (@portward)
options:
  policy:
    description:
      - A policy file on the host; each socket then also says whether the live ruleset matches it (C(audit -p)).
    type: path
  executable:
    description:
      - The portward executable on the host, a name looked up on E(PATH) or an absolute path.
    type: str
    default: portward
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
requirements:
  - portward on the host (see the role M(portward.fleet.install)).
seealso:
  - module: portward.fleet.policy
"""

EXAMPLES = r"""
- name: Audit every host
  portward.fleet.audit:

- name: World-exposed sockets
  ansible.builtin.debug:
    msg: "{{ portward_audit.sockets | selectattr('exposure', 'equalto', 'world') | map(attribute='port') | list }}"

- name: Compare with the policy applied from /etc/portward/policy.toml
  portward.fleet.audit:
    policy: /etc/portward/policy.toml
"""

RETURN = r"""
ansible_facts:
  description: The facts this module sets.
  returned: always
  type: complex
  contains:
    portward_audit:
      description: The C(portward audit --json) document.
      returned: always
      type: dict
      sample: {"sockets": [{"proto": "tcp", "port": 22, "exposure": "world"}], "sysctl": [], "firewalls": [],
               "legacy": []}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.portward.fleet.plugins.module_utils.cli import run_portward


def main():
    module = AnsibleModule(
        argument_spec=dict(
            policy=dict(type="path"),
            executable=dict(type="str", default="portward"),
        ),
        supports_check_mode=True,
    )
    args = ["audit"]
    if module.params["policy"]:
        args += ["-p", module.params["policy"]]
    dummy, document, dummy_err = run_portward(module, module.params["executable"], args)
    if not isinstance(document, dict):
        module.fail_json(msg="portward audit printed no JSON document")
    module.exit_json(changed=False, ansible_facts={"portward_audit": document})


if __name__ == "__main__":
    main()
