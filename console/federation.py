"""The federation page's data: provisioned sites, the SuperLink's nodes, ε per site."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from console.runs import RunSummary
from deploy.provision import ProvisionError, load_federation
from deploy.superlink import CONNECTION, CoordinatorError, open_coordinator

# `flwr supernode list` answers in about a second; a stuck SuperLink must not hang a page.
SUPERLINK_TIMEOUT = 15.0


@dataclass(frozen=True)
class NodeRow:
    """A SuperNode as the SuperLink reports it.

    Parameters
    ----------
    node_id : str
        Its node id.
    status : str
        ``online``, ``offline`` or ``registered`` (never connected).
    last_seen : str
        When it came online (online) or went offline (offline); '' when never.
    """

    node_id: str
    status: str
    last_seen: str


@dataclass(frozen=True)
class SiteRow:
    """A site and its ε spent in the newest run.

    Parameters
    ----------
    name : str
        The site's name.
    provisioned : bool
        Whether the coordinator's federation file lists it.
    epsilon_spent : float or None
        Its ε as it last reported it in the newest run (None: not in that run).
    """

    name: str
    provisioned: bool
    epsilon_spent: float | None


@dataclass(frozen=True)
class FederationView:
    """The federation page.

    Parameters
    ----------
    federation : str
        Its name ('' without a coordinator folder).
    newest_run : str
        The run the ε figures come from ('' when there is none).
    sites : list of SiteRow
        Provisioned sites and sites of the newest run.
    nodes : list of NodeRow
        The SuperLink's SuperNodes (empty without a SuperLink).
    superlink : str
        Where the nodes come from, or why there are none.
    """

    federation: str
    newest_run: str
    sites: list[SiteRow]
    nodes: list[NodeRow]
    superlink: str

    def count(self, status: str) -> int:
        """How many nodes have ``status``.

        Parameters
        ----------
        status : str
            ``online``, ``offline`` or ``registered``.
        """
        return sum(1 for n in self.nodes if n.status == status)


def superlink_nodes(coordinator_dir: Path) -> tuple[list[NodeRow], str]:
    """The SuperLink's nodes via `flwr supernode list`, and where they came from (or why not).

    Parameters
    ----------
    coordinator_dir : Path
        The coordinator's provisioned folder.
    """
    try:
        coordinator = open_coordinator(coordinator_dir)
        nodes = coordinator.flwr_json("supernode", "list", CONNECTION, timeout=SUPERLINK_TIMEOUT)
    except (ProvisionError, CoordinatorError, OSError, subprocess.TimeoutExpired) as err:
        return [], f"SuperLink not reachable: {err}"
    if not nodes.get("success"):
        return [], f"SuperLink refused the listing: {nodes.get('error-message', nodes)}"
    rows = []
    for node in nodes.get("nodes", []):
        status = str(node.get("status", ""))
        seen = node.get("online-at") if status == "online" else node.get("offline-at")
        rows.append(NodeRow(str(node.get("node-id")), status, str(seen or "")))
    return rows, f"SuperLink at {coordinator.address}"


def federation_view(coordinator_dir: Path | None, newest: RunSummary | None) -> FederationView:
    """Sites (provisioned and in the newest run) with their ε, and the SuperLink's nodes.

    Parameters
    ----------
    coordinator_dir : Path or None
        The coordinator's provisioned folder; None for a researcher's simulations.
    newest : RunSummary or None
        The newest run.
    """
    name, provisioned = "", []
    nodes: list[NodeRow] = []
    superlink = "no coordinator folder configured (--coordinator-dir)"
    if coordinator_dir is not None:
        try:
            fed = load_federation(coordinator_dir)
            name, provisioned = fed.federation, sorted(fed.sites)
        except ProvisionError as err:
            superlink = f"coordinator folder unreadable: {err}"
        else:
            nodes, superlink = superlink_nodes(coordinator_dir)
    spent = newest.epsilon_spent if newest else {}
    sites = [
        SiteRow(site, site in provisioned, spent.get(site))
        for site in sorted({*provisioned, *spent})
    ]
    return FederationView(name, newest.name if newest else "", sites, nodes, superlink)
