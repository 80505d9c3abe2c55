"""Each model family trained federated with DP through Flower's simulation engine, its ε
accounted at every site, registered with its data kind, and answered by the registered
model with explanations.

One small simulation per family (2 rounds, 2–3 sites): imaging (CNN on digits), sequences
(GRU on the synthetic vital signs), survival (linear Cox on three Fed-TCGA-BRCA regions),
regression (MLP on Diabetes) and clinical notes (hashed logistic regression, class-weighted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.data.kinds.registry import get_kind, load_schema
from models.explain import explain_rows
from models.predictor import Predictor
from privacy.ledger import PrivacyLedger
from server.registry import ModelRegistry
from server.settings import RunSettings
from simulations.datasets import write_fed_tcga_brca
from simulations.prepare import read_layout
from simulations.runner import run_simulated_federation

pytestmark = pytest.mark.slow

TCGA = Path(__file__).resolve().parents[3] / "shared" / "data" / "fed_tcga_brca"
EPSILON = 3.0
FAMILIES = {
    # name: (run settings, headline metric, data kind, model family)
    "image": ({"dataset": "digits", "model": "cnn"}, "accuracy", "image", "cnn"),
    "sequence": ({"dataset": "vitals", "model": "gru"}, "roc_auc", "sequence", "gru"),
    "survival": ({"model": "cox_linear"}, "c_index", "table", "cox_linear"),
    "regression": (
        {"dataset": "diabetes", "model": "mlp", "learning_rate": 0.05},
        "mae",
        "table",
        "mlp",
    ),
    "notes": (
        {"dataset": "notes", "model": "logreg", "class_weights": "balanced"},
        "pr_auc",
        "text",
        "logreg",
    ),
}


def _tcga_regions(folder: Path, keep: int = 3) -> Path:
    """Fed-TCGA-BRCA as a --data-dir, with the first ``keep`` regions as sites."""
    if not TCGA.is_dir():
        pytest.skip(f"{TCGA} is not here")
    data = write_fed_tcga_brca(TCGA, folder)
    for extra in sorted(data.glob("region-*.csv"))[keep:]:
        extra.unlink()
    return data


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_run(request, tmp_path_factory) -> dict[str, Any]:
    name = request.param
    values, metric, kind, model = FAMILIES[name]
    out = tmp_path_factory.mktemp(name)
    settings_values = {
        "sites": 2,
        "num_server_rounds": 2,
        "epsilon": EPSILON,
        "learning_rate": 0.5,
        "batch_size": 32,
        "statistics_epsilon_share": 0.2,  # every family's statistics are released
        "out_dir": str(out / "run"),
        **values,
    }
    if name == "survival":
        settings_values["data_dir"] = str(_tcga_regions(out / "tcga"))
        settings_values["sites"] = 3
    outcome = run_simulated_federation(RunSettings(**settings_values))
    return {
        "name": name,
        "out": out / "run",
        "report": outcome.report,
        "metric": metric,
        "kind": kind,
        "model": model,
    }


def _instances(schema, path: Path, count: int) -> list[dict[str, Any]]:
    """Request instances made from the global test set, as a clinical app would send them."""
    if schema.kind == "image":
        with np.load(path) as archive:
            return [{"image": image.tolist()} for image in archive["train_images"][:count]]
    frame = pd.read_csv(path)
    if schema.kind == "sequence":
        patient, time = schema.extra["patient"], schema.extra["time"]
        columns = [time, *schema.feature_names]
        return [
            {"steps": steps[columns].to_dict(orient="records")}
            for _, steps in list(frame.groupby(patient, sort=False))[:count]
        ]
    if schema.kind == "text":
        return [{schema.extra["text"]: note} for note in frame[schema.extra["text"]][:count]]
    return frame[schema.feature_names].head(count).to_dict(orient="records")


def test_every_site_trained_with_dp_within_its_budget(family_run):
    report, out = family_run["report"], family_run["out"]
    sites = json.loads((out / "simulation" / "sites.json").read_text())
    assert len(report["privacy"]["epsilon_spent"]) == len(sites)
    for entry in sites:
        ledger = PrivacyLedger(entry["state-dir"], entry["epsilon-budget"], entry["delta"])
        # the noisy statistics first, then one DP-SGD release per round
        assert [r.round for r in ledger.releases if r.is_training] == [1, 2]
        assert sum(1 for r in ledger.releases if not r.is_training) == 1
        assert 0.5 * EPSILON < ledger.spent <= EPSILON
        assert report["privacy"]["epsilon_spent"][entry["site-name"]] == pytest.approx(ledger.spent)
    assert all(h["sites_trained"] == len(sites) for h in report["history"])
    assert np.isfinite(report["final"][family_run["metric"]])


def test_registered_version_records_its_kind_and_reproduces_the_metric(family_run):
    report = family_run["report"]
    version = ModelRegistry(report["model"]["registry"]).get(report["model"]["name"])
    version.verify_files()
    assert version.data_kind == family_run["kind"]
    assert version.spec.kind == family_run["model"]
    predictor = Predictor.from_version(version)
    layout_schema = load_schema(Path(version.path) / "schema.toml")
    test_path = _test_path(family_run)
    examples = get_kind(layout_schema).load(test_path, layout_schema)
    encoded = examples.encode(np.arange(examples.num_examples), predictor.standardization)
    outputs = predictor.outputs(encoded.inputs)
    targets = predictor.encoder.decode_outputs(encoded.targets)
    metric = family_run["metric"]
    assert predictor.task.metrics(targets, outputs)[metric] == pytest.approx(
        report["final"][metric], rel=1e-6
    )


def test_registered_model_answers_and_explains_requests(family_run):
    report = family_run["report"]
    version = ModelRegistry(report["model"]["registry"]).get(report["model"]["name"])
    predictor = Predictor.from_version(version)
    instances = _instances(predictor.schema, _test_path(family_run), 3)
    predictions = predictor.predict_rows(instances)
    assert len(predictions) == 3
    explanations = explain_rows(predictor, instances[:1])
    (explained,) = explanations
    total = explained["output"] - explained["baseline_output"]
    assert abs(explained["convergence_delta"]) <= 0.05 * abs(total) + 1e-3
    assert explained["attributions"]


def _test_path(family_run: dict[str, Any]) -> Path:
    layout = read_layout(family_run["out"] / "simulation")
    assert layout.test_path is not None
    return layout.test_path
