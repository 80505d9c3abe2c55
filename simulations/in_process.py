"""A simulated federation in this one process: the real round loop and ClientApp, no Ray.

The coordinator's round loop (``server.federation.rounds.run_federation``) talks to the
real ClientApp (``client.app.app``: DP-SGD, ledgers, refusals) through
:class:`InProcessGrid`, which hands each message to the addressed simulated site and
copies it both ways, as the network would. Nothing is shared between the sites but what
the messages carry. It starts in a second instead of Ray's fifteen and runs the sites one
after another, so it suits tests, audits and benchmarks on small data; ``fedcare
simulate`` keeps Flower's simulation engine.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from server.federation.rounds import run_federation
from server.federation.run_state import Progress, RunOutcome
from server.registry import Signer
from server.settings import RunSettings
from simulations.prepare import prepare_sites
from simulations.runner import quiet_flower

# Node ids as a SuperLink hands them out: large and not in site order.
FIRST_NODE_ID = 7_000_001
NODE_ID_STRIDE = 104_729


def simulated_node_configs(sites: int) -> dict[int, dict]:
    """The node configs of ``sites`` simulated hospitals, by node id (partition 0 … sites − 1)."""
    return {
        FIRST_NODE_ID + i * NODE_ID_STRIDE: {"partition-id": i, "num-partitions": sites}
        for i in range(sites)
    }


class InProcessGrid(Grid):
    """Delivers each message to the addressed simulated site's ClientApp in this process.

    Parameters
    ----------
    node_configs : dict of int to dict
        Each node id's node config (``partition-id`` in simulation, or site settings).
    app : ClientApp
        The sites' ClientApp.
    """

    def __init__(self, node_configs: dict[int, dict], app: ClientApp = client_app):
        self.contexts = {
            node: Context(
                run_id=1, node_id=node, node_config=cfg, state=RecordDict(), run_config={}
            )
            for node, cfg in node_configs.items()
        }
        self.app = app

    def set_run(self, run) -> None:
        """Not used by the round loop."""
        raise NotImplementedError

    @property
    def run(self):
        """Not used by the round loop."""
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        """Not used by the round loop (it builds its messages itself)."""
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        """The simulated sites' node ids."""
        return list(self.contexts)

    def push_messages(self, messages):
        """Not used by the round loop."""
        raise NotImplementedError

    def pull_messages(self, message_ids):
        """Not used by the round loop."""
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Each message's reply from its site, in the order sent."""
        return [self.deliver(msg) for msg in messages]

    def deliver(self, msg: Message) -> Message:
        """``msg`` handled by its site; copies cross, as over gRPC (no record is shared)."""
        context = self.contexts[msg.metadata.dst_node_id]
        return copy.deepcopy(self.app(copy.deepcopy(msg), context))


def run_in_process(
    settings: RunSettings, progress: Progress | None = None, signer: Signer | None = None
) -> RunOutcome:
    """Run a whole simulated federation in this process and register its model.

    Parameters
    ----------
    settings : RunSettings
        The run; ``mode`` must be ``simulation``.
    progress : callable, optional
        Receives one line per round and per event.
    signer : callable, optional
        Signs the registered model.
    """
    if settings.mode != "simulation":
        raise ValueError("run_in_process needs mode='simulation'")
    # Flower's messages take their run and sender from the process's task identity,
    # which a SuperLink or SuperNode would set; here one process plays every part.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    quiet_flower(verbose=False)
    return run_federation(
        InProcessGrid(simulated_node_configs(settings.sites)),
        settings,
        progress=progress,
        signer=signer,
        prepare_sites=prepare_sites,
    )
