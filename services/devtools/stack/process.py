"""One server process: its own session and log file, stopped gracefully then forcibly, and only if it is ours.

Every process is started with `WHALEID_STACK_OWNER=<owner>` in its environment. Stopping by PID (from a state
file written by another process) first checks `/proc/<pid>/environ` for that marker, so a PID reused by an
unrelated process after a crash is never signalled.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

OWNER_ENV = "WHALEID_STACK_OWNER"
GRACE_S = 10.0


class ServerProcess:
    """A server binary started in its own session, writing stdout and stderr to `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        owner: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.owner = owner
        self.env = dict(env or {})
        self.cwd = cwd
        self._popen: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, OWNER_ENV: self.owner}
        log.debug("starting %s: %s", self.name, " ".join(self.argv))
        with open(self.log_path, "wb") as log_file:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def exit_code(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def stop(self, grace: float = GRACE_S) -> None:
        if self._popen is None:
            return
        stop_pid(self.pid, self.owner, grace=grace)
        try:
            self._popen.wait(timeout=1)
        except subprocess.TimeoutExpired:  # pragma: no cover - stop_pid already killed the group
            pass

    def log_tail(self, lines: int = 25) -> str:
        return log_tail(self.log_path, lines)


ERROR_LINE = re.compile(r"^E\d{4} |\b(error|fatal|panic|failed|exception|traceback)\b", re.IGNORECASE)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
HARMLESS = ("CudaDriverHelper", "CUDA", "NVML", "DCGM", "GPU")  # CPU-only Triton warns about these


def log_tail(path: Path, lines: int = 25, error_lines: int = 8, width: int = 300) -> str:
    """The last lines of a log, preceded by its last error-looking lines (so the reason is not scrolled away)."""
    try:
        with open(path, errors="replace") as fh:
            all_lines = [ANSI_ESCAPE.sub("", line).rstrip()[:width] for line in fh]
    except OSError:
        return ""
    tail = all_lines[-lines:]
    errors = [
        line
        for line in all_lines[:-lines]
        if ERROR_LINE.search(line) and not any(h in line for h in HARMLESS)
    ][-error_lines:]
    parts = errors + (["..."] if errors else []) + tail
    return "\n".join(parts).rstrip()


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (reaps it when it is our own child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def pid_owned_by(pid: int, owner: str) -> bool:
    """True when process `pid` was started with our owner marker (so signalling it is safe)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc: trust the state file
        return pid_alive(pid)
    return f"{OWNER_ENV}={owner}".encode() in environ.split(b"\0")


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is left in the process group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            return True
    return False


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def stop_pid(pid: int, owner: str, grace: float = GRACE_S) -> bool:
    """SIGTERM `pid`, wait up to `grace` s, then SIGKILL its process group (its own session, so only its
    children: e.g. Triton's Python-backend stubs). Returns False, signalling nothing, when `pid` is not ours."""
    if not pid_alive(pid) or not pid_owned_by(pid, owner):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    is_leader = os.getpgid(pid) == pid if pid_alive(pid) else True
    began = time.monotonic()
    if not _wait_dead(pid, grace):
        # a grace shorter than the default is chosen for a server that is safe to kill (weed): no warning
        log.log(logging.WARNING if grace >= GRACE_S else logging.INFO,
                "process %d did not stop within %.0f s of SIGTERM; killing it", pid, grace)
        os.killpg(pid, signal.SIGKILL) if is_leader else os.kill(pid, signal.SIGKILL)
        _wait_dead(pid, 5)
    if is_leader and _group_alive(pid):  # children left behind by the leader: give them a moment, then kill
        deadline = time.monotonic() + 2
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    log.debug("stopped pid %d in %.2f s", pid, time.monotonic() - began)
    return True
