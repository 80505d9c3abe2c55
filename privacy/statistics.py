"""The federated statistics, released with the Gaussian mechanism and accounted.

A site's counts, sums and sums of squares (and class counts) would give a patient's value
back if released exactly (a sum with one absurd cell, divided by the count). Here every
figure a site sends is noisy, and the noise is paid for in the site's privacy ledger:

1. the values are clipped to the schema's declared ``[min, max]`` (the kinds do it when
   summing; a numeric column without both bounds cannot be released, see
   :class:`MissingRange`), so one record changes a count by at most ``c`` (its values per
   example: 1 for a table, up to ``max_steps`` for a sequence), a sum by ``c·max|x|``, a
   sum of squares by ``c·max x²`` and the class counts by 1;
2. each figure gets Gaussian noise of standard deviation ``σ·Δ_i`` (``Δ_i`` its own
   sensitivity), so the whole vector, divided figure by figure by ``Δ_i``, is one
   Gaussian mechanism of L2 sensitivity ``Δ = √k`` over its ``k`` figures and noise σ:
   RDP ``α·k/(2σ²)`` (:func:`privacy.ledger.gaussian_rdp`);
3. σ is calibrated so that this release alone costs ``share`` of the ε the run has left
   (the least of the site's lifetime budget, its per-federation and its per-run caps);
   training then plans its noise within what is left after it;
4. the release is checked and recorded in the ledger before it leaves, and kept: asked
   again for the same run, the site sends the same figures (nothing new, no ε).

In deployment the noise comes from the operating system's entropy, never from a seed
the coordinator knows (it could subtract it); only a simulation, where the coordinator
and the sites are one researcher, seeds it for reproducible runs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from models.data.features import FeatureStatistics
from privacy.ledger import PrivacyLedger, gaussian_epsilon

STATISTICS_RELEASE = "statistics_release.json"


class MissingRange(ValueError):
    """A numeric column has no declared ``[min, max]``; its figures cannot be made private.

    Parameters
    ----------
    columns : list of str
        The schema's columns without both bounds.
    """

    def __init__(self, columns: list[str]):
        self.columns = columns
        names = ", ".join(f"'{c}'" for c in columns)
        super().__init__(
            f"numeric column(s) {names} declare no min and max in the schema; the federated "
            "statistics need both to bound what one patient can change"
        )


@dataclass(frozen=True)
class StatisticsRequest:
    """What the coordinator asks for.

    Parameters
    ----------
    federation, run : str
        Name the run in the ledger (the release counts against its caps).
    epsilon_share : float
        The share, in (0, 1), of the ε the run has left that the statistics may cost.
    seed : int or None
        Seeds the noise (a reproducible simulation); None draws it from the operating
        system's entropy (a deployment).
    """

    federation: str
    run: str
    epsilon_share: float
    seed: int | None = None


@dataclass(frozen=True)
class PrivateStatistics:
    """The noisy statistics a site sends, and what they cost.

    Parameters
    ----------
    statistics : FeatureStatistics
        Every count, sum and sum of squares with its noise (counts and sums of squares
        then clamped at 0, which costs nothing: post-processing).
    epsilon : float
        ε of this release alone at the ledger's δ.
    noise_multiplier : float
        σ relative to each figure's sensitivity.
    resent : bool
        True when these are the figures already released for the same run.
    """

    statistics: FeatureStatistics
    epsilon: float
    noise_multiplier: float
    resent: bool = False


def release_statistics(
    ledger: PrivacyLedger,
    exact: FeatureStatistics,
    bounds: Mapping[str, tuple[float, float]],
    classes: Sequence[str],
    request: StatisticsRequest,
) -> PrivateStatistics:
    """Release ``exact`` with calibrated Gaussian noise, recorded in ``ledger``.

    Parameters
    ----------
    ledger : PrivacyLedger
        The site's ledger; its folder also keeps the released figures.
    exact : FeatureStatistics
        The site's statistics of values already clipped to ``bounds``.
    bounds : mapping of str to (float, float)
        The declared ``(min, max)`` of every numeric column of ``exact``.
    classes : sequence of str
        Every class of the schema (each gets a noisy count, present at the site or not:
        an absent key would tell the class is absent).
    request : StatisticsRequest
        The run and the share of its ε.

    Raises
    ------
    MissingRange
        A numeric column of ``exact`` has no bounds.
    BudgetExceeded
        Nothing is left of the run's ε, or the release would exceed a budget.
    """
    missing = sorted(set(exact.count) - set(bounds))
    if missing:
        raise MissingRange(missing)
    with ledger.locked():
        cached = _cached(ledger, request)
        if cached is not None:
            return cached
        complete = replace(exact, label_counts={c: exact.label_counts.get(c, 0.0) for c in classes})
        scales = _sensitivities(complete, bounds)
        # the class counts are one histogram: one record moves one of them by 1
        figures = [k for k, v in scales.items() if v > 0 and not k.startswith("label/")]
        groups = len(figures) + (1 if complete.label_counts else 0)
        sensitivity = math.sqrt(groups)
        budget = request.epsilon_share * ledger.epsilon_left(request.federation, request.run)
        sigma = ledger.calibrate_gaussian(budget, sensitivity)
        release = ledger.within_budgets(
            ledger.gaussian_release(sensitivity, sigma, request.federation, request.run),
            "releasing the statistics",
        )
        entropy = request.seed if request.seed is not None else os.urandom(16)
        rng = np.random.default_rng(
            entropy if isinstance(entropy, int) else int.from_bytes(entropy, "big")
        )
        noisy = _noisy(complete, scales, sigma, rng)
        ledger.record(release)
        released = PrivateStatistics(
            noisy, gaussian_epsilon(sensitivity, sigma, ledger.delta), sigma
        )
        _remember(ledger, request, released)
    return released


def _sensitivities(
    stats: FeatureStatistics, bounds: Mapping[str, tuple[float, float]]
) -> dict[str, float]:
    """Each figure's sensitivity by its :meth:`FeatureStatistics.to_flat` key."""
    per_example = float(stats.values_per_example)
    scales = {"rows": 1.0}
    for name in stats.count:
        low, high = bounds[name]
        largest = max(abs(low), abs(high))
        scales[f"count/{name}"] = per_example
        scales[f"sum/{name}"] = per_example * largest
        scales[f"sumsq/{name}"] = per_example * largest**2
    for label in stats.label_counts:
        scales[f"label/{label}"] = 1.0
    return scales


def _noisy(
    stats: FeatureStatistics,
    scales: Mapping[str, float],
    sigma: float,
    rng: np.random.Generator,
) -> FeatureStatistics:
    """``stats`` with N(0, (σ·Δ_i)²) on each figure; counts and squares kept at or above 0."""
    flat = stats.to_flat()
    noisy = {key: value + rng.normal(0.0, sigma * scales[key]) for key, value in flat.items()}
    for key in noisy:
        if key == "rows" or key.split("/")[0] in ("count", "sumsq", "label"):
            noisy[key] = max(noisy[key], 0.0)
    noisy["rows"] = float(round(noisy["rows"]))
    return FeatureStatistics.from_flat(noisy)


def _cached(ledger: PrivacyLedger, request: StatisticsRequest) -> PrivateStatistics | None:
    """The figures already released for this run, if any."""
    path = ledger.state_dir / STATISTICS_RELEASE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved["request"] != [request.federation, request.run]:
        return None
    return PrivateStatistics(
        FeatureStatistics.from_flat(saved["statistics"]),
        float(saved["epsilon"]),
        float(saved["noise_multiplier"]),
        resent=True,
    )


def _remember(
    ledger: PrivacyLedger, request: StatisticsRequest, released: PrivateStatistics
) -> None:
    path = ledger.state_dir / STATISTICS_RELEASE
    partial = path.with_name(f".{path.name}")
    partial.write_text(
        json.dumps(
            {
                "request": [request.federation, request.run],
                "statistics": released.statistics.to_flat(),
                "epsilon": released.epsilon,
                "noise_multiplier": released.noise_multiplier,
            }
        )
    )
    os.replace(partial, path)
