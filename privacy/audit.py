"""An empirical lower bound on ε from one training run (Steinke, Nasr and Jagielski 2023).

"Privacy Auditing with One (1) Training Run" (NeurIPS 2023, arXiv:2305.08846). The
auditor makes ``m`` canaries and, for each, flips a secret fair coin ``S_i ∈ {−1, +1}``:
the canary joins the training data when ``S_i = +1``. After training it scores every
canary from what was released, guesses ``T_i = +1`` ("in") for the ``k₊`` highest scores
and ``T_i = −1`` ("out") for the ``k₋`` lowest, and abstains (``T_i = 0``) on the rest,
so it makes ``r = k₊ + k₋`` guesses, a number fixed before looking. Let ``W`` count the
correct guesses (``T_i = S_i``).

Their main theorem, in the form the code of their appendix computes: if the training
run is (ε, δ)-DP in each canary (add/remove adjacency), then for every ``v``::

    P[W ≥ v] ≤ β(v) + 2·m·δ·α(v),
    β(v) = P[Binomial(r, p) ≥ v],   p = e^ε / (1 + e^ε),
    α(v) = max over i = 1 … v of P[v − i ≤ Binomial(r, p) < v] / i.

(For δ = 0 it is the binomial tail alone: each guess of an ε-DP run is right with
probability at most e^ε/(1 + e^ε), as for randomized response, even given the others.)

The bound is a p-value: the right-hand side grows with ε, so every ε whose p-value for
the observed ``v`` is below ``1 − confidence`` is refuted at that confidence, and the
lower bound is the largest such ε (found by bisection, as the paper's code does). It holds
whatever the scores are, since they are computed from the released output only.

What it is and is not:

- a *lower* bound: the run leaks at least this much (with the given confidence); the
  accounted ε is an *upper* bound. An audit that finds nothing proves nothing about the
  run's privacy; one above the accounted ε would show an accounting or implementation bug.
- it is weak with few canaries: even ``r`` all-correct guesses cannot certify more than
  ``ε = log(q / (1 − q))`` with ``q = (1 − confidence)^(1/r)`` (about 1.8 for ``r = 20``
  at 95 %); the paper uses thousands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

__all__ = [
    "AuditOutcome",
    "audit_guesses",
    "epsilon_lower_bound",
    "largest_certifiable",
    "p_value",
]

# Bisection steps on ε (the paper's code takes 30; the bound is then exact to 1e-9·max).
BISECTION_STEPS = 40


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The largest probability an (ε, δ)-DP run gives ``v`` or more correct of ``r`` guesses.

    Parameters
    ----------
    m : int
        Canaries (each in with probability 1/2).
    r : int
        Guesses made (``r ≤ m``).
    v : int
        Correct guesses (``v ≤ r``).
    epsilon, delta : float
        The DP guarantee tested.
    """
    _check_counts(m, r, v)
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need ε ≥ 0 and δ in [0, 1], got ε={epsilon}, δ={delta}")
    p = 1.0 / (1.0 + math.exp(-epsilon))  # right-guess rate of ε-DP randomized response
    beta = float(binom.sf(v - 1, r, p))  # P[Binomial(r, p) ≥ v]
    alpha, below = 0.0, 0.0
    for i in range(1, v + 1):
        below += float(binom.pmf(v - i, r, p))  # P[v − i ≤ Binomial(r, p) < v]
        alpha = max(alpha, below / i)
    return min(beta + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest ε that ``v`` correct of ``r`` guesses refute at ``confidence`` (0 if none).

    Parameters
    ----------
    m, r, v : int
        Canaries, guesses, correct guesses.
    delta : float
        The δ of the run's guarantee.
    confidence : float
        In (0, 1): the bound holds with at least this probability.
    """
    _check_counts(m, r, v)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    level = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    # Ends: as ε grows, p → 1 and P[Binomial(r, p) ≥ v] → 1.
    while p_value(m, r, v, high, delta) < level:
        low, high = high, 2 * high
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if p_value(m, r, v, middle, delta) < level:
            low = middle
        else:
            high = middle
    return low


def largest_certifiable(m: int, r: int, delta: float, confidence: float = 0.95) -> float:
    """The bound all ``r`` guesses right would give: the most this audit can ever show."""
    return epsilon_lower_bound(m, r, r, delta, confidence)


@dataclass(frozen=True)
class AuditOutcome:
    """One site's audit: the guesses' tally and the ε lower bound it gives.

    Parameters
    ----------
    canaries : int
        ``m``.
    guesses : int
        ``r``: ``k₊`` guessed in plus ``k₋`` guessed out.
    correct : int
        ``v``.
    delta, confidence : float
        The bound's δ and confidence.
    epsilon_lower_bound : float
        The empirical lower bound on the run's ε.
    largest_certifiable : float
        What all ``r`` guesses right would have given (the audit's ceiling).
    """

    canaries: int
    guesses: int
    correct: int
    delta: float
    confidence: float
    epsilon_lower_bound: float
    largest_certifiable: float


def audit_guesses(
    scores: np.ndarray,
    included: np.ndarray,
    guess_in: int,
    guess_out: int,
    delta: float,
    confidence: float = 0.95,
) -> AuditOutcome:
    """Guess "in" for the ``guess_in`` highest scores and "out" for the ``guess_out`` lowest.

    Parameters
    ----------
    scores : ndarray
        One score per canary, from the released output only (higher: more likely in).
    included : ndarray of bool
        The secret coins: which canaries were in the training data.
    guess_in, guess_out : int
        ``k₊`` and ``k₋``, fixed before the scores are seen.
    delta, confidence : float
        The δ of the run's guarantee and the bound's confidence.
    """
    scores, included = np.asarray(scores, dtype=float), np.asarray(included, dtype=bool)
    m = len(scores)
    if len(included) != m or guess_in < 0 or guess_out < 0 or guess_in + guess_out > m:
        raise ValueError(
            f"{m} scores and {len(included)} coins: need one coin per score and "
            f"0 ≤ guess_in + guess_out ≤ {m}, got {guess_in} + {guess_out}"
        )
    # A stable sort: ties are broken by canary order, which the coins do not influence.
    order = np.argsort(scores, kind="stable")
    guessed_in = order[m - guess_in :] if guess_in else order[:0]
    guessed_out = order[:guess_out]
    correct = int(included[guessed_in].sum() + (~included[guessed_out]).sum())
    r = guess_in + guess_out
    return AuditOutcome(
        canaries=m,
        guesses=r,
        correct=correct,
        delta=delta,
        confidence=confidence,
        epsilon_lower_bound=epsilon_lower_bound(m, r, correct, delta, confidence),
        largest_certifiable=largest_certifiable(m, r, delta, confidence),
    )


def _check_counts(m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 ≤ correct ≤ guesses ≤ canaries, got {v}, {r}, {m}")
