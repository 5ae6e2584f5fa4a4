"""The state dir: generations, the pending confirm, and a lock that serialises changes.

STATE/state.json          what is applied, pending, confirmed; the kernel generation id after our
                          last commit and which snapshot describes the live table at that id
STATE/gen/N/policy.toml   the policy text of generation N
STATE/gen/N/ruleset.json  what generation N compiled to (restore re-applies this; no policy needed)
STATE/gen/N/before.json   the table as it was before generation N (rollback target)
STATE/lock                flock'ed by apply, confirm, rollback, restore and the rollback timer
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from portward.dialects.nft import Ruleset
from portward.errors import PortwardError

DEFAULT_STATE_DIR = "/var/lib/portward"
KEEP_GENERATIONS = 20
Json = dict[str, Any]


def state_dir_from(option: str | None) -> Path:
    return Path(option or os.environ.get("PORTWARD_STATE_DIR") or DEFAULT_STATE_DIR)


class State:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data: Json = {}

    # files --------------------------------------------------------------------------------------

    def ensure(self) -> None:
        try:
            (self.root / "gen").mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        except OSError as error:
            raise PortwardError(
                f"cannot use state dir {self.root}: {error} — run as root or pass --state-dir DIR"
            ) from None

    @contextlib.contextmanager
    def locked(self, wait: float = 30.0) -> Iterator[State]:
        """Hold the lock (waiting up to `wait` s for another apply to finish), with state loaded."""
        self.ensure()
        handle = open(self.root / "lock", "a+")  # noqa: SIM115 - held for the whole block
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise PortwardError(
                            f"another portward holds {self.root / 'lock'} — wait for it to finish and retry"
                        ) from None
                    time.sleep(0.05)
            self.load()
            yield self
        finally:
            handle.close()

    def load(self) -> Json:
        try:
            self.data = json.loads((self.root / "state.json").read_text())
        except FileNotFoundError:
            self.data = {}
        except (OSError, ValueError) as error:
            raise PortwardError(f"cannot read {self.root / 'state.json'}: {error} — fix or remove it") from None
        return self.data

    def save(self) -> None:
        write_atomic(self.root / "state.json", json.dumps(self.data, indent=2, sort_keys=True))

    def gen_dir(self, generation: int) -> Path:
        return self.root / "gen" / str(generation)

    def new_generation(self) -> int:
        generation = int(self.data.get("next_generation", 1))
        self.data["next_generation"] = generation + 1
        return generation

    def write_generation(
        self,
        generation: int,
        policy_text: str,
        policy_path: str,
        wanted: Ruleset,
        before: Ruleset | tuple[int, str] | None,
        meta: Json,
    ) -> None:
        """`before` may be a reference (generation, "ruleset"|"before") to a snapshot already on disk:
        with a 100k-entry block list, not writing it twice saves a tenth of a second."""
        folder = self.gen_dir(generation)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "policy.toml", policy_text)
        write_atomic(folder / "ruleset.json", json.dumps(wanted.to_dict()))
        if isinstance(before, tuple):
            reference: Json = {"ref": list(before)}
            write_atomic(folder / "before.json", json.dumps(reference))
        else:
            write_atomic(folder / "before.json", json.dumps(None if before is None else before.to_dict()))
        write_atomic(folder / "meta.json", json.dumps({"policy_path": policy_path, **meta}))

    def read_ruleset(self, generation: int, which: str = "ruleset") -> Ruleset | None:
        try:
            data = json.loads((self.gen_dir(generation) / f"{which}.json").read_text())
        except FileNotFoundError:
            raise PortwardError(
                f"generation {generation} is missing from {self.root} — apply the policy again"
            ) from None
        if isinstance(data, dict) and "ref" in data:
            generation, which = data["ref"]
            return self.read_ruleset(int(generation), str(which))
        return None if data is None else Ruleset.from_dict(data)

    def meta(self, generation: int) -> Json:
        try:
            return dict(json.loads((self.gen_dir(generation) / "meta.json").read_text()))
        except (OSError, ValueError):
            return {}

    def applied_entry(self, generation: int) -> Json:
        meta = self.meta(generation)
        return {"generation": generation, "policy": meta.get("policy_path"), "time": meta.get("time", time.time())}

    def prune(self) -> None:
        keep = {
            self.data.get(key, {}).get("generation")
            for key in ("applied", "pending", "confirmed")
            if isinstance(self.data.get(key), dict)
        }
        snapshot = (self.data.get("kernel") or {}).get("snapshot")
        if snapshot:
            keep.add(int(snapshot[0]))
        folders = sorted((int(p.name) for p in (self.root / "gen").iterdir() if p.name.isdigit()), reverse=True)
        for number in folders[:KEEP_GENERATIONS]:
            keep.add(number)
        for number in sorted(keep, reverse=True):  # a kept snapshot may refer to an older one
            path = self.gen_dir(number) / "before.json"
            try:
                if path.stat().st_size > 200:  # a reference is tiny; a full snapshot may be megabytes
                    continue
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and "ref" in data:
                keep.add(int(data["ref"][0]))
        for number in folders:
            if number not in keep:
                shutil.rmtree(self.gen_dir(number), ignore_errors=True)


def write_atomic(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
