"""Personalization after the last round, through the real round loop and ClientApp.

In one process (``simulations.in_process``, no Ray): a 2-site, 2-round federation at
ε = 1 per site with 2 epochs of personalization. What the coordinator receives is kept
by the grid, to check that no personalized weight ever reaches it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Message
from flwr.supercore.task_identity import TaskIdentity

from client.app import PERSONALIZED_FOLDER
from privacy.ledger import PrivacyLedger
from protocol.federation import PERSONALIZE
from server.federation.rounds import run_federation
from server.settings import RunSettings
from simulations.in_process import InProcessGrid, simulated_node_configs
from simulations.prepare import prepare_sites, read_layout

pytestmark = pytest.mark.slow


class RecordingGrid(InProcessGrid):
    """Keeps every reply the coordinator receives."""

    def __init__(self, sites: int):
        super().__init__(simulated_node_configs(sites))
        self.received: list[tuple[str, Message]] = []

    def deliver(self, msg: Message) -> Message:
        reply = super().deliver(msg)
        self.received.append((msg.metadata.message_type, reply))
        return reply


@pytest.fixture(scope="module")
def personalized(tmp_path_factory) -> tuple[Path, dict, RecordingGrid]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    out = tmp_path_factory.mktemp("personalize")
    settings = RunSettings(
        sites=2, num_server_rounds=2, epsilon=1.0, personalize_epochs=2, out_dir=str(out)
    )
    grid = RecordingGrid(settings.sites)
    outcome = run_federation(
        grid, settings, progress=lambda line: None, prepare_sites=prepare_sites
    )
    return out, outcome.report, grid


def test_each_site_reports_global_and_personalized_metrics_and_the_epsilon(personalized):
    out, report, _ = personalized
    assert set(report["personalization"]) == {"hospital-0", "hospital-1"}
    for site, entry in report["personalization"].items():
        assert {"roc_auc", "accuracy", "num-examples"} <= set(entry["global"])
        assert entry["global"]["num-examples"] == entry["personalized"]["num-examples"]
        assert 0 < entry["epsilon"] < report["privacy"]["epsilon_spent"][site] <= 1.0 + 1e-9
    assert (
        json.loads((out / "report.json").read_text())["personalization"]
        == report["personalization"]
    )


def test_personalization_is_one_more_release_in_each_ledger_within_the_budget(personalized):
    out, report, _ = personalized
    for entry in read_layout(out / "simulation").sites:
        ledger = PrivacyLedger(entry["state-dir"], entry["epsilon-budget"], entry["delta"])
        assert [r.round for r in ledger.releases if r.is_training] == [1, 2, 3]
        assert ledger.spent <= 1.0 + 1e-9
        assert report["privacy"]["epsilon_spent"][entry["site-name"]] == pytest.approx(ledger.spent)
        kept = list((Path(entry["state-dir"]) / PERSONALIZED_FOLDER).glob("*.npz"))
        assert [p.name for p in kept] == [f"default-{report['run']}.npz"]


def test_the_personalized_model_never_reaches_the_coordinator(personalized):
    _, _, grid = personalized
    replies = [reply for kind, reply in grid.received if kind == PERSONALIZE]
    assert len(replies) == 2
    for reply in replies:
        assert not reply.has_error()
        assert not reply.content.array_records
