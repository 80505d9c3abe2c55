"""Start `fedcare serve` as a child process on a free loopback port, and stop it by its PID.

For the demo, the benchmark and the end-to-end tests: each runs the real service the way
an operator would, over real TCP, and owns exactly the process it started.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy.process import ManagedProcess, start_fedcare_server
from protocol import inference as wire


@dataclass
class ServiceProcess:
    """A running `fedcare serve` child.

    Parameters
    ----------
    managed : ManagedProcess
        The child, in its own process group.
    url : str
        Its base URL (``https://127.0.0.1:<port>`` or ``http://…`` with ``--insecure-http``).
    log : Path
        The file its standard output and error go to.
    """

    managed: ManagedProcess
    url: str
    log: Path

    @property
    def process(self) -> subprocess.Popen:
        """The child's ``Popen`` (its ``pid``, ``returncode``)."""
        return self.managed.popen

    def log_text(self) -> str:
        """Everything the service has printed so far."""
        return self.managed.log_text()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the child's group (SIGKILL after ``timeout`` s); return its exit code."""
        return self.managed.stop(timeout=timeout)


def start_service(
    serve_args: list[str],
    log: Path,
    ca_cert: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
    timeout: float = 120.0,
) -> ServiceProcess:
    """Run ``fedcare serve <serve_args> --host 127.0.0.1 --port <free>`` until it is ready.

    Parameters
    ----------
    serve_args : list of str
        Every `fedcare serve` option but ``--host``/``--port``. Without ``--insecure-http``
        the service is reached over https.
    log : path
        Where the child's output goes.
    ca_cert : path, optional
        The CA to verify the service's certificate with (https).
    client_cert : (cert, key), optional
        A client certificate for services that require mTLS.
    timeout : float
        Seconds to wait for ``/v2/health/ready`` to answer 200.

    Raises ``RuntimeError`` with the child's log if it exits or never gets ready.
    """
    plain = "--insecure-http" in serve_args
    verify: ssl.SSLContext | bool = True
    if not plain:
        verify = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
        if client_cert is not None:
            verify.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    log.unlink(missing_ok=True)
    managed, url = start_fedcare_server(
        "fedcare serve",
        ["serve", *serve_args],
        log,
        wire.READY_PATH,
        verify,
        scheme="http" if plain else "https",
        timeout=timeout,
    )
    return ServiceProcess(managed, url, log)
