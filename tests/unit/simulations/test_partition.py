"""Splitting data into simulated hospitals, and the strategies the run config selects."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from server.federation.strategies import make_strategy, restore_strategy_state, strategy_state
from server.settings import RunSettings, SettingsError
from simulations.datasets import load_dataset
from simulations.partition import partition


@pytest.fixture(scope="module")
def cancer():
    dataset = load_dataset("breast_cancer")
    return dataset.examples, dataset.schema.label


def test_iid_sites_are_disjoint_balanced_and_cover_every_row(cancer):
    frame, label = cancer
    parts = partition(frame, label, 5, method="iid", seed=3)
    assert sum(len(p) for p in parts) == len(frame)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 2
    overall = frame[label].mean()
    for part in parts:
        assert abs(part[label].mean() - overall) < 0.05


def test_dirichlet_sites_are_label_skewed_but_usable(cancer):
    frame, label = cancer
    parts = partition(frame, label, 5, method="dirichlet", alpha=0.5, seed=0)
    shares = [p[label].mean() for p in parts]
    assert max(shares) - min(shares) > 0.2
    assert all(p[label].nunique() == 2 and len(p) >= 10 for p in parts)


def test_size_skew_and_reproducibility(cancer):
    frame, label = cancer
    a = partition(frame, label, 4, method="size", alpha=0.5, seed=1)
    b = partition(frame, label, 4, method="size", alpha=0.5, seed=1)
    assert [len(p) for p in a] == [len(p) for p in b]
    assert max(len(p) for p in a) > 1.5 * min(len(p) for p in a)


def test_impossible_splits_say_why(cancer):
    frame, label = cancer
    with pytest.raises(ValueError, match="cannot make 100 sites of at least 10 rows"):
        partition(frame, label, 100)
    with pytest.raises(ValueError, match="unknown partition 'zipf'"):
        partition(frame, label, 3, method="zipf")


@pytest.mark.parametrize(
    ("name", "cls"), [("fedavg", FedAvg), ("fedprox", FedProx), ("fedadam", FedAdam)]
)
def test_run_config_selects_the_strategy(name, cls):
    settings = RunSettings.from_run_config({"strategy": name, "proximal-mu": "0.1"})
    strategy = make_strategy(settings, num_sites=5)
    assert type(strategy) is cls
    if name == "fedprox":
        assert strategy.proximal_mu == 0.1


def test_fedadam_moments_survive_a_checkpoint():
    strategy = make_strategy(RunSettings(strategy="fedadam"), 3)
    strategy.current_arrays = {"w": np.ones(3)}
    strategy.m_t = {"w": np.full(3, 0.5)}
    strategy.v_t = {"w": np.full(3, 0.25)}
    state = strategy_state(strategy)
    fresh = make_strategy(RunSettings(strategy="fedadam"), 3)
    restore_strategy_state(fresh, state)
    np.testing.assert_array_equal(fresh.m_t["w"], strategy.m_t["w"])
    np.testing.assert_array_equal(fresh.v_t["w"], strategy.v_t["w"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"strategy": "fedsgd"}, "run config 'strategy' = 'fedsgd': expected one of"),
        ({"num-server-rounds": 0}, "run config 'num-server-rounds' = 0: expected at least 1"),
        ({"epsilon": "-1"}, "run config 'epsilon' = -1.0: expected positive"),
        ({"roundz": 3}, "unknown run config key 'roundz'"),
        ({"batch-size": "many"}, "run config 'batch-size' = 'many': wrong type"),
        ({"mode": "deployment"}, "'schema-path' is required in deployment mode"),
    ],
)
def test_bad_run_config_names_the_key(config, message):
    with pytest.raises(SettingsError) as caught:
        RunSettings.from_run_config(config)
    assert message in str(caught.value)
