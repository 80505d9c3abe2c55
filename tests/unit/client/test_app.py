"""The ClientApp's handlers, called with real Flower messages (no Ray, no SuperNode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant

from client import site as client_site
from client.app import PERSONALIZED_FOLDER, app, preload_site
from client.site import REFUSALS_FILE, RefusalRecord, SiteSettings, load_site
from models.data.features import FeatureStatistics, Standardization
from models.families import build_model
from models.spec import get_weights
from privacy.ledger import PrivacyLedger
from protocol.federation import (
    EPSILON_REMAINING,
    NUM_EXAMPLES,
    PERSONALIZE,
    PersonalizeReply,
    RefusalCode,
    RoundConfig,
    from_array_record,
    to_array_record,
)
from server.federation.setup import model_spec_for
from server.settings import RunSettings
from simulations.prepare import prepare_simulation


@pytest.fixture(autouse=True)
def _task_identity():
    # Flower's runtime sets these in a SuperNode; Message() needs them.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


@pytest.fixture
def site_config(tmp_path) -> dict:
    layout = prepare_simulation(RunSettings(sites=2, epsilon=1.0), tmp_path / "sim")
    return dict(layout.sites[0])


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _round(node_config: dict, server_round: int = 1, num_rounds: int = 2, **changes):
    site = load_site(SiteSettings.from_mapping(node_config, "test"))
    statistics = site.statistics()
    standardization = Standardization.from_statistics(statistics)
    spec = model_spec_for(RunSettings(), site.schema, statistics)
    values = dict(
        server_round=server_round,
        num_rounds=num_rounds,
        federation="test",
        run_key="run-1",
        model_spec=spec,
        standardization=standardization,
        schema_sha256=site.schema_sha256,
    )
    values.update(changes)
    config = RoundConfig(**values)
    weights = get_weights(build_model(spec, seed=0))
    return config, to_array_record(weights)


def _send(node_config: dict, kind: str, config: RoundConfig, arrays: ArrayRecord) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(config.to_record_values())})
    msg = Message(content, dst_node_id=7, message_type=kind)
    return app(msg, _context(node_config))


def test_query_sends_only_aggregate_statistics(site_config):
    msg = Message(
        RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type=MessageType.QUERY
    )
    reply = app(msg, _context(site_config))
    assert not reply.has_error()
    stats = FeatureStatistics.from_flat(dict(reply.content["statistics"]))
    site = load_site(SiteSettings.from_mapping(site_config, "test"))
    exact = site.statistics()
    assert set(stats.total) == set(exact.total)
    assert stats.total != exact.total  # noisy, never the exact sums
    assert reply.content["schema"]["sha256"] == site.schema_sha256
    ledger = PrivacyLedger(site_config["state-dir"], 1.0)
    assert [r.mechanism for r in ledger.releases] == ["gaussian"]
    assert 0 < reply.content["statistics"]["epsilon"] <= 0.2 + 1e-9
    again = app(msg, _context(site_config))  # the same run asks again: the same figures
    assert dict(again.content["statistics"]) == dict(reply.content["statistics"])
    assert len(PrivacyLedger(site_config["state-dir"], 1.0).releases) == 1


PLANTED = "MRN-000123-PLANTED"


def test_nothing_a_site_sends_contains_a_planted_identifier(site_config, tmp_path):
    """Identifiers in a header-less file, in cells, categories and the file's path reach
    neither the refusal reason nor anything else the coordinator receives."""
    config, arrays = _round(site_config)
    lines = open(site_config["data-path"]).read().splitlines()
    folder = tmp_path / PLANTED
    folder.mkdir()
    bad_files = {
        "no header, a repeated value": "\n".join([f"{PLANTED},1"] * 3 + lines[1:3]),
        "a cell": "\n".join([lines[0], f"{PLANTED}," + lines[1].split(",", 1)[1], *lines[2:]]),
        "an unknown label": "\n".join([lines[0], lines[1].rsplit(",", 1)[0] + f",{PLANTED}"]),
        "a header only": f"{PLANTED},{PLANTED}x",
    }
    for why, text in bad_files.items():
        path = folder / f"{PLANTED}.csv"
        path.write_text(text + "\n")
        node_config = {**site_config, "data-path": str(path)}
        for kind in (MessageType.TRAIN, MessageType.EVALUATE):
            reply = _send(node_config, kind, config, arrays)
            assert reply.has_error(), why
            assert PLANTED not in reply.error.reason, (why, reply.error.reason)
            assert str(tmp_path) not in reply.error.reason, why
        query = Message(
            RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type=MessageType.QUERY
        )
        reply = app(query, _context(node_config))
        assert PLANTED not in reply.error.reason, why
    broken = {**site_config, "schema-path": str(folder / "schema.toml")}
    reply = _send(broken, MessageType.TRAIN, config, arrays)
    assert reply.error.code == RefusalCode.SITE_MISCONFIGURED
    assert PLANTED not in reply.error.reason


def test_train_spends_epsilon_in_the_ledger_and_returns_plain_weights(site_config):
    config, arrays = _round(site_config)
    reply = _send(site_config, MessageType.TRAIN, config, arrays)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    returned = from_array_record(reply.content["arrays"])
    assert sorted(returned) == sorted(from_array_record(arrays))
    assert not any(k.startswith("_module") for k in returned)
    metrics = reply.content["metrics"]
    ledger = PrivacyLedger(site_config["state-dir"], 1.0)
    assert metrics["epsilon"] == pytest.approx(ledger.spent)
    assert 0 < metrics["epsilon"] < 1.0
    assert metrics[NUM_EXAMPLES] > 0
    # what is left of the lifetime budget, as the coordinator's console shows it
    assert metrics[EPSILON_REMAINING] == pytest.approx(1.0 - ledger.spent)


def test_a_repeated_request_resends_the_same_update_at_no_cost(site_config):
    config, arrays = _round(site_config)
    first = _send(site_config, MessageType.TRAIN, config, arrays)
    spent = PrivacyLedger(site_config["state-dir"], 1.0).spent
    again = _send(site_config, MessageType.TRAIN, config, arrays)
    assert PrivacyLedger(site_config["state-dir"], 1.0).spent == spent
    for name in arrays.keys():
        np.testing.assert_array_equal(
            first.content["arrays"][name].numpy(), again.content["arrays"][name].numpy()
        )


def test_the_whole_plan_fits_the_budget_and_the_next_run_is_refused(site_config):
    for server_round in (1, 2):
        config, arrays = _round(site_config, server_round=server_round, num_rounds=2)
        reply = _send(site_config, MessageType.TRAIN, config, arrays)
        assert not reply.has_error()
    ledger = PrivacyLedger(site_config["state-dir"], 1.0)
    assert 0.95 < ledger.spent <= 1.0
    config, arrays = _round(site_config, run_key="run-2")
    reply = _send(site_config, MessageType.TRAIN, config, arrays)
    assert reply.has_error()
    assert reply.error.code == RefusalCode.BUDGET_EXCEEDED
    assert "budget" in reply.error.reason
    assert len(PrivacyLedger(site_config["state-dir"], 1.0).releases) == 2


def test_personalization_is_a_release_within_the_plan_and_only_metrics_leave(site_config):
    # A run of one round that reserved one more (RunSettings.planned_rounds) for it.
    config, arrays = _round(site_config, server_round=1, num_rounds=2)
    assert not _send(site_config, MessageType.TRAIN, config, arrays).has_error()
    before = PrivacyLedger(site_config["state-dir"], 1.0).spent
    config, arrays = _round(site_config, server_round=2, num_rounds=2, local_epochs=1)
    reply = _send(site_config, PERSONALIZE, config, arrays)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert not reply.content.array_records  # the personalized model is not sent
    answer = PersonalizeReply.from_message(reply)
    ledger = PrivacyLedger(site_config["state-dir"], 1.0)
    assert [r.round for r in ledger.releases if r.is_training] == [1, 2]
    assert answer.epsilon_before == pytest.approx(before)
    assert answer.epsilon == pytest.approx(ledger.spent)
    assert before < answer.epsilon <= 1.0
    assert {"roc_auc", "accuracy", NUM_EXAMPLES} <= set(answer.personalized_metrics)
    assert answer.global_metrics[NUM_EXAMPLES] == answer.personalized_metrics[NUM_EXAMPLES]
    kept = Path(site_config["state-dir"]) / PERSONALIZED_FOLDER / "test-run-1.npz"
    with np.load(kept) as weights:
        assert sorted(weights.files) == sorted(from_array_record(arrays))


def test_personalization_past_the_budget_is_refused(site_config):
    # The run planned its one round to the whole budget: nothing is left to personalize.
    config, arrays = _round(site_config, server_round=1, num_rounds=1)
    assert not _send(site_config, MessageType.TRAIN, config, arrays).has_error()
    config, arrays = _round(site_config, server_round=2, num_rounds=1)
    reply = _send(site_config, PERSONALIZE, config, arrays)
    assert reply.has_error()
    assert reply.error.code == RefusalCode.BUDGET_EXCEEDED
    assert len([r for r in PrivacyLedger(site_config["state-dir"], 1.0).releases]) == 1
    assert not (Path(site_config["state-dir"]) / PERSONALIZED_FOLDER).exists()


def test_a_refusal_is_kept_at_the_site_with_the_reason_sent(site_config):
    config, arrays = _round(site_config, num_rounds=1)
    assert not _send(site_config, MessageType.TRAIN, config, arrays).has_error()
    config, arrays = _round(site_config, run_key="run-2", server_round=2)
    reply = _send(site_config, MessageType.TRAIN, config, arrays)
    assert reply.error.code == RefusalCode.BUDGET_EXCEEDED
    lines = (Path(site_config["state-dir"]) / REFUSALS_FILE).read_text().splitlines()
    (record,) = [RefusalRecord.from_json(line) for line in lines]
    assert (record.message_type, record.code, record.reason) == (
        "train",
        "BUDGET_EXCEEDED",
        reply.error.reason,
    )
    assert (record.federation, record.run, record.round) == ("test", "run-2", 2)


def test_a_refusal_that_cannot_be_written_is_sent_all_the_same(site_config, tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    config, arrays = _round(site_config, schema_sha256="0" * 64)
    reply = _send({**site_config, "state-dir": str(blocked)}, MessageType.TRAIN, config, arrays)
    assert reply.error.code == RefusalCode.SCHEMA_MISMATCH
    assert "refusal not recorded" in caplog.text


def test_evaluate_reports_metrics_on_the_validation_split(site_config):
    config, arrays = _round(site_config)
    reply = _send(site_config, MessageType.EVALUATE, config, arrays)
    metrics = reply.content["metrics"]
    site = load_site(SiteSettings.from_mapping(site_config, "test"))
    assert metrics[NUM_EXAMPLES] == len(site.validation_index)
    assert {"roc_auc", "accuracy", "f1", "balanced_accuracy"} <= set(metrics.keys())


def test_another_schema_is_refused(site_config):
    config, arrays = _round(site_config, schema_sha256="0" * 64)
    reply = _send(site_config, MessageType.TRAIN, config, arrays)
    assert reply.error.code == RefusalCode.SCHEMA_MISMATCH


def test_bad_data_is_refused_without_any_cell_value(site_config, tmp_path):
    config, arrays = _round(site_config)
    bad = tmp_path / "bad.csv"
    lines = open(site_config["data-path"]).read().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[0] = "SECRET-VALUE"
    bad.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    node_config = {**site_config, "data-path": str(bad)}
    reply = _send(node_config, MessageType.TRAIN, config, arrays)
    assert reply.error.code == RefusalCode.SITE_DATA_INVALID
    assert f"1 × not_a_number in column '{header[0]}' (row 2)" in reply.error.reason
    assert "SECRET-VALUE" not in reply.error.reason


def test_delta_must_be_below_one_over_n(site_config):
    config, arrays = _round(site_config)
    reply = _send({**site_config, "delta": 0.5}, MessageType.TRAIN, config, arrays)
    assert reply.error.code == RefusalCode.SITE_MISCONFIGURED
    assert "must be below 1/n" in reply.error.reason


def test_a_node_without_site_settings_says_how_to_configure_it(site_config):
    config, arrays = _round(site_config)
    reply = _send({"state-dir": site_config["state-dir"]}, MessageType.TRAIN, config, arrays)
    assert reply.error.code == RefusalCode.SITE_MISCONFIGURED
    assert "--node-config" in reply.error.reason
    assert not (Path(site_config["state-dir"]) / REFUSALS_FILE).exists()  # nowhere to keep it


def test_a_lifetime_budget_is_shared_by_many_runs_each_under_its_cap(site_config):
    """Lifetime ε = 3, at most 1 per run: each run plans to its cap, the lifetime composes
    every release (so more than three runs fit: RDP composition is below the sum), and the
    run that finds the lifetime spent is refused."""
    node_config = {**site_config, "epsilon-budget": 3.0, "epsilon-per-run": 1.0}
    ledger = SiteSettings.from_mapping(node_config, "test").ledger()
    assert ledger.epsilon_per_run == 1.0
    run = 0
    while True:
        run += 1
        config, arrays = _round(node_config, num_rounds=1, run_key=f"run-{run}")
        reply = _send(node_config, MessageType.TRAIN, config, arrays)
        if reply.has_error():
            break
        assert run < 20
    assert reply.error.code == RefusalCode.BUDGET_EXCEEDED
    summary = PrivacyLedger(site_config["state-dir"], 3.0, epsilon_per_run=1.0).summary()
    runs = summary["runs"]
    assert [r["run"] for r in runs] == [f"run-{i}" for i in range(1, run)]
    assert run - 1 > 3  # three runs at ε = 1 compose to well under 3
    assert all(r["epsilon"] <= 1.0 + 1e-9 for r in runs)
    assert runs[0]["epsilon"] > 0.99  # a run's plan uses its cap, it does not waste it
    assert summary["epsilon_per_run"] == 1.0
    assert 2.99 < summary["epsilon_spent"] <= 3.0
    releases = PrivacyLedger(site_config["state-dir"], 3.0).releases
    accountant = RDPAccountant()
    accountant.history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in releases]
    assert summary["epsilon_spent"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert runs[2]["epsilon_after"] < 3.0 * 0.6  # after three runs, the lifetime is far from 3


def test_preload_leaves_the_site_loaded_for_a_forked_task(site_config, monkeypatch):
    monkeypatch.setattr(client_site, "_CACHE", {})
    preload_site(site_config)  # what the site executor calls before it forks a task
    (loaded,) = client_site._CACHE.values()
    assert load_site(SiteSettings.from_mapping(site_config, "test")) is loaded
    # a site that cannot load is left to the task, which refuses with the site's reason
    preload_site({**site_config, "data-path": str(Path(site_config["data-path"]) / "gone")})
    preload_site({})
