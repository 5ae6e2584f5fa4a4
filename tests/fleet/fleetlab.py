"""A fleet in network namespaces: a controller and N hosts on one bridge, each host with its own sshd.

Used by tests/fleet/test_fleet.py and bench/fleet.py. Never touches the host's network or /etc:

    ctl  198.18.50.100 ─┐
    h1   198.18.50.1   ─┤ bridge br0 in namespace "sw"
    …                   │
    hN   198.18.50.N   ─┘

Namespaces are ``pw-fl<pid>-<role>``. Each host's sshd runs inside its netns *and* a private mount namespace
(``unshare -m``) where /etc and /var/lib are overlays on tmpfs (so /etc/portward and /var/lib/portward exist
without creating them on the real host) with a tmpfs mounted over each, and /run is a tmpfs (sshd's /run/sshd):
every host has its own policy and state at portward's default paths. Key-only root login with a temp host key
and a temp authorized_keys. Everything started is killed and every namespace deleted on ``teardown()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SUBNET = "198.18.50"
CONTROLLER = f"{SUBNET}.100"
SYSTEM_PYTHON = "/usr/bin/python3"
SSHD = "/usr/sbin/sshd"
CALLBACKS = Path(__file__).resolve().parent / "callback_plugins"
# the policy the fleet test and bench/fleet.py roll out: ssh from anywhere, metrics from the fleet subnet
FLEET_POLICY = """
[defaults]
inbound = "drop"

[zones]
fleet = ["198.18.50.0/24"]

[[inbound]]
name = "ssh"
ports = ["22/tcp"]
from = ["any"]

[[inbound]]
name = "metrics"
ports = ["9100/tcp"]
from = ["fleet"]
"""

# The private mount namespace of one host: overlays give /etc and /var/lib writable per-host copies (mount points
# for the tmpfs below without mkdir on the real host); tmpfs over /etc/portward and /var/lib/portward = own state.
HOST_SCRIPT = r"""
set -e
mount -t tmpfs -o mode=0755 fleet "$WORK"
for d in etc var-lib; do mkdir -p "$WORK/$d-up" "$WORK/$d-work"; done
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$WORK/etc-up,workdir=$WORK/etc-work" /etc
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$WORK/var-lib-up,workdir=$WORK/var-lib-work" /var/lib
mkdir -p /etc/portward /var/lib/portward
mount -t tmpfs -o mode=0755 portward-etc /etc/portward
mount -t tmpfs -o mode=0700 portward-state /var/lib/portward
mount -t tmpfs -o mode=0755 run /run
mkdir -m 0755 /run/sshd
exec "$SSHD" -D -e -f "$CONFIG"
"""

SSHD_CONFIG = """\
ListenAddress {address}:22
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PidFile none
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp /usr/lib/openssh/sftp-server
"""


class FleetError(RuntimeError):
    """A fleet command failed; the message carries the command and its output."""


def available() -> tuple[bool, str]:
    """(True, "") when a fleet can be built here, else (False, why)."""
    if os.geteuid() != 0:
        return False, "needs root (network and mount namespaces)"
    for tool in ("ip", "nft", "unshare", "nsenter", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return False, f"{tool} not found"
    if not Path(SSHD).exists():
        return False, f"{SSHD} not found (apt-get install openssh-server)"
    if not Path(SYSTEM_PYTHON).exists():
        return False, f"{SYSTEM_PYTHON} not found"
    if shutil.which("ansible-playbook", path=str(VENV_BIN)) is None:
        return False, "ansible-playbook not in the venv (pip install ansible-core)"
    return True, ""


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 60), check=False, **kw)
    if cp.returncode != 0:
        raise FleetError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp


class FleetLab:
    """A controller and ``size`` hosts; ``with FleetLab(3) as fleet:`` builds and always tears down."""

    def __init__(self, size: int, portward: str | None = None) -> None:
        if not 1 <= size <= 99:
            raise ValueError("1..99 hosts")
        self.prefix = f"pw-fl{os.getpid()}-"
        self.hosts = [f"h{i}" for i in range(1, size + 1)]
        self.portward = portward or str(VENV_BIN / "portward")
        self.tmp = Path(tempfile.mkdtemp(prefix="pw-fleet-"))
        self.key = self.tmp / "id_ed25519"
        self.sshd: dict[str, subprocess.Popen[bytes]] = {}
        self.namespaces: list[str] = []

    # ------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Self:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.teardown()

    def ns(self, role: str) -> str:
        return self.prefix + role

    def address(self, host: str) -> str:
        return CONTROLLER if host == "ctl" else f"{SUBNET}.{int(host[1:])}"

    def setup(self) -> None:
        self._network()
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.tmp / "host_key")])
        (self.tmp / "authorized_keys").write_text((self.tmp / "id_ed25519.pub").read_text())
        for host in self.hosts:
            self._start_sshd(host)
        for host in self.hosts:
            self._await_sshd(host)

    def _network(self) -> None:
        roles = ["sw", "ctl", *self.hosts]
        for role in roles:
            _run(["ip", "netns", "add", self.ns(role)])
            self.namespaces.append(self.ns(role))
        switch = ["link add br0 type bridge", "link set br0 up", "link set lo up"]
        for index, role in enumerate(roles[1:]):
            name = f"p{index}"
            # created in the switch; the peer moves to the node as eth0
            switch += [
                f"link add {name} type veth peer name eth0 netns {self.ns(role)}",
                f"link set {name} master br0",
                f"link set {name} up",
            ]
        self._ip_batch(switch, self.ns("sw"))
        for role in roles[1:]:
            self._ip_batch(
                ["link set lo up", f"addr add {self.address(role)}/24 dev eth0", "link set eth0 up"], self.ns(role)
            )

    @staticmethod
    def _ip_batch(lines: list[str], netns: str) -> None:
        _run(["ip", "-n", netns, "-batch", "-"], input="".join(line + "\n" for line in lines))

    def _start_sshd(self, host: str) -> None:
        folder = self.tmp / host
        folder.mkdir()
        (folder / "work").mkdir()
        config = folder / "sshd_config"
        config.write_text(
            SSHD_CONFIG.format(
                address=self.address(host),
                host_key=self.tmp / "host_key",
                authorized_keys=self.tmp / "authorized_keys",
            )
        )
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "WORK": str(folder / "work"),
               "SSHD": SSHD, "CONFIG": str(config)}
        log = open(folder / "sshd.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            self.sshd[host] = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), "unshare", "-m", "--propagation", "private",
                 "sh", "-c", HOST_SCRIPT],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        finally:
            log.close()

    def _await_sshd(self, host: str, timeout: float = 20.0) -> None:
        """Wait until the host's sshd accepts TCP on its address (probed from the controller's netns)."""
        deadline = time.monotonic() + timeout
        probe = (
            "import socket,sys\n"
            "s=socket.socket();s.settimeout(0.5)\n"
            f"sys.exit(s.connect_ex(({self.address(host)!r},22)))\n"
        )
        while time.monotonic() < deadline:
            if self.sshd[host].poll() is not None:
                raise FleetError(f"sshd of {host} exited: {(self.tmp / host / 'sshd.log').read_text()}")
            cp = subprocess.run(["ip", "netns", "exec", self.ns("ctl"), sys.executable, "-I", "-S", "-c", probe],
                                capture_output=True, timeout=10, check=False)
            if cp.returncode == 0:
                return
            time.sleep(0.05)
        raise FleetError(f"sshd of {host} not listening after {timeout}s")

    def teardown(self) -> None:
        """Kill everything in our namespaces (sshd, sessions, portward rollback timers), delete them, rm tmp."""
        for proc in self.sshd.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for name in self.namespaces:
            cp = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
            for pid in cp.stdout.split():
                if pid.isdigit() and int(pid) != os.getpid():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), signal.SIGKILL)
        for proc in self.sshd.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.namespaces = []
        self.sshd = {}
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------------------------- ansible
    def inventory(self, extra_vars: dict[str, str] | None = None) -> Path:
        """An INI inventory: group ``fleet`` of the hosts over ssh, and ``localhost`` (the controller) local."""
        lines = ["[fleet]"]
        lines += [f"{host} ansible_host={self.address(host)}" for host in self.hosts]
        lines += [
            "",
            "[fleet:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={self.key}",
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR'",
            f"ansible_python_interpreter={SYSTEM_PYTHON}",
            f"portward_executable={self.portward}",
            *[f"{key}={value}" for key, value in (extra_vars or {}).items()],
            "",
            "[local]",
            f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}",
        ]
        path = self.tmp / "inventory.ini"
        path.write_text("\n".join(lines) + "\n")
        return path

    def ansible_env(self, record: Path, forks: int) -> dict[str, str]:
        home = self.tmp / "ansible"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        (home / "cp").mkdir(exist_ok=True)
        return {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            "HOME": str(home),
            "LC_ALL": "C.UTF-8",
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
            "ANSIBLE_COLLECTIONS_PATH": str(ROOT),
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_PIPELINING": "true",
            "ANSIBLE_HOST_KEY_CHECKING": "false",
            "ANSIBLE_TIMEOUT": "5",
            "ANSIBLE_FORKS": str(forks),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS),
            "ANSIBLE_CALLBACKS_ENABLED": "fleet_record",
            "FLEET_RECORD": str(record),
            "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        }

    def playbook(
        self, text: str, *options: str, forks: int = 5, extra_vars: dict[str, Any] | None = None, timeout: float = 240
    ) -> Run:
        """Run ansible-playbook from the controller's netns; the result carries stdout and the recorded results."""
        playbook = self.tmp / f"play-{time.monotonic_ns()}.yml"
        playbook.write_text(text)
        record = playbook.with_suffix(".jsonl")
        argv = ["ip", "netns", "exec", self.ns("ctl"), str(VENV_BIN / "ansible-playbook"),
                "-i", str(self.inventory()), str(playbook), *options]
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        started = time.monotonic()
        cp = subprocess.run(argv, capture_output=True, text=True, env=self.ansible_env(record, forks),
                            timeout=timeout, check=False)
        return Run(cp, time.monotonic() - started, record)

    # ------------------------------------------------------------------------------------ inspect
    def in_host(self, host: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run argv in the host's netns and private mount namespace (that of its sshd)."""
        pid = self._sshd_pid(host)
        cp = subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", *argv], capture_output=True, text=True,
                            timeout=60, check=False)
        if check and cp.returncode != 0:
            raise FleetError(f"{host}: {' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip()}")
        return cp

    def _sshd_pid(self, host: str) -> int:
        """sh execs sshd, but `ip netns exec` and `unshare` are in front: find the pid that runs sshd."""
        cp = subprocess.run(["ip", "netns", "pids", self.ns(host)], capture_output=True, text=True, check=False)
        for pid in sorted(int(p) for p in cp.stdout.split() if p.isdigit()):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/exe").resolve() == Path(SSHD).resolve():
                    return pid
        raise FleetError(f"no sshd in {self.ns(host)}")

    def ruleset(self, host: str) -> str:
        """The host's portward table as nft prints it ('' when there is none)."""
        cp = subprocess.run(["ip", "netns", "exec", self.ns(host), "nft", "list", "table", "inet", "portward"],
                            capture_output=True, text=True, timeout=30, check=False)
        return cp.stdout if cp.returncode == 0 else ""

    def status(self, host: str) -> Any:
        return json.loads(self.in_host(host, [self.portward, "status", "--json"]).stdout)


class Run:
    """One ansible-playbook run: exit code, output, and every task result the callback recorded."""

    def __init__(self, cp: subprocess.CompletedProcess[str], seconds: float, record: Path) -> None:
        self.returncode = cp.returncode
        self.stdout = cp.stdout
        self.stderr = cp.stderr
        self.seconds = seconds
        self.events: list[dict[str, Any]] = []
        if record.exists():
            self.events = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]

    def results(self, task: str) -> dict[str, dict[str, Any]]:
        """host -> the recorded event (status, result, start, end) of the task with this name."""
        return {event["host"]: event for event in self.events if event["task"] == task}

    def recap(self) -> dict[str, dict[str, int]]:
        """The PLAY RECAP counters per host."""
        counts: dict[str, dict[str, int]] = {}
        seen = False
        for line in self.stdout.splitlines():
            if line.startswith("PLAY RECAP"):
                seen = True
                continue
            if seen and ":" in line:
                host, rest = line.split(":", 1)
                counts[host.strip()] = {k: int(v) for k, v in (item.split("=") for item in rest.split())}
        return counts

    def explain(self) -> str:
        return f"exit {self.returncode}\n--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-3000:]}"

