"""Where a site's DP noise comes from: a seed in simulation, the site's entropy otherwise."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from models.families import build_model, get_task
from models.spec import ModelSpec
from privacy.dp_sgd import DPSettings, train_locally

SPEC = ModelSpec("logreg", "binary", 4, 1)


def _train(seed: int | None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(64, 4)).astype(np.float32)
    targets = (inputs[:, 0] > 0).astype(np.int64)
    model = build_model(SPEC, seed=0)
    return train_locally(
        model,
        inputs,
        targets,
        get_task("binary"),
        epochs=1,
        batch_size=16,
        learning_rate=0.1,
        dp=DPSettings(noise_multiplier=1.0),
        seed=seed,
    ).weights


def test_a_seeded_session_repeats_exactly():
    first, second = _train(7), _train(7)
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_an_unseeded_session_draws_fresh_noise_not_torchs_default_seed():
    torch.manual_seed(67280421310721)  # torch's default seed in every new process
    first = _train(None)
    torch.manual_seed(67280421310721)
    second = _train(None)
    assert any(not np.array_equal(first[k], second[k]) for k in first)


def test_a_dp_step_prints_no_third_party_warning():
    # the site executor forks a child per message: a warning per backward pass would be
    # printed in every round of every run (torch's about Opacus's backward hooks was)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(3)
    assert [str(w.message) for w in caught] == []
