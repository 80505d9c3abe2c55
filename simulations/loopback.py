"""A real deployed federation on one machine, all on loopback.

Provisioned keys, a SuperLink with TLS and SuperNode authentication, one SuperNode per
hospital (with the warm site runtime, each approving fedcare's own app as provisioned).

Used by tests/e2e/test_deploy_loopback.py and benchmarks/deployed_round.py. Every process is
started in its own process group and stopped by PID in :meth:`LoopbackFederation.stop`.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from deploy.process import ManagedProcess, alive, free_loopback_port
from deploy.provision import FEDCARE_APP, provision
from deploy.site_supervisor import supervise_site
from deploy.superlink import Coordinator, open_coordinator
from deploy.supernode import load_site_config, start_site
from server.settings import RunSettings
from simulations.prepare import prepare_simulation


def snapshot_app(dest: Path, source: Path = FEDCARE_APP) -> tuple[Path, str]:
    """Freeze the app: unpack its FAB into ``dest``; the folder and the FAB's hash.

    Runs submitted from the snapshot carry the hash the sites approved at provisioning,
    whatever is edited in ``source`` meanwhile (a rebuild of the unpacked files gives the
    same bytes: Flower's build is reproducible).

    Parameters
    ----------
    dest : Path
        A new folder, named like the app (``flwr run`` takes its name as the project's).
    source : Path
        The app's folder; default fedcare's own.
    """
    fab = build_fab_from_disk(source)
    with zipfile.ZipFile(io.BytesIO(fab)) as bundle:
        members = [n for n in bundle.namelist() if not n.startswith(".info/")]
        bundle.extractall(dest, members)
    return dest, hashlib.sha256(fab).hexdigest()


def fill_site_file(
    path: Path,
    data: Path,
    schema: Path,
    runtime_port: int,
    epsilon_budget: float = 8.0,
    epsilon_per_run: float | None = None,
) -> None:
    """What a hospital's IT team does to the provisioned site.toml: point it at the data.

    Parameters
    ----------
    path : Path
        The site's ``site.toml``.
    data, schema : Path
        The site's records and the federation's schema.
    runtime_port : int
        A free loopback port for the SuperNode's Runtime API.
    epsilon_budget : float
        The site's ε budget over all runs; also its per-federation cap.
    epsilon_per_run : float, optional
        The most one run may spend (each run plans its noise to fit it); by default the
        whole budget.
    """
    text = path.read_text()
    text = re.sub(r'(?m)^path = ""', f'path = "{data}"', text)
    text = re.sub(r'(?m)^schema = ""', f'schema = "{schema}"', text)
    text = re.sub(r"(?m)^runtime-port = \d+", f"runtime-port = {runtime_port}", text)
    per_run = epsilon_budget if epsilon_per_run is None else epsilon_per_run
    for key, value in (
        ("epsilon-budget", epsilon_budget),
        ("epsilon-per-run", per_run),
        ("epsilon-per-federation", epsilon_budget),
    ):
        text = re.sub(rf"(?m)^{key} = \S+", f"{key} = {value}", text)
    path.write_text(text)


@dataclass
class LoopbackFederation:
    """A provisioned federation, its coordinator and every process started for it.

    Parameters
    ----------
    root : Path
        Holds ``fed/`` (what provisioning made) and ``data/`` (the hospitals' files).
    coordinator : Coordinator
        The SuperLink (started by :func:`start_loopback_federation`).
    app : Path
        The snapshot of fedcare's app the sites approve (:func:`snapshot_app`): submit it.
    schema, test_set : Path
        The federation's schema and the coordinator's held-out test set (or None).
    node_ids : dict of str to str
        Each registered site's SuperLink node id (or ``"already"``).
    nodes : dict of str to ManagedProcess
        Each site's running SuperNode.
    stopped : list of ManagedProcess
        SuperNodes replaced by a restart (still stopped by :meth:`stop`).
    supervisors : list of threading.Thread
        The threads of sites run as `fedcare site start` runs them (:meth:`supervise`).
    """

    root: Path
    coordinator: Coordinator
    app: Path
    schema: Path
    test_set: Path | None
    node_ids: dict[str, str] = field(default_factory=dict)  # site -> SuperLink node id
    nodes: dict[str, ManagedProcess] = field(default_factory=dict)
    stopped: list[ManagedProcess] = field(default_factory=list)
    supervisors: list[threading.Thread] = field(default_factory=list)
    _stop_supervisors: threading.Event = field(default_factory=threading.Event)

    def site_file(self, site: str) -> Path:
        """The provisioned ``site.toml`` of ``site``."""
        return self.root / "fed" / "sites" / site / "site.toml"

    def start(self, site: str, **kw) -> ManagedProcess:
        """(Re)start a site's SuperNode; ``kw`` as for :func:`deploy.supernode.start_site`."""
        process = start_site(load_site_config(self.site_file(site)), **kw)
        if site in self.nodes:
            self.stopped.append(self.nodes[site])
        self.nodes[site] = process
        return process

    def supervise(self, site: str, warm: bool = True) -> None:
        """Run a site as `fedcare site start` does: its SuperNode restarted once it had joined.

        :func:`deploy.site_supervisor.supervise_site` in a thread; each SuperNode it starts
        becomes ``nodes[site]`` (the one before goes to ``stopped``). :meth:`stop` ends it.
        """

        def started(process: ManagedProcess) -> None:
            if site in self.nodes:
                self.stopped.append(self.nodes[site])
            self.nodes[site] = process

        cfg = load_site_config(self.site_file(site))
        thread = threading.Thread(
            target=supervise_site,
            args=(cfg, self._stop_supervisors),
            kwargs={"warm": warm, "on_start": started},
            name=f"supervise[{site}]",
            daemon=True,
        )
        thread.start()
        self.supervisors.append(thread)

    def run_config(self, out: str, **extra: object) -> dict[str, object]:
        """A deployment run config writing to ``root/out``; ``extra`` overrides keys."""
        config: dict[str, object] = {
            "mode": "deployment",
            "federation": "loop",
            "schema-path": str(self.schema),
            "signing-key": str(self.root / "fed" / "coordinator" / "signing.key"),
            "out-dir": str(self.root / out),
            "min-sites": 2,
            "round-timeout": 90.0,
            # the deployment tests exercise the sites' noisy statistics release too
            "statistics-epsilon-share": 0.2,
        }
        if self.test_set is not None:
            config["test-path"] = str(self.test_set)
        config.update(extra)
        return config

    def stop(self) -> list[int]:
        """Stop every process started here, by PID; return the PIDs still alive (none)."""
        self._stop_supervisors.set()
        for thread in self.supervisors:
            thread.join(timeout=60)
        processes = [*self.nodes.values(), *self.stopped]
        if self.coordinator.process is not None:
            processes.append(self.coordinator.process)
        pids: list[int] = []
        for process in processes:
            process.remember_children()
            for each in (process, *process.companions):
                pids += [each.pid, *each.known_children]
            process.stop()
        return [pid for pid in pids if alive(pid)]


def start_loopback_federation(
    root: Path,
    sites: list[str],
    extra_sites: tuple[str, ...] = (),
    epsilon_budget: float = 8.0,
    warm: bool = True,
    epsilon_per_run: float | None = None,
    keep_coordinator_state: bool = False,
    supervised: bool = False,
) -> LoopbackFederation:
    """Provision a federation, split the data among its sites and start it.

    Snapshots fedcare's app (the sites approve its hash), provisions ``sites`` (and
    ``extra_sites``, not registered or started), splits
    scikit-learn's breast cancer data among ``sites``, starts the SuperLink, registers
    ``sites`` and starts their SuperNodes, each with ``epsilon_budget``. The caller calls
    :meth:`LoopbackFederation.stop` when done (also on failure); a failure while starting
    stops what was started and re-raises.

    Parameters
    ----------
    root : Path
        The folder for ``fed/`` (provisioning) and ``data/`` (the hospitals' files).
    sites : list of str
        The sites to provision, register and start.
    extra_sites : tuple of str
        Sites provisioned only (to register or start later).
    epsilon_budget : float
        Each started site's ε budget over all runs.
    epsilon_per_run : float, optional
        Each started site's cap per run (by default the whole budget).
    warm : bool
        Start the sites with the warm site runtime (default) or Flower's default
        isolation (one ``flwr-clientapp`` process per message).
    keep_coordinator_state : bool
        The SuperLink's state on disk (``--keep-state``) instead of in memory.
    supervised : bool
        Run the sites as `fedcare site start` does (:meth:`LoopbackFederation.supervise`).

    Returns
    -------
    LoopbackFederation
        The running federation.
    """
    port = free_loopback_port()
    app, app_hash = snapshot_app(root / "app" / "fedcare")
    provision("loop", [*sites, *extra_sites], root / "fed", port=port, approved_apps=[app_hash])
    layout = prepare_simulation(RunSettings(sites=len(sites)), root / "data")
    for site, entry in zip(sites, layout.sites, strict=True):
        fill_site_file(
            root / "fed" / "sites" / site / "site.toml",
            Path(entry["data-path"]),
            layout.schema_path,
            free_loopback_port(),
            epsilon_budget,
            epsilon_per_run,
        )
    coordinator = open_coordinator(
        root / "fed" / "coordinator", host="127.0.0.1", keep_state=keep_coordinator_state
    )
    federation = LoopbackFederation(root, coordinator, app, layout.schema_path, layout.test_path)
    try:
        coordinator.start()
        federation.node_ids = coordinator.register_sites(sites)
        for site in sites:
            if supervised:
                federation.supervise(site, warm=warm)
            else:
                federation.start(site, warm=warm)
        coordinator.wait_nodes_online(len(sites), timeout=300)
        for process in federation.nodes.values():
            process.remember_children()  # their SuperExecs, whatever becomes of the parent
    except BaseException:
        federation.stop()
        raise
    return federation
