"""Two processes training at one site at once: every release recorded, none over budget."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from models.families import build_model, get_task
from models.spec import ModelSpec, get_weights
from privacy.budget import RoundRequest, train_within_budget
from privacy.ledger import PrivacyLedger

ROUNDS = 3


def _train_run(state_dir: str, run: str, start: object) -> None:
    """One run's rounds at the site, as a SuperNode's ClientApp process would train them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    spec = ModelSpec(kind="logreg", task="binary", input_dim=4, output_dim=1)
    start.wait()  # type: ignore[attr-defined]
    for server_round in range(1, ROUNDS + 1):
        model = build_model(spec, seed=0)
        weights = get_weights(model)
        request = RoundRequest(
            federation="f", run=run, round=server_round, num_rounds=ROUNDS, dp=True,
            local_epochs=1, batch_size=16, learning_rate=0.1, max_grad_norm=1.0,
            proximal_mu=0.0, seed=server_round, input_digest=f"{run}-{server_round}",
        )  # fmt: skip
        ledger = PrivacyLedger(state_dir, epsilon_budget=4.0, epsilon_per_run=2.0)
        train_within_budget(ledger, request, model, weights, x, y, get_task("binary"))


def test_two_processes_at_one_site_record_every_release_within_the_budget(tmp_path: Path):
    context = multiprocessing.get_context("spawn")  # no forked torch threads
    start = context.Event()
    workers = [context.Process(target=_train_run, args=(str(tmp_path), run, start)) for run in "ab"]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    ledger = PrivacyLedger(tmp_path, epsilon_budget=4.0)
    releases = ledger.releases
    assert sorted((r.run, r.round) for r in releases) == [
        (run, n) for run in "ab" for n in range(1, ROUNDS + 1)
    ]
    accountant = RDPAccountant()
    accountant.history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in releases]
    assert ledger.spent == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert ledger.spent <= 4.0
    # each release composed every one before it, whichever process made it
    assert [r.epsilon_after for r in releases] == sorted(r.epsilon_after for r in releases)
    assert all(r.run_epsilon_after <= 2.0 + 1e-9 for r in releases)
