"""Offline stand-in for the get-pip bootstrap script that ansible-test downloads for its venvs.

ansible-test fetches get-pip-<version>.py from its CI file server (unreachable here) and runs it in each fresh
venv with pip's install arguments. This does the same with what Python already has: ensurepip installs the
bundled pip, which then runs `pip install ARGS` (the packages still come from the configured package index).
"""

import runpy
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
# get-pip.py options that pip itself does not know (they ask get-pip not to add setuptools/wheel: neither do we)
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}
sys.argv = ["pip", "install", *(arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY)]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
