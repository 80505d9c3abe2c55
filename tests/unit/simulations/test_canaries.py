"""Audit canaries: in the schema's bounds, off the data, mislabelled, and only in simulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import AUDIT_CANARIES
from cli.main import app as cli
from client.site import SiteSettings, load_site
from models.data.kinds.table import check_rows
from server.settings import RunSettings, SettingsError
from simulations.canaries import CanaryError, draw_coins, load_coins, make_canaries
from simulations.datasets import load_dataset
from simulations.prepare import prepare_simulation


@pytest.fixture(scope="module")
def breast_cancer():
    return load_dataset("breast_cancer")


def test_canaries_fit_the_schema_yet_lie_off_the_data(breast_cancer):
    frame, schema = breast_cancer.examples, breast_cancer.schema
    canaries = make_canaries(frame, schema, AUDIT_CANARIES)  # `simulate --audit`'s default
    assert len(canaries) == AUDIT_CANARIES == 20
    features = [f.name for f in schema.features]
    check_rows(schema, canaries[features].to_dict("records"))  # all within the declared ranges
    standardized = (frame[features] - frame[features].mean()) / frame[features].std()
    points = (canaries[features].astype(float) - frame[features].mean()) / frame[features].std()
    # each canary is farther from every patient than patients are from their nearest one
    nearest = [
        np.min(np.linalg.norm(standardized.to_numpy() - p, axis=1)) for p in points.to_numpy()
    ]
    assert min(nearest) > 1.0
    assert set(canaries[schema.label].astype(str)) <= set(schema.classes)


def test_coins_are_fair_independent_per_site_and_seeded():
    coins = draw_coins(["a", "b"], 400, seed=3)
    assert coins == draw_coins(["a", "b"], 400, seed=3)
    assert 150 < sum(coins["a"]) < 250
    assert coins["a"] != coins["b"]


def test_a_site_trains_on_exactly_its_included_canaries(tmp_path):
    layout = prepare_simulation(RunSettings(sites=2, audit_canaries=10), tmp_path)
    coins = load_coins(tmp_path)
    for entry in layout.sites:
        site = load_site(SiteSettings.from_mapping(entry, "test"))
        included = int(coins[entry["site-name"]].sum())
        assert entry.get("audit-canaries", 0) == included
        table = pd.read_csv(entry["data-path"])
        canaries = pd.read_csv(tmp_path / "audit" / "canaries.csv")[coins[entry["site-name"]]]
        tail = table.tail(included).reset_index(drop=True)
        pd.testing.assert_frame_equal(tail, canaries.reset_index(drop=True), check_dtype=False)
        assert list(site.train_index[len(site.train_index) - included :]) == list(
            range(len(table) - included, len(table))
        )


def test_only_classification_tables_with_enough_features_get_canaries(breast_cancer):
    with pytest.raises(CanaryError, match="at most 20 canaries"):
        make_canaries(breast_cancer.examples, breast_cancer.schema, 21)
    diabetes = load_dataset("diabetes")
    with pytest.raises(CanaryError, match="regression"):
        make_canaries(diabetes.examples, diabetes.schema, 5)
    result = CliRunner().invoke(cli, ["simulate", "--audit", "--dataset", "diabetes"])
    assert result.exit_code == 2 and "regression label" in result.output


def test_the_audit_is_refused_outside_simulation():
    with pytest.raises(SettingsError, match="audit-canaries"):
        RunSettings(mode="deployment", schema_path="s.toml", audit_canaries=10)
    with pytest.raises(SettingsError, match="audit-canaries"):
        RunSettings(secure_aggregation="on", audit_canaries=10)
