"""Start a console (`fedcare console` or `fedcare site console`) as a child, stop it by PID.

For the end-to-end tests and the benchmark: each runs the real console the way an
operator would, over TLS on a free loopback port, and owns exactly the process it started.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from deploy.process import ManagedProcess, start_fedcare_server


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
    verify = ssl.create_default_context(cafile=str(ca_cert))
    managed, url = start_fedcare_server(
        "the console", command, log, "/healthz", verify, timeout=timeout
    )
    return ConsoleProcess(managed, url)
