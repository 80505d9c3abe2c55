"""Processes fedcare starts (SuperLink, SuperNodes, the inference service), stopped by PID.

Every service is started with :func:`spawn` in a process group of its own, its output
appended to a log file, and stopped with :meth:`ManagedProcess.stop`: SIGTERM to its
group, then SIGKILL to what is left, descendants in other groups included (Flower's
SuperExec outlives a SuperNode that exits on an error). Nothing is ever killed by name.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def interval_setting(configured: float, env: str, low: float, high: float, what: str) -> float:
    """A pause in seconds: the environment variable ``env`` if set, else ``configured``.

    Parameters
    ----------
    configured : float
        The value from the settings file.
    env : str
        The environment variable that overrides it.
    low, high : float
        The allowed range, in seconds.
    what : str
        The setting's name in the error message.

    Raises
    ------
    ValueError
        The value is not a number within [low, high].
    """
    raw = os.environ.get(env, configured)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{what} must be a number of seconds, got {raw!r} ({env})") from None
    if not low <= value <= high:
        raise ValueError(f"{what} must be within [{low:g}, {high:g}] s, got {value:g}")
    return value


def bin_dir() -> Path:
    """The running Python's `bin/`, where Flower's commands are."""
    return Path(sys.executable).parent


def _children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc); empty elsewhere or when gone."""
    out: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(p) for p in text)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children …)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in _children(stack.pop()):
            if child not in found:
                found.append(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is already dead


@dataclass
class ManagedProcess:
    """A process we started, stopped by its PID (and its own children by theirs).

    Parameters
    ----------
    name : str
        What it is, for messages.
    popen : subprocess.Popen
        The started process (leader of its own process group).
    log_path : Path, optional
        Where its output goes.
    known_children : set of int
        PIDs of descendants seen so far, stopped by :meth:`stop` whatever their group.
    companions : list of ManagedProcess
        Processes that live and die with this one (a SuperNode's site executor): stopped
        and killed with it, each by its PID.
    """

    name: str
    popen: subprocess.Popen
    log_path: Path | None = None
    known_children: set[int] = field(default_factory=set)
    companions: list[ManagedProcess] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The process's PID (also its process group's id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None

    def remember_children(self) -> None:
        """Note the PIDs of descendants (SuperExec, app processes) so stop() can reap them."""
        self.known_children.update(descendants(self.pid))
        for companion in self.companions:
            companion.remember_children()

    def wait_for_end(self, stop: threading.Event, poll: float = 0.5) -> ManagedProcess | None:
        """Wait until this process or a companion exits (that one) or ``stop`` is set (None).

        Parameters
        ----------
        stop : threading.Event
            Ends the wait early (Ctrl-C, a supervisor told to stop).
        poll : float
            Seconds between looks at the processes.
        """
        while not stop.wait(poll):
            for each in (self, *self.companions):
                if not each.alive():
                    return each
        return None

    def log_text(self) -> str:
        """The process's log so far; empty when it has none."""
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process's group, then SIGKILL what is left, descendants included.

        The group is signalled even when its leader is gone: Flower's SuperExec outlives a
        SuperNode that exits on an error.

        Parameters
        ----------
        timeout : float
            Seconds to wait after SIGTERM before SIGKILL, for the process and for its
            remembered descendants.

        Returns
        -------
        int or None
            The process's exit code.
        """
        self.remember_children()
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)
        # Descendants in groups of their own (the SuperLink's SuperExec): each by its PID.
        deadline = time.monotonic() + timeout
        for child in sorted(self.known_children):
            while alive(child) and time.monotonic() < deadline:
                _signal(child, signal.SIGTERM)
                time.sleep(0.2)
            if alive(child):
                _signal(child, signal.SIGKILL)
        _signal_group(self.pid, signal.SIGKILL)
        for companion in self.companions:
            companion.stop(timeout)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the process and everything it started, at once: a crash."""
        self.remember_children()
        _signal_group(self.pid, signal.SIGKILL)
        for child in self.known_children:
            _signal(child, signal.SIGKILL)
        self.popen.wait(timeout=30)
        for companion in self.companions:
            companion.kill()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group that :func:`spawn` made for ``pid``."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def spawn(
    name: str, cmd: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> ManagedProcess:
    """Start ``cmd`` in its own process group, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it from here
    try:
        popen = subprocess.Popen(
            list(cmd),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,  # one group: stopped together, by its PID
        )
    finally:
        log.close()
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def start_fedcare_server(
    name: str,
    command: Sequence[str],
    log_path: Path,
    health_path: str,
    verify: ssl.SSLContext | bool,
    scheme: str = "https",
    timeout: float = 60.0,
) -> tuple[ManagedProcess, str]:
    """Run ``fedcare <command> --host 127.0.0.1 --port <free>`` until ``health_path`` is 200.

    For the demo, benchmarks and end-to-end tests: the real service or console, started the
    way an operator would, over real TCP, owned by its caller and stopped by its PID.

    Parameters
    ----------
    name : str
        How messages name the child (``fedcare serve``).
    command : sequence of str
        The ``fedcare`` command and every option but ``--host``/``--port``.
    log_path : Path
        Where the child's output is appended.
    health_path : str
        The route that answers 200 once the child is ready.
    verify : ssl.SSLContext or bool
        How its TLS certificate is checked (``True`` for plain HTTP).
    scheme : str
        ``https``, or ``http`` for a child started without TLS.
    timeout : float
        Seconds to wait for ``health_path``.

    Returns
    -------
    tuple of (ManagedProcess, str)
        The child and its base URL.

    Raises
    ------
    RuntimeError
        The child exited or did not answer in time (with its log).
    """
    port = free_loopback_port()
    args = [sys.executable, "-m", "cli.main", *command, "--host", "127.0.0.1", "--port", str(port)]
    root = Path(__file__).resolve().parents[1]  # so `cli.main` imports from this tree
    managed = spawn(name, args, os.environ, log_path, cwd=root)
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not managed.alive():
            code = managed.popen.returncode
            raise RuntimeError(f"{name} exited ({code}):\n{managed.log_text()}")
        try:
            if httpx.get(url + health_path, verify=verify, timeout=2).status_code == 200:
                return managed, url
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)
    managed.stop()
    raise RuntimeError(f"{name} did not answer in {timeout:.0f} s:\n{managed.log_text()}")
