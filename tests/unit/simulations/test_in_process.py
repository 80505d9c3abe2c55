"""The in-process federation (no Ray): the real round loop and ClientApp, one process.

Checked here: a run that releases no statistics (share 0) spends every site's ε on
training alone and scales features by their declared ranges; the in-process path gives
the same report for the same seed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.data.features import FeatureStatistics, Standardization, declared_bounds
from models.data.kinds.registry import load_schema
from privacy.ledger import PrivacyLedger
from server.registry import ModelRegistry
from server.settings import RunSettings, SettingsError
from simulations.in_process import run_in_process


def _run(out: Path, share: float) -> dict:
    settings = RunSettings(
        sites=2,
        num_server_rounds=2,
        epsilon=1.0,
        seed=3,
        statistics_epsilon_share=share,
        out_dir=str(out),
    )
    return run_in_process(settings).report


def test_no_statistics_release_spends_the_whole_budget_on_training(tmp_path):
    report = _run(tmp_path / "run", share=0.0)
    assert report["privacy"]["statistics_epsilon"] == {"hospital-0": 0.0, "hospital-1": 0.0}
    for state in sorted((tmp_path / "run" / "simulation" / "state").iterdir()):
        ledger = PrivacyLedger(state, 1.0)
        assert [r.round for r in ledger.releases] == [1, 2]  # training only
        assert all(r.is_training for r in ledger.releases)
        assert ledger.spent == pytest.approx(1.0, abs=1e-3)
    schema = load_schema(tmp_path / "run" / "simulation" / "schema.toml")
    ranges = Standardization.from_statistics(FeatureStatistics(), declared_bounds(schema))
    version = ModelRegistry(report["model"]["registry"]).get(report["model"]["name"])
    assert version.standardization() == ranges


def test_the_same_seed_gives_the_same_report(tmp_path):
    first, again = _run(tmp_path / "a", 0.2), _run(tmp_path / "b", 0.2)
    assert first["final"] == again["final"]
    assert first["privacy"]["epsilon_spent"] == again["privacy"]["epsilon_spent"]
    assert set(first["privacy"]["statistics_epsilon"]) == {"hospital-0", "hospital-1"}


def test_balanced_class_weights_need_the_statistics():
    with pytest.raises(SettingsError, match="class-weights"):
        RunSettings(statistics_epsilon_share=0.0, class_weights="balanced")
