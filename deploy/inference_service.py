"""Start `fedcare serve` as a child process on a free loopback port, and stop it by its PID.

For the demo, the benchmark and the end-to-end tests: each runs the real service the way
an operator would, over real TCP, and owns exactly the process it started.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy.process import ManagedProcess, free_loopback_port, spawn
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
    port = free_loopback_port()
    args = [sys.executable, "-m", "cli.main", "serve", *serve_args]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    plain = "--insecure-http" in serve_args
    root = Path(__file__).resolve().parents[1]  # so `cli.main` imports from this tree
    log.unlink(missing_ok=True)
    managed = spawn("fedcare serve", args, os.environ, log, cwd=root)
    process = managed.popen
    service = ServiceProcess(managed, f"{'http' if plain else 'https'}://127.0.0.1:{port}", log)
    verify: ssl.SSLContext | bool = True
    if not plain:
        verify = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
        if client_cert is not None:
            verify.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            code = process.returncode
            raise RuntimeError(f"fedcare serve exited ({code}):\n{service.log_text()}")
        try:
            ready = httpx.get(service.url + wire.READY_PATH, verify=verify, timeout=2)
            if ready.status_code == 200:
                return service
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)
    service.stop()
    raise RuntimeError(f"fedcare serve did not get ready in {timeout:.0f} s:\n{service.log_text()}")
