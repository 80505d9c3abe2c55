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
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomli_w

from deploy.process import ManagedProcess, bin_dir, spawn
from deploy.superlink import flower_env
from models.data.kinds.registry import get_kind, load_schema
from models.data.schema import SchemaError
from models.data.site_config import SiteConfigError
from models.data.tables import DataProblem, SiteDataError
from privacy.ledger import PrivacyLedger


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
        The most ε this site spends on its data, and δ of its accounting.
    runtime_port : int
        Loopback port of the SuperNode's local Runtime API.
    extra_node_config : dict
        `[node-config]` entries passed to the ClientApp as they are.
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
        cfg.update(self.extra_node_config)
        return cfg


def _resolve(base: Path, value: str | None) -> Path | None:
    if not value:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


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
        epsilon_budget=float(data.get("privacy", {}).get("epsilon-budget", 8.0)),
        delta=float(data.get("privacy", {}).get("delta", 1e-5)),
        runtime_port=int(data.get("supernode", {}).get("runtime-port", 9094)),
        extra_node_config=dict(data.get("node-config", {})),
    )
    for label, p in (
        ("root-certificates", cfg.root_certificates),
        ("private-key", cfg.private_key),
    ):
        if not p.exists():
            raise SiteConfigError(f"{path}: {label} {p} does not exist")
    return cfg


def supernode_command(cfg: SiteConfig, node_config_file: Path) -> list[str]:
    """`flower-supernode` with TLS to the SuperLink, this site's key and node config."""
    return [
        str(bin_dir() / "flower-supernode"),
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


def write_node_config(cfg: SiteConfig, overrides: Mapping[str, object] | None = None) -> Path:
    """Write the ClientApp's node config (plus ``overrides``) into the state folder."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    node_cfg = cfg.node_config
    node_cfg.update(overrides or {})
    path = cfg.state_dir / "node-config.toml"
    path.write_text(tomli_w.dumps(node_cfg))
    return path


def start_site(
    cfg: SiteConfig,
    overrides: Mapping[str, object] | None = None,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
) -> ManagedProcess:
    """Start this site's SuperNode in the background; the caller stops it by PID.

    Parameters
    ----------
    cfg : SiteConfig
        The site.
    overrides : mapping, optional
        Node-config entries replacing the site file's.
    max_retries, max_wait_time : optional
        How often / how long the SuperNode retries the SuperLink before it gives up
        (default: for ever).
    """
    node_cfg = write_node_config(cfg, overrides)
    cmd = supernode_command(cfg, node_cfg)
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    env = flower_env(cfg.state_dir / "flwr-home")
    return spawn(f"supernode[{cfg.name}]", cmd, env, cfg.state_dir / "supernode.log")


# ---------------------------------------------------------------- site check and budget


@dataclass(frozen=True)
class SiteCheck:
    """What `fedcare site check` found.

    Parameters
    ----------
    rows : int
        Examples in the site's data (0 when it could not be read).
    label_counts : dict
        Examples per class (classification), empty otherwise.
    problems : list of str
        Everything wrong with the data or the schema, by row and column where known.
    budget : dict
        The privacy ledger's summary (see ``PrivacyLedger.summary``).
    """

    rows: int
    label_counts: dict[str, int]
    problems: list[str]
    budget: dict

    @property
    def ok(self) -> bool:
        """Whether the check found no problem."""
        return not self.problems


def site_ledger(cfg: SiteConfig) -> PrivacyLedger:
    """The site's privacy ledger (in its state folder), read-only use."""
    return PrivacyLedger(cfg.state_dir, cfg.epsilon_budget, cfg.delta)


def check_site(cfg: SiteConfig) -> SiteCheck:
    """Validate the site's data against the federation's schema, as the ClientApp will."""
    problems: list[str] = []
    rows, labels = 0, {}
    if cfg.data_path is None or cfg.schema_path is None:
        problems.append(f"{cfg.path}: [data] path and schema are required")
    else:
        try:
            schema = load_schema(cfg.schema_path)
            examples = get_kind(schema).load(cfg.data_path, schema)
            rows = examples.num_examples
            stats = examples.statistics(np.arange(rows))
            labels = {k: int(v) for k, v in sorted(stats.label_counts.items())}
        except SiteDataError as err:
            problems += [str(p) for p in err.problems]
        except (SchemaError, OSError) as err:
            problems.append(str(DataProblem(str(cfg.data_path), None, None, str(err))))
    return SiteCheck(rows, labels, problems, site_ledger(cfg).summary())
