"""The one-run audit's bound (privacy/audit.py) against a brute-force binomial computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy.audit import audit_guesses, epsilon_lower_bound, largest_certifiable, p_value


def _tail(r: int, v: int, p: float) -> float:
    """P[Binomial(r, p) ≥ v], summed term by term."""
    return sum(math.comb(r, j) * p**j * (1 - p) ** (r - j) for j in range(v, r + 1))


def _brute_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The theorem's right-hand side, written as the paper states it."""
    p = math.exp(epsilon) / (1 + math.exp(epsilon))
    alpha = max((_tail(r, v - i, p) - _tail(r, v, p)) / i for i in range(1, v + 1)) if v else 0
    return min(_tail(r, v, p) + 2 * m * delta * alpha, 1.0)


@pytest.mark.parametrize(
    ("m", "r", "v", "epsilon", "delta"),
    [
        (30, 20, 20, 1.0, 0.0),
        (30, 20, 15, 0.5, 1e-5),
        (100, 40, 30, 2.0, 1e-3),
        (10, 10, 0, 1.0, 0.0),
    ],
)
def test_p_value_is_the_theorems_bound(m, r, v, epsilon, delta):
    assert p_value(m, r, v, epsilon, delta) == pytest.approx(
        _brute_p_value(m, r, v, epsilon, delta), rel=1e-9, abs=1e-12
    )


def test_all_right_without_delta_is_the_closed_form():
    # p^r = 0.05 at the bound: ε = log(q / (1 − q)) with q = 0.05^(1/r)
    q = 0.05 ** (1 / 20)
    assert epsilon_lower_bound(30, 20, 20, 0.0) == pytest.approx(math.log(q / (1 - q)), rel=1e-6)
    assert largest_certifiable(30, 20, 0.0) == epsilon_lower_bound(30, 20, 20, 0.0)


def test_the_bound_is_where_the_p_value_crosses_the_level():
    bound = epsilon_lower_bound(200, 60, 50, 1e-5, 0.95)
    assert 0 < bound
    assert _brute_p_value(200, 60, 50, bound - 1e-4, 1e-5) < 0.05
    assert _brute_p_value(200, 60, 50, bound + 1e-4, 1e-5) >= 0.05


def test_chance_level_guesses_bound_nothing_and_more_right_bound_more():
    assert epsilon_lower_bound(30, 20, 10, 1e-5) == 0.0
    bounds = [epsilon_lower_bound(100, 50, v, 1e-5) for v in (35, 40, 45, 50)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    # δ only weakens the bound
    assert epsilon_lower_bound(100, 50, 45, 1e-2) < epsilon_lower_bound(100, 50, 45, 0.0)


def test_guesses_take_the_top_as_in_and_the_bottom_as_out():
    scores = np.array([5.0, -3.0, 0.1, 4.0, -2.0, 0.0])
    coins = np.array([True, False, False, False, False, True])
    outcome = audit_guesses(scores, coins, guess_in=2, guess_out=2, delta=0.0)
    # in: canaries 0 (right) and 3 (wrong); out: canaries 1 and 4 (both right)
    assert (outcome.guesses, outcome.correct) == (4, 3)
    assert outcome.epsilon_lower_bound == epsilon_lower_bound(6, 4, 3, 0.0)


def test_bad_counts_are_refused_with_the_counts_named():
    with pytest.raises(ValueError, match="0 ≤ correct ≤ guesses ≤ canaries"):
        p_value(10, 11, 3, 1.0, 0.0)
    with pytest.raises(ValueError, match="guess_in"):
        audit_guesses(np.zeros(4), np.zeros(4, bool), 3, 2, 0.0)
