"""`fedcare coordinator start|run`: the SuperLink, site registration and checked runs.

Flower 1.41 facts this module relies on (read from its source and seen on loopback):

- `flower-superlink` serves the Fleet API (SuperNodes), the Control API (`flwr` CLI) and the
  Runtime API (ServerApp) on ONE HTTPS port (`--host`, `--port`; default 127.0.0.1:8000),
  TLS from `--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile` (PEM).
- `--enable-supernode-auth` admits only SuperNodes whose public key was registered with
  `flwr supernode register KEY.pub CONNECTION`; it requires TLS.
- `--database FILE` keeps runs and registered keys across restarts (SQLite, through
  SQLAlchemy); without it (`:flwr-in-memory:`, Flower's default) the state lives in the
  process's memory and a restart forgets it. A SuperNode whose node the SuperLink no longer
  knows ends ("terminated gracefully") instead of activating again. On SQLite the SuperLink
  spends ~2.5× the CPU per request (the ORM, the task-token sweep before every object, a
  traffic row per object): measured, a warm 3-site round took 2.1–2.4 s against 1.3 s.
- `--disable-runtime-dependency-installation`: the ServerApp runs in this environment
  instead of `uv sync`-ing the app's dependencies from a registry for every run.
- it spawns `flower-superexec` by name, so the environment's `bin/` must be on PATH.
- `flwr` reads connections from `$FLWR_HOME/config.toml` (`[superlink.<name>]` with
  `address` and `root-certificates`), not from the app's pyproject.
- `flwr run` and `flwr supernode register --format json` exit 0 on failure; the truth is
  the JSON's `success` and the run's status in `flwr ls --run-id N --format json`
  (`finished:completed`, `finished:failed`, `finished:stopped`).
- `flwr log RUN --stream` returns once the run is finished (the SuperLink ends the stream,
  checking every 0.5 s): one process waits for a run instead of one `flwr ls` per poll.
- the ServerApp's grid waits 3 s between pulls for replies (`send_and_receive`, hard-coded
  in flwr 1.41's `HttpGrid`); fedcare's ServerApp does not use it (its exchange pulls every
  `reply-poll-interval` s, server/federation/exchange.py).
- `flower-superexec` asks the SuperLink for runs to start every
  `FLWR_SUPEREXEC_TASK_POLL_INTERVAL` s (default 1 s); the coordinator sets 0.25 s.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import tomli_w
from flwr.proto.control_pb2 import ListNodesRequest, ListNodesResponse  # pylint: disable=E0611
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.control import ControlHttpClient

from deploy.process import ManagedProcess, bin_dir, spawn
from deploy.provision import FederationFile, load_federation
from deploy.superlink_lean import superlink_entry

CONNECTION = "fedcare"
# How often the SuperLink's SuperExec asks for a run to start (Flower's default: 1 s).
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL_INTERVAL = 0.25
FINISHED = "finished"
COMPLETED = "finished:completed"


class CoordinatorError(Exception):
    """The SuperLink or a run did not do what was asked; the message says what happened."""


# ---------------------------------------------------------------- the flwr connection


def flower_env(flwr_home: str | Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for Flower's commands: this venv's bin first, our FLWR_HOME."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # Apps run in this environment; nothing is fetched from a registry at run time.
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.update(extra)
    return env


def write_connection(
    flwr_home: str | Path,
    address: str,
    ca_cert: str | Path,
    name: str = CONNECTION,
    make_default: bool = True,
) -> Path:
    """Add (or replace) a `[superlink.<name>]` connection in $FLWR_HOME/config.toml."""
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    data: dict = tomllib.loads(path.read_text()) if path.exists() else {}
    superlink = data.setdefault("superlink", {})
    superlink[name] = {"address": address, "root-certificates": str(Path(ca_cert).resolve())}
    if make_default:
        superlink["default"] = name
    path.write_text(tomli_w.dumps(data))
    return path


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


# ------------------------------------------------------------------------ SuperLink


@dataclass
class SuperLinkSettings:
    """How to run the SuperLink of a provisioned coordinator folder.

    Parameters
    ----------
    coordinator_dir : Path
        The provisioned coordinator folder (certificates, registered sites).
    host, port : str, int
        Where the SuperLink listens.
    keep_state : bool
        Keep runs and registered keys in ``database`` across restarts (SQLite). Default:
        Flower's in-memory state, ~2.5× less SuperLink CPU per request; a restart forgets
        it, so ``fedcare coordinator start`` registers every provisioned site again and the
        sites' supervisors (:func:`deploy.supernode.supervise_site`) start their SuperNodes
        again when the new SuperLink does not know them.
    database : Path, optional
        The SQLite database when ``keep_state``; default
        ``<coordinator_dir>/state/superlink.db``.
    flwr_home : Path, optional
        The ``FLWR_HOME`` of the ``flwr`` commands; default
        ``<coordinator_dir>/state/flwr-home``.
    log_path : Path, optional
        The SuperLink's log; default ``<coordinator_dir>/state/superlink.log``.
    address : str, optional
        The host:port ``flwr`` dials; :func:`open_coordinator` takes it from
        ``federation.toml``, and :class:`Coordinator` falls back to ``127.0.0.1:<port>``.
    """

    coordinator_dir: Path
    host: str = "0.0.0.0"
    port: int = 8000
    keep_state: bool = False
    database: Path | None = None  # default: <coordinator_dir>/state/superlink.db
    flwr_home: Path | None = None  # default: <coordinator_dir>/state/flwr-home
    log_path: Path | None = None
    address: str | None = None  # what `flwr` dials; default from federation.toml

    def resolved(self) -> SuperLinkSettings:
        """A copy with the defaults filled in for the unset paths."""
        state = self.coordinator_dir / "state"
        return SuperLinkSettings(
            coordinator_dir=self.coordinator_dir,
            host=self.host,
            port=self.port,
            keep_state=self.keep_state,
            database=self.database or state / "superlink.db",
            flwr_home=self.flwr_home or state / "flwr-home",
            log_path=self.log_path or state / "superlink.log",
            address=self.address,
        )


def superlink_command(fed: FederationFile, s: SuperLinkSettings) -> list[str]:
    """The `flower-superlink` command line: TLS, SuperNode authentication, no installs.

    Flower's SuperLink is started through ``deploy.superlink_lean``, which skips its
    middleware layers for the requests they do not act on (half the CPU per request).

    Parameters
    ----------
    fed : FederationFile
        The provisioned federation (CA, SuperLink certificate and key).
    s : SuperLinkSettings
        Resolved settings (``keep_state``, ``database``, ``host``, ``port``).

    Returns
    -------
    list of str
        The program and its arguments.
    """
    return [
        *superlink_entry(sys.executable),
        "--ssl-ca-certfile",
        str(fed.ca_cert),
        "--ssl-certfile",
        str(fed.server_cert),
        "--ssl-keyfile",
        str(fed.server_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database",
        str(s.database) if s.keep_state else FLWR_IN_MEMORY_DB_NAME,
        "--host",
        s.host,
        "--port",
        str(s.port),
    ]


def wait_healthy(address: str, ca_cert: Path, timeout: float = 60.0, proc=None) -> float:
    """Poll https://address/health verifying the federation CA; return seconds waited.

    Parameters
    ----------
    address : str
        The SuperLink's host:port.
    ca_cert : Path
        The federation CA's certificate, which the SuperLink's must chain to.
    timeout : float
        Seconds to keep trying.
    proc : ManagedProcess, optional
        The SuperLink process; when it exits, polling stops at once.

    Returns
    -------
    float
        Seconds until the SuperLink answered.

    Raises
    ------
    CoordinatorError
        ``proc`` exited (its log's tail is in the message), or no answer within ``timeout``.
    """
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout:
        if proc is not None and not proc.alive():
            raise CoordinatorError(
                f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"https://{address}/health", context=ctx, timeout=2):
                return time.monotonic() - t0
        except (urllib.error.URLError, OSError) as err:
            last = err
            time.sleep(0.2)
    raise CoordinatorError(f"SuperLink at {address} not healthy after {timeout:.0f}s: {last}")


@dataclass
class Coordinator:
    """A provisioned SuperLink: started, stopped, and driven through the ``flwr`` CLI.

    Parameters
    ----------
    fed : FederationFile
        The provisioned federation.
    settings : SuperLinkSettings
        Resolved settings (see :meth:`SuperLinkSettings.resolved`).
    process : ManagedProcess, optional
        The running SuperLink, once :meth:`start` has run.
    startup_seconds : float
        How long :meth:`start` waited for the SuperLink to be healthy.
    """

    fed: FederationFile
    settings: SuperLinkSettings
    process: ManagedProcess | None = None
    startup_seconds: float = 0.0

    @property
    def address(self) -> str:
        """The host:port ``flwr`` dials (``settings.address``, else ``127.0.0.1:<port>``)."""
        return self.settings.address or f"127.0.0.1:{self.settings.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment of Flower's commands, with this coordinator's ``FLWR_HOME``."""
        return flower_env(self.settings.flwr_home)

    def start(self, timeout: float = 60.0) -> Coordinator:
        """Write the ``flwr`` connection, start the SuperLink and wait until it is healthy.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the SuperLink's health check.

        Returns
        -------
        Coordinator
            This coordinator, with ``process`` and ``startup_seconds`` set.

        Raises
        ------
        CoordinatorError
            The SuperLink exited or was not healthy within ``timeout``.
        """
        s = self.settings
        # open_coordinator's settings are resolved(): every path is set
        assert s.database is not None and s.flwr_home is not None and s.log_path is not None
        s.database.parent.mkdir(parents=True, exist_ok=True)
        write_connection(s.flwr_home, self.address, self.fed.ca_cert)
        env = {**self.env, SUPEREXEC_POLL_ENV: str(SUPEREXEC_POLL_INTERVAL)}
        self.process = spawn("flower-superlink", superlink_command(self.fed, s), env, s.log_path)
        self.startup_seconds = wait_healthy(
            self.address, self.fed.ca_cert, timeout=timeout, proc=self.process
        )
        self.process.remember_children()
        return self

    def stop(self) -> None:
        """Stop the SuperLink (and its SuperExec), if it was started."""
        if self.process is not None:
            self.process.stop()

    # -- flwr CLI wrappers
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run ``flwr *args`` in the coordinator's environment, its output captured.

        Parameters
        ----------
        *args : str
            The ``flwr`` arguments.
        timeout : float
            Seconds before ``subprocess.TimeoutExpired`` is raised.

        Returns
        -------
        subprocess.CompletedProcess
            The finished command; its exit code is not checked.
        """
        return subprocess.run(
            [str(bin_dir() / "flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def flwr_json(self, *args: str, timeout: float = 120.0) -> dict:
        """Run ``flwr *args --format json`` and parse the JSON object it prints.

        Parameters
        ----------
        *args : str
            The ``flwr`` arguments.
        timeout : float
            Seconds before ``subprocess.TimeoutExpired`` is raised.

        Returns
        -------
        dict
            The printed object; whether it reports success is for the caller to check.

        Raises
        ------
        CoordinatorError
            The output holds no JSON object.
        """
        proc = self.flwr(*args, "--format", "json", timeout=timeout)
        try:
            return json.loads(_last_json_object(proc.stdout))
        except ValueError as err:
            raise CoordinatorError(
                f"`flwr {' '.join(args)}` gave no JSON (exit {proc.returncode}):\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            ) from err

    def register_sites(self, sites: Sequence[str] | None = None) -> dict[str, str]:
        """Register the sites' public keys; idempotent ("already" for known keys).

        Parameters
        ----------
        sites : sequence of str, optional
            The sites to register; default every site of the federation.

        Returns
        -------
        dict of str to str
            Per site, its new node id, or ``"already"`` when its key was registered before.

        Raises
        ------
        CoordinatorError
            A site is not in the federation, or registering it failed.
        """
        out: dict[str, str] = {}
        for site in sites if sites is not None else sorted(self.fed.sites):
            if site not in self.fed.sites:
                raise CoordinatorError(f"site {site!r} is not in {self.fed.root}")
            res = self.flwr_json(
                "supernode", "register", str(self.fed.sites[site]), CONNECTION, "--name", site
            )
            if res.get("success"):
                out[site] = str(res.get("node-id"))
            elif "already in use" in str(res.get("error-message", "")):
                out[site] = "already"
            else:
                raise CoordinatorError(f"registering {site!r} failed: {res}")
        return out

    def list_nodes(self, timeout: float = 10.0) -> ListNodesResponse:
        """The Control API's ``ListNodes`` answer, asked in-process (no ``flwr`` process).

        Parameters
        ----------
        timeout : float
            Seconds to wait for the SuperLink.

        Raises
        ------
        CoordinatorError
            The SuperLink did not answer, refused, or answered something else.
        """
        try:
            verify = ssl.create_default_context(cafile=str(self.fed.ca_cert))
            with ControlHttpClient(
                f"https://{self.address}", verify=verify, timeout=timeout
            ) as client:
                return client.ListNodes(ListNodesRequest())
        except (httpx.HTTPError, ValueError, OSError) as err:
            raise CoordinatorError(
                f"the SuperLink at {self.address} did not list its nodes: {err}"
            ) from err

    def wait_nodes_online(self, count: int, timeout: float = 60.0) -> float:
        """Wait until at least ``count`` SuperNodes are online; return seconds waited.

        Parameters
        ----------
        count : int
            How many SuperNodes must be online.
        timeout : float
            Seconds to wait.

        Returns
        -------
        float
            Seconds until ``count`` were online.

        Raises
        ------
        CoordinatorError
            Fewer were online after ``timeout``.
        """
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            online = sum(n.status == "online" for n in self.list_nodes().nodes_info)
            if online >= count:
                return time.monotonic() - t0
            time.sleep(0.5)
        raise CoordinatorError(f"fewer than {count} SuperNodes online after {timeout:.0f}s")

    def submit(self, app_dir: str | Path, run_config: Mapping[str, object] | None = None) -> int:
        """Start a run of the Flower app in ``app_dir`` with `flwr run`; its run id.

        Parameters
        ----------
        app_dir : str or Path
            The Flower app's folder.
        run_config : mapping, optional
            Run config overrides, passed as ``--run-config`` (TOML values).

        Returns
        -------
        int
            The run's id.

        Raises
        ------
        CoordinatorError
            `flwr run` reported no started run.
        """
        args = ["run", str(app_dir), CONNECTION]
        if run_config:
            args += ["--run-config", _run_config_arg(run_config)]
        res = self.flwr_json(*args)
        if not res.get("success") or not res.get("run-id"):
            raise CoordinatorError(f"`flwr run` did not start a run: {res}")
        return int(res["run-id"])

    def run_status(self, run_id: int) -> dict:
        """The run's entry in `flwr ls` (``status`` such as ``finished:completed``).

        Parameters
        ----------
        run_id : int
            The run's id.

        Returns
        -------
        dict
            The run as `flwr ls --run-id` reports it.

        Raises
        ------
        CoordinatorError
            The run is not found.
        """
        res = self.flwr_json("ls", CONNECTION, "--run-id", str(run_id))
        runs = res.get("runs") or []
        if not res.get("success") or not runs:
            raise CoordinatorError(f"run {run_id} not found: {res}")
        return runs[0]

    def wait_run(self, run_id: int, timeout: float = 900.0, poll: float = 1.0) -> dict:
        """Wait until the run has finished, however it ended; its last status.

        One ``flwr log RUN --stream`` waits: the SuperLink ends the stream once the run is
        finished (it checks every 0.5 s), so no ``flwr`` process (about a second of CPU
        each) is started per poll. Should the stream end early (the SuperLink restarted),
        ``flwr ls`` is polled from ``poll`` seconds, doubling up to 8.

        Parameters
        ----------
        run_id : int
            The run's id.
        timeout : float
            Seconds to wait.
        poll : float
            First pause between status queries after an early end of the stream.

        Returns
        -------
        dict
            The run as :meth:`run_status` reports it, with a ``finished:…`` status.

        Raises
        ------
        CoordinatorError
            The run was not finished after ``timeout``, or is not found.
        """
        deadline = time.monotonic() + timeout
        try:
            self.flwr("log", str(run_id), CONNECTION, "--stream", timeout=timeout)
        except subprocess.TimeoutExpired:
            pass  # the status below says how far the run got
        while True:
            run = self.run_status(run_id)
            if str(run.get("status", "")).startswith(FINISHED):
                return run
            if time.monotonic() > deadline:
                raise CoordinatorError(f"run {run_id} not finished after {timeout:.0f}s: {run}")
            time.sleep(poll)
            poll = min(2 * poll, 8.0)

    def run_logs(self, run_id: int | str) -> str:
        """The run's ServerApp log, as `flwr log RUN --show` prints it."""
        return self.flwr("log", str(run_id), CONNECTION, "--show", timeout=120).stdout

    def run(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, object] | None = None,
        timeout: float = 900.0,
    ) -> dict:
        """Submit, wait, and raise unless the run finished:completed.

        Parameters
        ----------
        app_dir : str or Path
            The Flower app's folder.
        run_config : mapping, optional
            Run config overrides.
        timeout : float
            Seconds to wait for the run to finish.

        Returns
        -------
        dict
            The finished run as :meth:`run_status` reports it.

        Raises
        ------
        CoordinatorError
            The run did not start, did not finish in time, or ended otherwise than
            ``finished:completed`` (the run's log tail is in the message).
        """
        run_id = self.submit(app_dir, run_config)
        run = self.wait_run(run_id, timeout=timeout)
        if run.get("status") != COMPLETED:
            logs = self.run_logs(run_id)
            raise CoordinatorError(
                f"run {run_id} ended {run.get('status')}: {run.get('status-details')}\n"
                f"{logs[-4000:]}"
            )
        return run


def _last_json_object(text: str) -> str:
    """`flwr … --format json` prints one JSON object, sometimes after other text."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object")
    return text[start:]


def _run_config_arg(run_config: Mapping[str, object]) -> str:
    return " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())


def open_coordinator(
    coordinator_dir: str | Path, host: str = "0.0.0.0", port: int | None = None, **kw
) -> Coordinator:
    """A Coordinator for a provisioned folder (not started).

    Parameters
    ----------
    coordinator_dir : str or Path
        The provisioned coordinator folder.
    host : str
        Where the SuperLink listens.
    port : int, optional
        Its port; default the port of ``federation.toml``'s SuperLink address.
    **kw
        Further :class:`SuperLinkSettings` fields (``database``, ``flwr_home``,
        ``log_path``, ``address``). Without ``address``, ``flwr`` dials the host of
        ``federation.toml``'s SuperLink address with ``port``.
    """
    fed = load_federation(coordinator_dir)
    if port is None:
        port = int(fed.superlink_address.rsplit(":", 1)[1])
    settings = SuperLinkSettings(
        coordinator_dir=Path(coordinator_dir), host=host, port=port, **kw
    ).resolved()
    if settings.address is None:
        settings.address = fed.superlink_address.rsplit(":", 1)[0] + f":{port}"
    return Coordinator(fed=fed, settings=settings)
