"""The demo's inference step on a registry laid out as a simulation leaves it."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from models.data.features import FeatureEncoder, FeatureStatistics, Standardization
from models.families import build_model
from models.spec import ModelSpec, get_weights
from server.registry import ModelRegistry
from simulations.datasets import load_dataset
from simulations.demo_inference import run_inference_demo

pytestmark = pytest.mark.slow  # starts the service twice


def test_the_demo_serves_the_simulation_model_and_matches_it_locally(tmp_path):
    dataset = load_dataset("breast_cancer")
    scale = Standardization.from_statistics(
        FeatureStatistics.of_frame(dataset.examples, dataset.schema)
    )
    spec = ModelSpec(
        kind="logreg",
        task="binary",
        input_dim=FeatureEncoder(dataset.schema, scale).input_dim,
        output_dim=1,
    )
    registry = tmp_path / "run" / "registry"
    weights = get_weights(build_model(spec, seed=0))
    ModelRegistry(registry).register("breast_cancer", weights, spec, dataset.schema, scale)
    (tmp_path / "run" / "simulation").mkdir()
    dataset.examples.head(20).to_csv(tmp_path / "run" / "simulation" / "test.csv", index=False)

    for _ in range(2):  # a second run reuses the demo's signature
        out = io.StringIO()
        run_inference_demo(registry, Console(file=out, width=200))
        text = out.getvalue()
        assert "5 patients sent HPKE-sealed; breast_cancer v1 answered" in text
        assert text.count("│ yes") == 5 and "NO" not in text
    assert (registry / "breast_cancer" / "v0001" / "manifest.sig").exists()
