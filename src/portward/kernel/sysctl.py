"""Read and write sysctls through /proc/sys (per network namespace for net.*)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from portward.errors import PortwardError

PROC_SYS = Path("/proc/sys")


def path_of(key: str, root: Path = PROC_SYS) -> Path:
    return root / key.replace(".", "/")


def read(key: str, root: Path = PROC_SYS) -> str | None:
    """The value as the kernel prints it (tabs between fields become spaces), None when the key is absent."""
    try:
        return " ".join(path_of(key, root).read_text().split())
    except OSError:
        return None


def read_many(keys: list[str], root: Path = PROC_SYS) -> dict[str, str | None]:
    return {key: read(key, root) for key in keys}


def write(key: str, value: str, root: Path = PROC_SYS) -> None:
    try:
        path_of(key, root).write_text(f"{value}\n")
    except OSError as error:
        raise PortwardError(
            f"cannot set {key} = {value}: {error.strerror or error} — check the key exists on this kernel "
            "(or remove it from [sysctl])"
        ) from None


def write_many(values: dict[str, str], root: Path = PROC_SYS) -> dict[str, str | None]:
    """Write every value; on a failure put back what was written, then raise. Returns the values before."""
    before = read_many(list(values), root)
    done: list[str] = []
    try:
        for key, value in values.items():
            if before[key] != value:
                write(key, value, root)
                done.append(key)
    except PortwardError:
        for key in reversed(done):
            previous = before[key]
            if previous is not None:
                with contextlib.suppress(PortwardError):
                    write(key, previous, root)
        raise
    return before
