"""A SuperLink node's key reduces to the fingerprint provisioning wrote for its site."""

from __future__ import annotations

from pathlib import Path

from flwr.cli.supernode.register import try_load_public_key
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611

from deploy.nodes import ONLINE, node_record
from deploy.provision import load_federation, provision


def test_the_key_flower_registers_has_the_fingerprint_of_federation_toml(tmp_path: Path):
    provision("fed", ["a", "b"], tmp_path / "fed", port=9092, approved_apps=[])
    fed = load_federation(tmp_path / "fed" / "coordinator")
    for site, public_key in fed.sites.items():
        # exactly what `flwr supernode register KEY.pub` sends to the SuperLink
        pem = try_load_public_key(public_key)
        info = NodeInfo(node_id=7, public_key=pem, status="registered", name=site)
        assert node_record(info).fingerprint == fed.fingerprints[site]
    assert len(set(fed.fingerprints.values())) == 2


def test_an_online_nodes_last_heartbeat_is_its_deadline_less_the_patience():
    info = NodeInfo(
        node_id=2**63 + 5,  # uint64: kept as text
        status=ONLINE,
        online_until=1_800_000_060.0,
        heartbeat_interval=30.0,
        public_key=b"not a key",
    )
    node = node_record(info)
    assert node.node_id == str(2**63 + 5) and node.fingerprint == ""
    assert node.last_heartbeat == "2027-01-15T08:00:00+00:00"
