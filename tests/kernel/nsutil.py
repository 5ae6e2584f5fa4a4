"""Throw-away network namespaces for kernel tests: nothing here touches the host's ruleset.

`scratch_netns()` creates `pw-nl-<random>` and always deletes it. `Netns.call(fn, ...)` runs a
Python callable inside the namespace in a forked child (setns(2) via ctypes, since os.setns is
3.12+), and returns its result or re-raises its exception via pickle. `Netns.nft(...)` runs the
nft command inside it.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import secrets
import shutil
import subprocess
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def netns_available() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command"
    return None


class ChildFailed(RuntimeError):
    """The child died without reporting, or its exception could not be sent back."""


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def nft(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        cmd = ["ip", "netns", "exec", self.name, "nft", *args]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def nft_json(self, *args: str) -> Any:
        return json.loads(self.nft("-j", *args))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn(*args, **kwargs) in a child that joined this namespace; return its result."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            status = 0
            try:
                os.close(read_fd)
                _setns(f"/run/netns/{self.name}")
                try:
                    outcome: tuple[str, Any] = ("ok", fn(*args, **kwargs))
                except BaseException as error:
                    outcome = ("raise", error)
                try:
                    blob = pickle.dumps(outcome)
                except Exception:
                    blob = pickle.dumps(("raise", ChildFailed(traceback.format_exc())))
                with os.fdopen(write_fd, "wb") as out:
                    out.write(blob)
            except BaseException:
                traceback.print_exc()
                status = 1
            finally:
                os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            blob = pipe.read()
        _, wait_status = os.waitpid(pid, 0)
        if not blob:
            raise ChildFailed(f"child in {self.name} died (wait status {wait_status}) without a result")
        kind, value = pickle.loads(blob)
        if kind == "raise":
            raise value
        return value  # type: ignore[no-any-return]


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@contextmanager
def scratch_netns(prefix: str = "pw-nl") -> Iterator[Netns]:
    """A fresh, empty network namespace that is removed however the test ends."""
    name = f"{prefix}-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)
