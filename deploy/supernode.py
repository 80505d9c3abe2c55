"""The hospital agent: `fedcare site check | start | budget` for one site's folder.

A site's folder, as `fedcare provision` makes it (see deploy/provision.py):

    site.toml   ca.crt   auth.key   auth.pub   signing.pub   state/

`site check` validates the site's data against the federation's schema (the same check the
ClientApp makes before every round) and shows the privacy budget. `site budget` shows ε
spent per federation and run. `site start` runs `flower-supernode` with TLS (the federation
CA as root certificate), the site's authentication key, and the site's settings passed to
the ClientApp as node config (`--node-config state/node-config.toml`). Only outbound HTTPS
to the SuperLink is needed; the SuperNode's own Runtime API listens on loopback
(`[supernode] runtime-port`).

By default the site runs warm: `flower-supernode --isolation process` plus the site's own
executor (deploy/site_runtime.py), which imports the ClientApp once, forks a child per
message and runs only runs whose app is in `[runtime] approved-apps`. The SuperNode nudges
the executor when a message has arrived by a UDP datagram to the runtime port's number on
loopback (deploy/task_signal.py).
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import tomli_w
from flwr.proto.fleet_pb2 import DeactivateNodeRequest  # pylint: disable=E0611
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

from deploy.process import ManagedProcess, alive, bin_dir, spawn
from deploy.site_check import DEFAULT_MIN_ROWS, SiteCheck, check_site_data
from deploy.site_runtime import DEFAULT_CLIENT_APP, DEFAULT_TASK_POLL_INTERVAL, executor_command
from deploy.superlink import flower_env
from deploy.supernode_poll import DEFAULT_SUPERNODE_POLL_INTERVAL, supernode_entry
from models.data.site_config import SiteConfigError
from privacy.ledger import PrivacyLedger
from privacy.pki import load_node_auth_private_key

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NODE_ID_RE = re.compile(r"SuperNode ID: (\d+)")  # what flower-supernode logs on activation
# Where fedcare's packages are: the executor imports the site's ClientApp from here.
FEDCARE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SiteConfig:
    """A site's `site.toml`, paths resolved against the file's folder.

    Parameters
    ----------
    path : Path
        The file itself.
    name, federation : str
        This site's and its federation's names (as provisioned).
    superlink : str
        host:port of the coordinator's SuperLink (outbound HTTPS).
    root_certificates, private_key : Path
        The federation CA and this site's SuperNode authentication key.
    data_path, schema_path : Path or None
        The site's records and the federation's schema.
    state_dir : Path
        The privacy ledger and the SuperNode's files; back it up.
    epsilon_budget, delta : float
        The most ε this site spends on its data over its lifetime, and δ of its accounting.
    runtime_port : int
        Loopback port of the SuperNode's local Runtime API.
    extra_node_config : dict
        `[node-config]` entries passed to the ClientApp as they are.
    epsilon_per_run, epsilon_per_federation : float or None
        Optional caps on ε spent by one run and by one federation (``[privacy]``
        ``epsilon-per-run``, ``epsilon-per-federation``); None: no such cap is passed.
    approved_apps : tuple of str
        sha256 digests of the FABs this site takes part in (``[runtime] approved-apps``).
    client_app : str
        The site's installed ClientApp, ``module:attribute`` (``[runtime] client-app``).
    task_poll_interval : float
        Seconds between the site executor's task requests while idle.
    supernode_poll_interval : float
        The most the warm runtime's SuperNode pauses between asking the SuperLink for a
        message and between looks for a stored reply (``[runtime]
        supernode-poll-interval``; Flower's own pauses are 3 s and 0.5 s).
    """

    path: Path
    name: str
    federation: str
    superlink: str
    root_certificates: Path
    private_key: Path
    data_path: Path | None
    schema_path: Path | None
    state_dir: Path
    epsilon_budget: float
    delta: float
    runtime_port: int
    extra_node_config: dict = field(default_factory=dict)
    epsilon_per_run: float | None = None
    epsilon_per_federation: float | None = None
    approved_apps: tuple[str, ...] = ()
    client_app: str = DEFAULT_CLIENT_APP
    task_poll_interval: float = DEFAULT_TASK_POLL_INTERVAL
    supernode_poll_interval: float = DEFAULT_SUPERNODE_POLL_INTERVAL

    @property
    def node_config(self) -> dict:
        """What the ClientApp reads from `context.node_config` (see client/site.py)."""
        cfg = {
            "site-name": self.name,
            "federation": self.federation,
            "data-path": str(self.data_path or ""),
            "schema-path": str(self.schema_path or ""),
            "state-dir": str(self.state_dir),
            "epsilon-budget": float(self.epsilon_budget),
            "delta": float(self.delta),
        }
        for key, cap in (
            ("epsilon-per-run", self.epsilon_per_run),
            ("epsilon-per-federation", self.epsilon_per_federation),
        ):
            if cap is not None:
                cfg[key] = float(cap)
        cfg.update(self.extra_node_config)
        return cfg


def _resolve(base: Path, value: str | None) -> Path | None:
    if not value:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _approved_apps(path: Path, value: object) -> tuple[str, ...]:
    """``[runtime] approved-apps``: a list of FAB sha256 hex digests."""
    if not isinstance(value, list) or not all(
        isinstance(v, str) and SHA256_RE.match(v) for v in value
    ):
        raise SiteConfigError(
            f"{path}: [runtime] approved-apps must be a list of FAB sha256 hex digests "
            "(64 lower-case hex characters each)"
        )
    return tuple(value)


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and check `site.toml`; raises :class:`SiteConfigError` naming what is wrong."""
    path = Path(path).resolve()
    if not path.exists():
        raise SiteConfigError(f"{path} not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SiteConfigError(f"{path}: not valid TOML: {err}") from err
    base = path.parent

    def need(table: str, key: str):
        try:
            return data[table][key]
        except KeyError:
            raise SiteConfigError(f"{path}: [{table}] {key} is required") from None

    privacy, runtime = data.get("privacy", {}), data.get("runtime", {})
    cfg = SiteConfig(
        path=path,
        name=str(need("site", "name")),
        federation=str(need("site", "federation")),
        superlink=str(need("superlink", "address")),
        root_certificates=_resolve(base, need("superlink", "root-certificates")),
        private_key=_resolve(base, need("auth", "private-key")),
        data_path=_resolve(base, data.get("data", {}).get("path")),
        schema_path=_resolve(base, data.get("data", {}).get("schema")),
        state_dir=_resolve(base, data.get("state", {}).get("dir", "state")),
        epsilon_budget=float(privacy.get("epsilon-budget", 8.0)),
        delta=float(privacy.get("delta", 1e-5)),
        runtime_port=int(data.get("supernode", {}).get("runtime-port", 9094)),
        extra_node_config=dict(data.get("node-config", {})),
        epsilon_per_run=_optional_float(privacy.get("epsilon-per-run")),
        epsilon_per_federation=_optional_float(privacy.get("epsilon-per-federation")),
        approved_apps=_approved_apps(path, runtime.get("approved-apps", [])),
        client_app=str(runtime.get("client-app", DEFAULT_CLIENT_APP)),
        task_poll_interval=float(runtime.get("task-poll-interval", DEFAULT_TASK_POLL_INTERVAL)),
        supernode_poll_interval=float(
            runtime.get("supernode-poll-interval", DEFAULT_SUPERNODE_POLL_INTERVAL)
        ),
    )
    for label, p in (
        ("root-certificates", cfg.root_certificates),
        ("private-key", cfg.private_key),
    ):
        if not p.exists():
            raise SiteConfigError(f"{path}: {label} {p} does not exist")
    return cfg


def supernode_command(cfg: SiteConfig, node_config_file: Path, warm: bool = True) -> list[str]:
    """`flower-supernode` with TLS to the SuperLink, this site's key and node config.

    Parameters
    ----------
    cfg : SiteConfig
        The site.
    node_config_file : Path
        The ClientApp's node config (see :func:`write_node_config`).
    warm : bool
        The warm runtime: Flower's SuperNode started through deploy/supernode_poll.py
        (its pauses capped at ``supernode_poll_interval``) with ``--isolation process``,
        so that the site's own executor runs the ClientApp (see deploy/site_runtime.py).
        Otherwise Flower's defaults: `flower-supernode` as it is, which starts a
        `flwr-clientapp` process, installing and importing the run's FAB, per message.
    """
    args = [
        "--superlink",
        cfg.superlink,
        "--root-certificates",
        str(cfg.root_certificates),
        "--auth-supernode-private-key",
        str(cfg.private_key),
        "--host",
        "127.0.0.1",
        "--port",
        str(cfg.runtime_port),
        "--node-config",
        str(node_config_file),
    ]
    if not warm:
        return [str(bin_dir() / "flower-supernode"), *args]
    # The nudges go to the runtime port's number, over UDP: the site owns that number.
    entry = supernode_entry(sys.executable, cfg.supernode_poll_interval, cfg.runtime_port)
    return [*entry, *args, "--isolation", "process"]


def write_node_config(cfg: SiteConfig, overrides: Mapping[str, object] | None = None) -> Path:
    """Write the ClientApp's node config (plus ``overrides``) into the state folder."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    node_cfg = cfg.node_config
    node_cfg.update(overrides or {})
    path = cfg.state_dir / "node-config.toml"
    path.write_text(tomli_w.dumps(node_cfg))
    return path


class SiteAlreadyRunning(RuntimeError):
    """The SuperNode last started from the same state folder is still running."""


def release_stale_session(cfg: SiteConfig) -> bool:
    """After a crash, tell the SuperLink that this site's previous SuperNode is gone.

    The SuperLink refuses to activate a key it counts as online, and counts a SuperNode
    that stopped without saying goodbye as online until its heartbeats are missing for
    2 × 30 s (hard-coded in flwr 1.41: ``HEARTBEAT_DEFAULT_INTERVAL``,
    ``HEARTBEAT_PATIENCE``). A SuperNode deactivates itself when it stops; this sends that
    deactivation for one that was killed, signed with the site's own key (the SuperLink
    accepts it only for the node id registered with that key), so a restart takes part at
    once.

    Parameters
    ----------
    cfg : SiteConfig
        The site; its node id is read from its SuperNode's log in the state folder.

    Returns
    -------
    bool
        Whether the SuperLink deactivated a node (False: none known, or not online).
    """
    log = cfg.state_dir / "supernode.log"
    node_ids = NODE_ID_RE.findall(log.read_text(errors="replace")) if log.exists() else []
    if not node_ids:
        return False
    key = load_node_auth_private_key(cfg.private_key.read_bytes())
    interceptors: list[ProtobufClientInterceptor] = [
        RuntimeVersionHttpInterceptor(component_name="SuperNode"),
        NodeAuthHttpInterceptor(key, key.public_key()),
    ]
    try:
        with FleetHttpClient.from_server_address(
            cfg.superlink, False, str(cfg.root_certificates), interceptors=interceptors
        ) as client:
            client.DeactivateNode(DeactivateNodeRequest(node_id=int(node_ids[-1])))
    except httpx.HTTPError:
        return False  # already offline, or the SuperLink is unreachable: nothing to undo
    return True


def start_site(
    cfg: SiteConfig,
    overrides: Mapping[str, object] | None = None,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    warm: bool = True,
) -> ManagedProcess:
    """Start this site's SuperNode (and its executor) in the background; stop it by PID.

    Parameters
    ----------
    cfg : SiteConfig
        The site.
    overrides : mapping, optional
        Node-config entries replacing the site file's.
    max_retries, max_wait_time : optional
        How often / how long the SuperNode retries the SuperLink before it gives up
        (default: for ever).
    warm : bool
        Run the warm site runtime (default): the SuperNode with ``--isolation process``
        and the site executor as its companion process, which exits when the SuperNode
        does and is stopped (or killed) with it. ``False``: Flower's default isolation.

    Returns
    -------
    ManagedProcess
        The SuperNode; the executor is in its ``companions``.

    Raises
    ------
    SiteAlreadyRunning
        The SuperNode last started from this state folder still runs.
    """
    pid_file = cfg.state_dir / "supernode.pid"
    if pid_file.exists() and alive(int(pid_file.read_text())):
        raise SiteAlreadyRunning(
            f"site {cfg.name}'s SuperNode runs already (PID {pid_file.read_text()})"
        )
    release_stale_session(cfg)
    node_cfg = write_node_config(cfg, overrides)
    cmd = supernode_command(cfg, node_cfg, warm)
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    env = flower_env(cfg.state_dir / "flwr-home")
    supernode = spawn(
        f"supernode[{cfg.name}]", cmd, env, cfg.state_dir / "supernode.log", cwd=FEDCARE_ROOT
    )
    pid_file.write_text(str(supernode.pid))
    if warm:
        executor = executor_command(
            sys.executable,
            f"127.0.0.1:{cfg.runtime_port}",
            cfg.name,
            cfg.approved_apps,
            cfg.client_app,
            cfg.task_poll_interval,
            supernode.pid,
            task_signal_port=cfg.runtime_port,
            node_config=node_cfg,
        )
        supernode.companions.append(
            spawn(
                f"site-executor[{cfg.name}]",
                executor,
                env,
                cfg.state_dir / "executor.log",
                cwd=FEDCARE_ROOT,
            )
        )
    return supernode


# ---------------------------------------------------------------- site check and budget


def site_ledger(cfg: SiteConfig) -> PrivacyLedger:
    """The site's privacy ledger (in its state folder) with its caps, read-only use."""
    return PrivacyLedger(
        cfg.state_dir,
        cfg.epsilon_budget,
        cfg.delta,
        epsilon_per_run=cfg.epsilon_per_run,
        epsilon_per_federation=cfg.epsilon_per_federation,
    )


def check_site(cfg: SiteConfig, min_rows: int = DEFAULT_MIN_ROWS) -> SiteCheck:
    """Validate the site's data as the ClientApp will (:mod:`deploy.site_check`), with its budget.

    Parameters
    ----------
    cfg : SiteConfig
        The site.
    min_rows : int
        The fewest examples the site may have.
    """
    budget, apps = site_ledger(cfg).summary(), cfg.approved_apps
    if cfg.data_path is None or cfg.schema_path is None:
        return SiteCheck(0, {}, [f"{cfg.path}: [data] path and schema are required"], budget, apps)
    checked = check_site_data(cfg.data_path, cfg.schema_path, cfg.delta, min_rows=min_rows)
    return replace(checked, budget=budget, approved_apps=apps)
