"""Start a console (`fedcare console` or `fedcare site console`) as a child, stop it by PID.

For the end-to-end tests and the benchmark: each runs the real console the way an
operator would, over TLS on a free loopback port, and owns exactly the process it started.
"""

from __future__ import annotations

import os
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy.process import ManagedProcess, free_loopback_port, spawn


@dataclass
class ConsoleProcess:
    """A running console child.

    Parameters
    ----------
    managed : ManagedProcess
        The child, in its own process group.
    url : str
        Its base URL, ``https://127.0.0.1:<port>``.
    """

    managed: ManagedProcess
    url: str

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the child's group (SIGKILL after ``timeout`` s); its exit code.

        Parameters
        ----------
        timeout : float
            Seconds to wait before SIGKILL.
        """
        return self.managed.stop(timeout=timeout)


def start_console(
    command: list[str], log: Path, ca_cert: Path, timeout: float = 60.0
) -> ConsoleProcess:
    """Run ``fedcare <command> --host 127.0.0.1 --port <free>`` until it answers.

    Parameters
    ----------
    command : list of str
        ``["console", …]`` or ``["site", "console", …]`` with every option but
        ``--host``/``--port``.
    log : Path
        Where the child's output goes.
    ca_cert : Path
        The CA its TLS certificate is checked against.
    timeout : float
        Seconds to wait for ``/healthz``.

    Raises
    ------
    RuntimeError
        The child exited or did not answer in time (with its log).
    """
    port = free_loopback_port()
    args = [sys.executable, "-m", "cli.main", *command, "--host", "127.0.0.1", "--port", str(port)]
    root = Path(__file__).resolve().parents[1]  # so `cli.main` imports from this tree
    managed = spawn("fedcare console", args, os.environ, log, cwd=root)
    console = ConsoleProcess(managed, f"https://127.0.0.1:{port}")
    verify = ssl.create_default_context(cafile=str(ca_cert))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not managed.alive():
            raise RuntimeError(
                f"the console exited ({managed.popen.returncode}):\n{managed.log_text()}"
            )
        try:
            if httpx.get(console.url + "/healthz", verify=verify, timeout=2).status_code == 200:
                return console
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)
    console.stop()
    raise RuntimeError(f"the console did not answer in {timeout:.0f} s:\n{managed.log_text()}")
