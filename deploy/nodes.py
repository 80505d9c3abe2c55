"""The SuperLink's SuperNodes, as its Control API lists them, with each one's key fingerprint.

`flwr supernode list --format json` (flwr 1.41) prints only ``node-id``, ``owner-name``,
``status`` and the status times: neither the node's public key nor the name it was
registered with, so it cannot tell which hospital a node is. The Control API's
``ListNodes`` answer (``flwr.proto.node_pb2.NodeInfo``) carries both, plus the heartbeat
deadline. This module asks it in-process over the same TLS port ``flwr`` dials (about
0.1 s instead of a ``flwr`` process's ~3 s) and reduces each node's key to the fingerprint
``fedcare provision`` wrote for each site into ``federation.toml``, so a node is matched to
its site by the key it authenticates with, not by a name anyone registering it may type.

Flower 1.41 facts used here (read from its source, seen on loopback):

- ``NodeInfo.public_key`` is the registered key as PEM SubjectPublicKeyInfo
  (``flwr.supercore.primitives.asymmetric.public_key_to_bytes``).
- A node is ``registered`` until its SuperNode first activates, then ``online`` /
  ``offline``, ``unregistered`` once its key is removed. Every heartbeat (and the
  activation) sets ``online_until = now + HEARTBEAT_PATIENCE × heartbeat_interval``
  (2 × 30 s), so an online node's last heartbeat is ``online_until`` minus that.
- A SuperNode that stops (SIGTERM) deactivates itself: ``offline`` at once, with
  ``last_deactivated_at`` its stop time. One that is killed stays ``online`` until
  ``online_until`` has passed (up to 60 s); ``last_deactivated_at`` is then that deadline.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flwr.common.constant import HEARTBEAT_PATIENCE
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.supercore.primitives.asymmetric import bytes_to_public_key

from deploy.superlink import Coordinator
from privacy.pki import fingerprint

ONLINE = "online"
OFFLINE = "offline"
REGISTERED = "registered"  # registered, never connected
UNREGISTERED = "unregistered"


@dataclass(frozen=True)
class SuperLinkNode:
    """A SuperNode as the SuperLink knows it.

    Parameters
    ----------
    node_id : str
        Its node id (text: a uint64 is beyond a browser's exact integers).
    name : str
        The name it was registered with (``flwr supernode register --name``; '' if none).
    fingerprint : str
        Its authentication key's fingerprint (:func:`privacy.pki.fingerprint`); '' when
        the SuperLink's copy of the key does not parse.
    status : str
        ``registered`` (never connected), ``online``, ``offline`` or ``unregistered``.
    registered_at, activated_at, deactivated_at : str
        When its key was registered, it last came online, it last went offline (UTC,
        ISO 8601; '' when never).
    last_heartbeat : str
        Online: when its last heartbeat (or its activation) arrived; '' otherwise.
    heartbeat_interval : float
        Seconds between its heartbeats.
    """

    node_id: str
    name: str
    fingerprint: str
    status: str
    registered_at: str
    activated_at: str
    deactivated_at: str
    last_heartbeat: str
    heartbeat_interval: float


@dataclass(frozen=True)
class NodeListing:
    """The SuperLink's answer.

    Parameters
    ----------
    address : str
        The SuperLink asked.
    now : str
        Its clock when it answered (UTC, ISO 8601).
    nodes : list of SuperLinkNode
        Every node it knows, unregistered ones included.
    """

    address: str
    now: str
    nodes: list[SuperLinkNode]


def _key_fingerprint(pem: bytes) -> str:
    try:
        return fingerprint(bytes_to_public_key(pem))
    except (ValueError, TypeError):
        return ""


def node_record(info: NodeInfo) -> SuperLinkNode:
    """The record of one ``NodeInfo`` of a ``ListNodes`` answer.

    Parameters
    ----------
    info : NodeInfo
        The SuperLink's node.
    """
    heartbeat = ""
    if info.status == ONLINE and info.HasField("online_until"):
        at = info.online_until - HEARTBEAT_PATIENCE * info.heartbeat_interval
        heartbeat = dt.datetime.fromtimestamp(at, dt.UTC).isoformat()
    return SuperLinkNode(
        node_id=str(info.node_id),
        name=info.name,
        fingerprint=_key_fingerprint(info.public_key),
        status=info.status,
        registered_at=info.registered_at,
        activated_at=info.last_activated_at,
        deactivated_at=info.last_deactivated_at,
        last_heartbeat=heartbeat,
        heartbeat_interval=info.heartbeat_interval,
    )


def list_nodes(coordinator: Coordinator, timeout: float = 10.0) -> NodeListing:
    """Every SuperNode of the coordinator's SuperLink, from its Control API.

    Parameters
    ----------
    coordinator : Coordinator
        The provisioned coordinator (its SuperLink's address and the federation CA).
    timeout : float
        Seconds to wait for the SuperLink.

    Raises
    ------
    CoordinatorError
        The SuperLink did not answer, refused, or answered something else.
    """
    address = coordinator.address
    answer = coordinator.list_nodes(timeout)
    return NodeListing(address, answer.now, [node_record(n) for n in answer.nodes_info])
