"""The federation page's data: each site's SuperNode state and the ε it last reported.

A site is matched to its SuperLink node by the key it authenticates with: the
fingerprint ``fedcare provision`` wrote for the site into ``federation.toml`` against the
fingerprint of the key the SuperLink registered (``deploy.nodes``). Nodes whose key is
no provisioned site's are listed apart.

A site's ε is what it released itself: the ε (over everything it ever released) in its
last training reply of the newest run it took part in, as that run's ``report.json`` (or,
while the run goes on, its checkpoint) records it. What is left is what the site said is
left of its lifetime budget in that reply; for replies without it (older sites), what the
run's one budget for all sites leaves (a simulation), else unknown. A site's per-run and
per-federation caps stay with it (``fedcare site budget`` and its own console).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from console.runs import RunSummary
from deploy.nodes import OFFLINE, ONLINE, REGISTERED, UNREGISTERED, SuperLinkNode, list_nodes
from deploy.provision import FederationFile, ProvisionError, load_federation
from deploy.superlink import CoordinatorError, open_coordinator

# A SuperLink that does not answer must not hang a page.
SUPERLINK_TIMEOUT = 10.0
NEVER_CONNECTED = "registered, never connected"
NOT_REGISTERED = "not registered"
UNREACHABLE = "unknown (SuperLink not reachable)"
NO_SUPERLINK = "no SuperLink configured"
NOT_PROVISIONED = "not provisioned here"
STATUS_TEXT = {REGISTERED: NEVER_CONNECTED, UNREGISTERED: NOT_REGISTERED}


@dataclass(frozen=True)
class SiteEpsilon:
    """A site's ε as it last reported it.

    Parameters
    ----------
    spent : float
        Its ε over everything it ever released, from its last training reply.
    left : float or None
        The run's budget minus ``spent`` when the run set one budget for all sites.
    run : str
        The run folder the figures come from.
    """

    spent: float
    left: float | None
    run: str


@dataclass(frozen=True)
class SiteRow:
    """A site on the federation page.

    Parameters
    ----------
    name : str
        The site's name.
    provisioned : bool
        Whether ``federation.toml`` lists it.
    status : str
        ``online``, ``offline``, ``registered, never connected``, ``not registered``,
        or why it is unknown.
    last_seen : str
        Online: its last heartbeat; offline: when it went offline; else ''.
    online_since : str
        When it last came online ('' when never).
    node_id : str
        Its SuperLink node id ('' when it has none).
    epsilon : SiteEpsilon or None
        Its ε as it last reported it (None: in no run).
    """

    name: str
    provisioned: bool
    status: str
    last_seen: str
    online_since: str
    node_id: str
    epsilon: SiteEpsilon | None


@dataclass(frozen=True)
class FederationView:
    """The federation page.

    Parameters
    ----------
    federation : str
        Its name ('' without a coordinator folder).
    sites : list of SiteRow
        Provisioned sites and the sites of any run.
    strangers : list of SuperLinkNode
        Nodes whose key is no provisioned site's.
    superlink : str
        Where the node states come from, or why there are none.
    now : str
        The SuperLink's clock when it answered ('' without an answer).
    """

    federation: str
    sites: list[SiteRow]
    strangers: list[SuperLinkNode]
    superlink: str
    now: str = ""

    def count(self, status: str) -> int:
        """How many sites have ``status``.

        Parameters
        ----------
        status : str
            E.g. ``online``.
        """
        return sum(1 for s in self.sites if s.status == status)


def last_reported_epsilon(runs: list[RunSummary]) -> dict[str, SiteEpsilon]:
    """Each site's ε from the newest run it took part in.

    Parameters
    ----------
    runs : list of RunSummary
        Every run, newest first.
    """
    found: dict[str, SiteEpsilon] = {}
    for run in runs:
        for site, spent in run.epsilon_spent.items():
            if site not in found:
                found[site] = SiteEpsilon(spent, _left(run, site, spent), run.name)
    return found


def _left(run: RunSummary, site: str, spent: float) -> float | None:
    """What ``site`` has left: as it said in its last reply, else from the run's budget."""
    if site in run.epsilon_remaining:
        return run.epsilon_remaining[site]
    return max(run.epsilon_budget - spent, 0.0) if run.epsilon_budget is not None else None


def node_of_site(nodes: list[SuperLinkNode], fingerprint: str) -> SuperLinkNode | None:
    """The node registered with the key ``fingerprint``: a current one before a removed one.

    Parameters
    ----------
    nodes : list of SuperLinkNode
        The SuperLink's nodes.
    fingerprint : str
        The site's key fingerprint from ``federation.toml``.
    """
    mine = [n for n in nodes if n.fingerprint == fingerprint]
    current = [n for n in mine if n.status != UNREGISTERED]
    chosen = current or sorted(mine, key=lambda n: n.registered_at)
    return chosen[-1] if chosen else None


def site_row(
    name: str, provisioned: bool, node: SuperLinkNode | None, status: str, eps: SiteEpsilon | None
) -> SiteRow:
    """A site's row, from its node when it has one, else with ``status``.

    Parameters
    ----------
    name : str
        The site.
    provisioned : bool
        Whether ``federation.toml`` lists it.
    node : SuperLinkNode or None
        Its node.
    status : str
        The status to show without a node.
    eps : SiteEpsilon or None
        Its ε as last reported.
    """
    if node is None:
        return SiteRow(name, provisioned, status, "", "", "", eps)
    last_seen = {ONLINE: node.last_heartbeat, OFFLINE: node.deactivated_at}.get(node.status, "")
    return SiteRow(
        name,
        provisioned,
        STATUS_TEXT.get(node.status, node.status),
        last_seen,
        node.activated_at,
        node.node_id,
        eps,
    )


def _nodes(coordinator_dir: Path) -> tuple[list[SuperLinkNode] | None, str, str]:
    try:
        listing = list_nodes(open_coordinator(coordinator_dir), timeout=SUPERLINK_TIMEOUT)
    except (CoordinatorError, ProvisionError, OSError) as err:
        return None, f"SuperLink not reachable: {err}", ""
    return listing.nodes, f"SuperLink at {listing.address}", listing.now


def federation_view(coordinator_dir: Path | None, runs: list[RunSummary]) -> FederationView:
    """Provisioned sites with their SuperNode state, and every site's last reported ε.

    Parameters
    ----------
    coordinator_dir : Path or None
        The coordinator's provisioned folder; None for a researcher's simulations.
    runs : list of RunSummary
        Every run, newest first.
    """
    epsilon = last_reported_epsilon(runs)
    fed: FederationFile | None = None
    nodes: list[SuperLinkNode] | None = None
    superlink, now = "no coordinator folder configured (--dir)", ""
    if coordinator_dir is not None:
        try:
            fed = load_federation(coordinator_dir)
        except ProvisionError as err:
            superlink = f"coordinator folder unreadable: {err}"
        else:
            nodes, superlink, now = _nodes(coordinator_dir)
    provisioned = fed.fingerprints if fed else {}
    sites = []
    for name in sorted({*provisioned, *epsilon}):
        if name not in provisioned:
            status = NOT_PROVISIONED if fed else NO_SUPERLINK
            sites.append(site_row(name, False, None, status, epsilon.get(name)))
            continue
        node = node_of_site(nodes, provisioned[name]) if nodes is not None else None
        status = NOT_REGISTERED if nodes is not None else UNREACHABLE
        sites.append(site_row(name, True, node, status, epsilon.get(name)))
    known = set(provisioned.values())
    strangers = [n for n in nodes or [] if n.fingerprint not in known and n.status != UNREGISTERED]
    return FederationView(fed.federation if fed else "", sites, strangers, superlink, now)
