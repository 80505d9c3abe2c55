"""The site's privacy ledger: ε composed over every round, persisted, and enforced."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from torch.utils.data import DataLoader, TensorDataset

from models.families import build_model, get_task
from models.spec import ModelSpec
from privacy.dp_sgd import DPSettings, batches_per_epoch, train_locally
from privacy.ledger import LEDGER_FILE, BudgetExceeded, PrivacyLedger

SIGMA, RATE = 1.1, 0.25


def _data(n: int = 64, dim: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(np.float32).reshape(-1, 1)
    return x, y


def test_epsilon_over_rounds_equals_one_opacus_engine_over_the_same_steps(tmp_path):
    """Three rounds, each with a fresh PrivacyEngine as a ClientApp would make, composed in
    the ledger, give the ε of a single Opacus engine that took all those steps."""
    x, y = _data()
    spec = ModelSpec(kind="logreg", task="binary", input_dim=4, output_dim=1)
    task = get_task("binary")
    ledger = PrivacyLedger(tmp_path, epsilon_budget=100.0)
    total_steps = 0
    for round_number in range(1, 4):
        result = train_locally(
            build_model(spec, seed=0), x, y, task, epochs=2, batch_size=16,
            learning_rate=0.1, dp=DPSettings(noise_multiplier=SIGMA), seed=round_number,
        )  # fmt: skip
        ledger.step(SIGMA, result.sample_rate, result.steps, round=round_number)
        total_steps += result.steps
    assert total_steps == 3 * 2 * batches_per_epoch(64, 16)

    # One engine, one loader, the same number of optimizer steps.
    model = build_model(spec, seed=0)
    engine = PrivacyEngine(accountant="rdp")
    loader = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=16)
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=loader,
        noise_multiplier=SIGMA,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    steps = 0
    while steps < total_steps:
        for xb, yb in loader:
            if steps == total_steps:
                break
            optimizer.zero_grad()
            if len(xb):
                task.loss(model(xb), yb).backward()
            optimizer.step()
            steps += 1
    opacus_epsilon = engine.get_epsilon(delta=1e-5)
    assert ledger.spent == pytest.approx(opacus_epsilon, rel=1e-9)
    # and a fresh engine per round would have under-counted: that is what the ledger is for
    one_round = RDPAccountant()
    one_round.history = [(SIGMA, RATE, total_steps // 3)]
    assert one_round.get_epsilon(1e-5) < 0.7 * ledger.spent


def test_ledger_survives_a_restart_and_keeps_counting(tmp_path):
    first = PrivacyLedger(tmp_path, epsilon_budget=5.0)
    first.step(SIGMA, RATE, 10, federation="f", run="r1", round=1)
    spent = first.spent
    assert (tmp_path / LEDGER_FILE).is_file()

    again = PrivacyLedger(tmp_path, epsilon_budget=5.0)  # a restarted site process
    assert again.spent == pytest.approx(spent)
    again.step(SIGMA, RATE, 10, federation="f", run="r1", round=2)
    assert again.spent > spent
    expected = RDPAccountant()
    expected.history = [(SIGMA, RATE, 10), (SIGMA, RATE, 10)]
    assert again.spent == pytest.approx(expected.get_epsilon(1e-5), rel=1e-12)
    summary = again.summary()
    assert summary["runs"] == [
        {
            "federation": "f",
            "run": "r1",
            "rounds": 2,
            "steps": 20,
            "epsilon": again.spent,
            "epsilon_after": again.spent,
        }
    ]
    assert summary["federations"] == [{"federation": "f", "runs": 1, "epsilon": again.spent}]


def test_a_ledger_written_before_per_run_caps_loads_with_each_scope_composed(tmp_path):
    ledger = PrivacyLedger(tmp_path, epsilon_budget=50.0)
    for run, rounds in (("r1", 3), ("r2", 2)):
        for round_ in range(1, rounds + 1):
            ledger.step(SIGMA, RATE, 10, federation="f", run=run, round=round_)
    written = [dataclasses.asdict(r) for r in ledger.releases]
    raw = json.loads((tmp_path / LEDGER_FILE).read_text())
    for entry in raw["releases"]:  # the fields the previous ledger format lacked
        del entry["run_epsilon_after"], entry["federation_epsilon_after"]
    (tmp_path / LEDGER_FILE).write_text(json.dumps(raw))
    reloaded = PrivacyLedger(tmp_path, epsilon_budget=50.0)
    for old, new in zip(written, reloaded.releases, strict=True):
        for field in ("epsilon_after", "run_epsilon_after", "federation_epsilon_after"):
            assert getattr(new, field) == pytest.approx(old[field], rel=1e-12), field
        assert (new.run, new.round) == (old["run"], old["round"])


def test_a_release_past_the_budget_is_refused_and_not_recorded(tmp_path):
    ledger = PrivacyLedger(tmp_path, epsilon_budget=1.0)
    sigma = ledger.plan_noise("f", "run", RATE, steps_per_round=8, rounds=3)
    for _ in range(3):
        ledger.record(ledger.check(sigma, RATE, 8, "f", "run"))
    assert ledger.spent <= 1.0
    assert ledger.spent > 0.98  # the plan uses the budget, it does not waste it
    with pytest.raises(BudgetExceeded, match="over the site's budget of 1"):
        ledger.check(sigma, RATE, 8, "f", "run")
    assert len(PrivacyLedger(tmp_path, epsilon_budget=1.0).releases) == 3


def test_the_plan_is_kept_for_the_run_across_restarts(tmp_path):
    ledger = PrivacyLedger(tmp_path, epsilon_budget=2.0)
    sigma = ledger.plan_noise("f", "run", RATE, 4, 5)
    ledger.step(sigma, RATE, 4)
    restarted = PrivacyLedger(tmp_path, epsilon_budget=2.0)
    assert restarted.plan_noise("f", "run", RATE, 4, 4) == sigma
    # A new run plans with what is left: more noise for the same number of rounds.
    assert restarted.plan_noise("f", "next", RATE, 4, 5) > sigma


def test_a_spent_budget_leaves_no_plan(tmp_path):
    ledger = PrivacyLedger(tmp_path, epsilon_budget=0.5)
    ledger.step(0.8, 1.0, 50)  # far past the budget already (e.g. an earlier, larger budget)
    with pytest.raises(BudgetExceeded, match="no noise level up to"):
        ledger.plan_noise("f", "run", RATE, 4, 5)


def test_delta_cannot_change_under_an_existing_ledger(tmp_path):
    PrivacyLedger(tmp_path, 1.0, delta=1e-5).step(SIGMA, RATE, 3)
    with pytest.raises(ValueError, match="keep δ fixed"):
        PrivacyLedger(tmp_path, 1.0, delta=1e-6)


def test_a_corrupt_ledger_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / LEDGER_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="the privacy ledger is corrupt"):
        PrivacyLedger(tmp_path, 1.0)
    (tmp_path / LEDGER_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a fedcare privacy ledger"):
        PrivacyLedger(tmp_path, 1.0)


def test_cached_curves_give_the_epsilon_of_a_fresh_opacus_accountant(tmp_path):
    history = [(SIGMA, RATE, 12), (0.9, 0.1, 30), (SIGMA, RATE, 7), (2.5, 0.5, 4)]
    ledger = PrivacyLedger(tmp_path, epsilon_budget=100.0)
    for sigma, rate, steps in history:
        ledger.step(sigma, rate, steps, federation="f", run="r")
    fresh = RDPAccountant()
    fresh.history = list(history)
    assert ledger.spent == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-9)
    # the curves are saved with the ledger: a restarted site computes none of them again
    saved = json.loads((tmp_path / LEDGER_FILE).read_text())
    assert len(saved["rdp_curves"]) == 3
    restarted = PrivacyLedger(tmp_path, epsilon_budget=100.0)
    assert set(restarted.curves) == set(ledger.curves)
    again = restarted.release(1.3, 0.2, 5, federation="f", run="r")
    fresh.history.append((1.3, 0.2, 5))
    assert again.epsilon_after == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-9)


def test_the_plan_fits_the_least_of_what_is_left_and_each_cap_is_enforced(tmp_path):
    ledger = PrivacyLedger(tmp_path, 4.0, epsilon_per_run=1.0, epsilon_per_federation=1.2)
    sigma = ledger.plan_noise("f", "a", RATE, 8, 2)
    for round_number in (1, 2):
        ledger.record(ledger.check(sigma, RATE, 8, "f", "a", round_number))
    assert 0.99 < ledger.releases[-1].run_epsilon_after <= 1.0  # the run's cap binds
    with pytest.raises(BudgetExceeded, match="over the site's per-run cap of 1"):
        ledger.check(sigma, RATE, 8, "f", "a", 3)
    # the next run of f gets what is left of f's cap (less than its own), over f's releases
    second = ledger.plan_noise("f", "b", RATE, 8, 2)
    assert second > sigma
    for round_number in (1, 2):
        ledger.record(ledger.check(second, RATE, 8, "f", "b", round_number))
    assert 1.19 < ledger.releases[-1].federation_epsilon_after <= 1.2
    with pytest.raises(BudgetExceeded, match="over the site's per-federation cap of 1.2"):
        ledger.check(second, RATE, 8, "f", "c")
    # another federation starts from its own spend; the lifetime composes everything
    other = ledger.plan_noise("g", "a", RATE, 8, 2)
    assert other == pytest.approx(sigma, rel=1e-3)
    release = ledger.check(other, RATE, 8, "g", "a")
    assert release.federation_epsilon_after == release.run_epsilon_after < 1.0
    fresh = RDPAccountant()
    fresh.history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in ledger.releases]
    fresh.history.append((other, RATE, 8))
    assert release.epsilon_after == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-9)
    summary = ledger.summary()
    assert [(f["federation"], f["runs"]) for f in summary["federations"]] == [("f", 2)]
    assert summary["epsilon_per_federation"] == 1.2
