"""A whole federation through Flower's simulation engine: crash, resume, report, registry.

One crashed-and-resumed run serves both checks the issue asks for: the small end-to-end
simulation (report, plot, registered model, ε per site) and resume from checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.data.kinds.registry import load_schema
from models.data.tables import load_site_table
from models.families import get_task
from models.predictor import Predictor
from privacy.ledger import GAUSSIAN, PrivacyLedger
from server.federation.checkpoint import Checkpoint
from server.registry import ModelRegistry
from server.settings import RunSettings
from simulations.runner import run_simulated_federation

pytestmark = pytest.mark.slow


class CoordinatorCrash(RuntimeError):
    """Raised from the progress callback to kill the coordinator after a round."""


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("run")
    settings = RunSettings(
        sites=3,
        num_server_rounds=3,
        epsilon=1.0,
        statistics_epsilon_share=0.2,  # the noisy statistics are released and accounted
        seed=1,
        out_dir=str(out),
    )

    def crash_after_round_two(line: str) -> None:
        if line.startswith("round 2/3"):
            raise CoordinatorCrash(line)

    with pytest.raises(CoordinatorCrash):
        run_simulated_federation(settings, progress=crash_after_round_two)
    checkpoint = Checkpoint.load(out)
    assert checkpoint is not None and checkpoint.round == 2

    lines: list[str] = []
    resumed = RunSettings(**{**settings.to_dict(), "resume": True})
    outcome = run_simulated_federation(resumed, progress=lines.append)
    return {"out": out, "outcome": outcome, "lines": lines, "checkpoint": checkpoint}


def test_resume_finishes_the_same_number_of_rounds(resumed_run):
    report = resumed_run["outcome"].report
    assert [h["round"] for h in report["history"]] == [1, 2, 3]
    assert any(line.startswith("resuming run") for line in resumed_run["lines"])
    assert report["run"] == resumed_run["checkpoint"].run_key
    # the resumed run went on from the checkpoint's weights, not from scratch
    assert sum(1 for line in resumed_run["lines"] if line.startswith("round ")) == 1


def test_every_site_counted_each_round_once_within_its_budget(resumed_run):
    out: Path = resumed_run["out"]
    report = resumed_run["outcome"].report
    sites = json.loads((out / "simulation" / "sites.json").read_text())
    for entry in sites:
        ledger = PrivacyLedger(entry["state-dir"], entry["epsilon-budget"], entry["delta"])
        # one release of noisy statistics before training, then one per round
        assert [r.round for r in ledger.releases if r.is_training] == [1, 2, 3]
        assert [r.mechanism for r in ledger.releases if not r.is_training] == [GAUSSIAN]
        assert {r.run for r in ledger.releases} == {report["run"]}
        assert ledger.spent <= 1.0
        assert report["privacy"]["epsilon_spent"][entry["site-name"]] == pytest.approx(ledger.spent)
        # kept across the resume, as each site said it in its last reply
        left = report["privacy"]["epsilon_remaining"][entry["site-name"]]
        assert left == pytest.approx(ledger.remaining)
    assert report["privacy"]["delta"] == 1e-5
    assert report["privacy"]["epsilon_budget"] == 1.0


def test_report_has_metrics_history_and_plot(resumed_run):
    out: Path = resumed_run["out"]
    report = json.loads((out / "report.json").read_text())
    assert 0.5 < report["final"]["roc_auc"] <= 1.0
    assert 0.0 <= report["final"]["accuracy"] <= 1.0
    for entry in report["history"]:
        assert entry["wall_seconds"] > 0
        assert {"roc_auc", "accuracy", "f1", "balanced_accuracy"} <= set(entry["global_test"])
        assert {"roc_auc", "accuracy"} <= set(entry["federated_evaluation"])
    assert (out / "report.png").stat().st_size > 10_000


def test_registered_model_rebuilds_and_reproduces_the_reported_metrics(resumed_run):
    out: Path = resumed_run["out"]
    report = resumed_run["outcome"].report
    registry = ModelRegistry(report["model"]["registry"])
    version = registry.get(report["model"]["name"])
    assert version.version == report["model"]["version"] == 1
    version.verify_files()
    assert set(version.manifest["files"]) >= {"weights.npz", "schema.toml", "preprocessing.json"}
    assert version.manifest["privacy"]["epsilon_per_site"] == report["privacy"]["epsilon_spent"]
    # No training code's arguments needed: the manifest alone rebuilds the model.
    predictor = Predictor.from_version(version)
    schema = load_schema(out / "simulation" / "schema.toml")
    table = load_site_table(out / "simulation" / "test.csv", schema)
    outputs = predictor.outputs(predictor.encoder.transform(table.frame))
    targets = predictor.encoder.labels(table.frame)
    metrics = get_task(version.spec.task).metrics(targets, outputs)
    assert metrics["roc_auc"] == pytest.approx(report["final"]["roc_auc"], abs=1e-9)
    rows = pd.read_csv(out / "simulation" / "test.csv").drop(columns=[schema.label])
    predictions = predictor.predict_rows(rows.head(5).to_dict(orient="records"))
    assert len(predictions) == 5
    assert np.isfinite([p["probability"] for p in predictions]).all()


def test_a_finished_run_is_not_overwritten(resumed_run):
    from server.federation.run_state import FederationError

    settings = RunSettings(sites=3, num_server_rounds=3, out_dir=str(resumed_run["out"]))
    with pytest.raises(FederationError, match="already holds a run"):
        run_simulated_federation(settings)


def _simulate(out: Path, seed: int) -> dict:
    # min_sites=3: wait for all three SuperNodes (Flower registers them while the
    # ServerApp starts; with fewer, the number of sites trained would vary between runs)
    settings = RunSettings(sites=3, num_server_rounds=3, min_sites=3, seed=seed, out_dir=str(out))
    return run_simulated_federation(settings).report


def _figures(report: dict) -> tuple:
    history = [
        (h["global_test"], h["federated_evaluation"], h["epsilon"]) for h in report["history"]
    ]
    return report["final"], report["privacy"]["epsilon_spent"], history


def test_the_same_seed_reproduces_the_report_and_another_does_not(tmp_path):
    first = _simulate(tmp_path / "a", seed=7)
    again = _simulate(tmp_path / "b", seed=7)
    other = _simulate(tmp_path / "c", seed=8)
    assert _figures(first) == _figures(again)
    assert first["final"] != other["final"]
    assert (first["privacy"]["rng"], first["privacy"]["accountant"]) == ("seeded", "rdp")


def test_evaluate_reproduces_the_reported_test_metrics(resumed_run, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    out: Path = resumed_run["out"]
    report = resumed_run["outcome"].report
    metrics = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate", "--registry", report["model"]["registry"],
            "--model", f"{report['model']['name']}@{report['model']['version']}",
            "--data", str(out / "simulation" / "test.csv"), "--out", str(metrics),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    overall = json.loads(metrics.read_text())["overall"]
    assert overall.keys() == report["final"].keys()
    for key, value in report["final"].items():
        assert overall[key] == pytest.approx(value, abs=1e-9), key
