"""The site's privacy ledger: every release the site ever made, on disk.

Two kinds of release are composed: DP-SGD training sessions (the sampled Gaussian
mechanism, :data:`SAMPLED_GAUSSIAN`) and the federated statistics (one Gaussian mechanism,
:data:`GAUSSIAN`, whose RDP at order α is α·Δ²/(2σ²); see :mod:`privacy.statistics`).

A new Opacus ``PrivacyEngine`` per round only knows that round. The site must compose
over every round it ever trained, across process restarts and runs, and refuse a round
that would take it over its own budget. The ledger keeps the accountant's history (noise
multiplier, sample rate, steps per release) in a JSON file in the site's state folder and
composes it as Opacus's RDP accountant does, so every figure is exactly Opacus's.

Three budgets bound a site: its lifetime ε over every release (the guarantee it gives),
and optionally a cap per run and a cap per federation, each composed over that run's or
federation's releases alone.

The accountant is cheap because RDP is linear in the number of steps: the per-step RDP
curve of each (σ, sampling rate) is computed once with Opacus, kept in the ledger file,
and every ε is a weighted sum of cached curves turned into ε by Opacus's conversion.

Saving is atomic (write then rename), so a crash mid-write never loses the count; a lock
file (``flock``) lets processes training at one site at once take turns (:meth:`locked`).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

LEDGER_FILE = "privacy_ledger.json"
LOCK_FILE = "privacy_ledger.lock"
LEDGER_FORMAT = "fedcare-privacy-ledger/1"
# The least and the most noise (relative to the clipping norm) a plan may use; past the
# most, every update would be mostly noise and harm the global model, so the site refuses.
MIN_NOISE_MULTIPLIER = 0.3
MAX_NOISE_MULTIPLIER = 64.0
# A plan's σ is found to this relative precision.
PLAN_PRECISION = 1e-4
# A plan first searches σ at the integer orders (cheap), then at the orders within
# ORDER_WINDOW places of each best one, below the first σ by at most FINE_BRACKET.
ORDER_WINDOW = 5
FINE_BRACKET = 0.05
# The kinds of release (``Release.mechanism``); a ledger written before the Gaussian
# mechanism holds DP-SGD releases only, which load as SAMPLED_GAUSSIAN.
SAMPLED_GAUSSIAN = "sampled_gaussian"
GAUSSIAN = "gaussian"
# The least noise a Gaussian release may be calibrated to (relative to its sensitivity).
MIN_GAUSSIAN_NOISE = 1e-3
MAX_GAUSSIAN_NOISE = 1e6


class BudgetExceeded(RuntimeError):
    """Training the requested round would take the site over one of its ε budgets."""


@dataclass(frozen=True)
class Release:
    """One result that left the site: a DP-SGD training session or a Gaussian release.

    Parameters
    ----------
    noise_multiplier : float
        σ of the Gaussian noise: relative to the clipping norm (DP-SGD), or the noise's
        standard deviation in the units of ``sensitivity`` (Gaussian mechanism).
    sample_rate : float
        Poisson sampling probability of each record per step (1 for a Gaussian release).
    steps : int
        Optimizer steps taken (1 for a Gaussian release).
    federation : str
        The federation this was for.
    run : str
        The run (within its federation) this was for.
    round : int
        The run's round.
    epsilon_after : float
        The site's lifetime ε after this release (every release composed), at the
        ledger's δ.
    time : float
        Unix time of the release.
    run_epsilon_after : float
        ε of this run's releases alone, after this one.
    federation_epsilon_after : float
        ε of this federation's releases alone, after this one.
    mechanism : str
        :data:`SAMPLED_GAUSSIAN` (DP-SGD) or :data:`GAUSSIAN` (the statistics).
    sensitivity : float
        A Gaussian release's L2 sensitivity Δ (its RDP at order α is α·Δ²/(2σ²)).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    federation: str
    run: str
    round: int
    epsilon_after: float
    time: float
    run_epsilon_after: float
    federation_epsilon_after: float
    mechanism: str = SAMPLED_GAUSSIAN
    sensitivity: float = 1.0

    @property
    def is_training(self) -> bool:
        """Whether this is a DP-SGD training session (not the statistics)."""
        return self.mechanism == SAMPLED_GAUSSIAN


@dataclass(frozen=True)
class _Scope:
    """The releases one budget covers: the site's lifetime, a federation's or a run's.

    Parameters
    ----------
    name : str
        How refusals name its cap.
    cap : float or None
        The most ε it allows (None: not capped; its ε is still recorded).
    rdp : ndarray
        RDP at the accountant's orders of the releases it covers.
    """

    name: str
    cap: float | None
    rdp: np.ndarray


def _orders() -> list[float]:
    """The RDP orders of Opacus's RDP accountant (the ones every figure uses)."""
    # Imported here: Opacus pulls in torch, which a `fedcare site budget` does not need.
    from opacus.accountants import RDPAccountant

    return list(RDPAccountant.DEFAULT_ALPHAS)


def _step_rdp(sample_rate: float, sigma: float, orders: Sequence[float]) -> np.ndarray:
    """Opacus's RDP of one step of the sampled Gaussian mechanism at ``orders``."""
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=1, orders=orders))


def gaussian_rdp(sensitivity: float, noise_std: float, orders: Sequence[float]) -> np.ndarray:
    """RDP of one Gaussian mechanism at ``orders``: α·Δ²/(2σ²).

    Parameters
    ----------
    sensitivity : float
        The released vector's L2 sensitivity Δ.
    noise_std : float
        σ, the standard deviation of the noise added to each coordinate.
    orders : sequence of float
        The RDP orders α.
    """
    return np.asarray(orders, dtype=float) * sensitivity**2 / (2 * noise_std**2)


def gaussian_epsilon(sensitivity: float, noise_std: float, delta: float) -> float:
    """ε at ``delta`` of one Gaussian mechanism alone, with Opacus's orders and conversion.

    Parameters
    ----------
    sensitivity : float
        The L2 sensitivity Δ.
    noise_std : float
        The noise's standard deviation σ.
    delta : float
        The δ of the guarantee.
    """
    orders = _orders()
    return _privacy_spent(gaussian_rdp(sensitivity, noise_std, orders), orders, delta)[0]


def _privacy_spent(rdp: np.ndarray, orders: Sequence[float], delta: float) -> tuple[float, float]:
    """Opacus's RDP-to-(ε, δ) conversion: ε at the best of ``orders``, and that order."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings():
        # Opacus warns when the best order is the first or last given: a plan's search
        # passes a few orders on purpose.
        warnings.simplefilter("ignore")
        epsilon, order = get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(epsilon), float(order)


def _smallest_fitting(fits: Callable[[float], bool], low: float, high: float) -> float:
    """The least σ in [``low``, ``high``], to :data:`PLAN_PRECISION`, for which ``fits``.

    Parameters
    ----------
    fits : callable
        Whether σ fits; must hold at ``high`` and be monotone (more noise never costs
        more ε).
    low, high : float
        The bracket.
    """
    if fits(low):
        return low
    while high - low > PLAN_PRECISION * high:
        mid = (low + high) / 2
        if fits(mid):
            high = mid
        else:
            low = mid
    return high


class PrivacyLedger:
    """ε accounting that survives restarts, against one site's budgets.

    Parameters
    ----------
    state_dir : path
        The site's state folder; the ledger is ``<state_dir>/privacy_ledger.json``.
    epsilon_budget : float
        The most ε the site will ever spend on this data (every release composed).
    delta : float
        The δ at which ε is reported; must be below 1/n for the site's n records.
    epsilon_per_run : float, optional
        The most ε one run's releases may compose to (no cap when None).
    epsilon_per_federation : float, optional
        The most ε one federation's releases may compose to (no cap when None).
    """

    def __init__(
        self,
        state_dir: str | Path,
        epsilon_budget: float,
        delta: float = 1e-5,
        epsilon_per_run: float | None = None,
        epsilon_per_federation: float | None = None,
    ):
        for name, value in (
            ("ε budget", epsilon_budget),
            ("per-run ε cap", epsilon_per_run),
            ("per-federation ε cap", epsilon_per_federation),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"the {name} must be positive, got {value}")
        if not 0 < delta < 1:
            raise ValueError(f"δ must be in (0, 1), got {delta}")
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LEDGER_FILE
        self.epsilon_budget = float(epsilon_budget)
        self.epsilon_per_run = _optional_float(epsilon_per_run)
        self.epsilon_per_federation = _optional_float(epsilon_per_federation)
        self.delta = float(delta)
        self.releases: list[Release] = []
        self.plans: dict[str, float] = {}
        # (σ, sampling rate) → RDP of one step at the accountant's orders
        self.curves: dict[tuple[float, float], np.ndarray] = {}
        if self.path.is_file():
            self._load()

    # -- the accountant -----------------------------------------------------------------

    def _curve(self, sigma: float, sample_rate: float) -> np.ndarray:
        key = (float(sigma), float(sample_rate))
        if key not in self.curves:
            self.curves[key] = _step_rdp(sample_rate, sigma, _orders())
        return self.curves[key]

    def _rdp(self, releases: Iterable[Release]) -> np.ndarray:
        """RDP of ``releases``: DP-SGD steps per (σ, rate) times that curve, and Gaussians."""
        steps: dict[tuple[float, float], int] = {}
        total = np.zeros(len(_orders()))
        for r in releases:
            if r.mechanism == GAUSSIAN:
                total = total + gaussian_rdp(r.sensitivity, r.noise_multiplier, _orders())
                continue
            key = (r.noise_multiplier, r.sample_rate)
            steps[key] = steps.get(key, 0) + r.steps
        for (sigma, rate), count in steps.items():
            total = total + self._curve(sigma, rate) * count
        return total

    def _scopes(self, federation: str, run: str) -> list[_Scope]:
        """The site's lifetime, ``federation``'s and ``run``'s RDP, with their caps."""
        of_federation = [r for r in self.releases if r.federation == federation]
        of_run = [r for r in of_federation if r.run == run]
        return [
            _Scope("the site's budget", self.epsilon_budget, self._rdp(self.releases)),
            _Scope(
                "the site's per-federation cap",
                self.epsilon_per_federation,
                self._rdp(of_federation),
            ),
            _Scope("the site's per-run cap", self.epsilon_per_run, self._rdp(of_run)),
        ]

    @property
    def spent(self) -> float:
        """The site's lifetime ε spent so far (0 before any release)."""
        # Each release stores ε after it, at this ledger's fixed δ.
        return self.releases[-1].epsilon_after if self.releases else 0.0

    @property
    def remaining(self) -> float:
        """The ε left in the lifetime budget (never negative)."""
        return max(self.epsilon_budget - self.spent, 0.0)

    def release(
        self,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        federation: str = "",
        run: str = "",
        round: int = 0,
    ) -> Release:
        """The release these settings would make, with its ε; nothing is recorded.

        Parameters
        ----------
        noise_multiplier, sample_rate : float
            σ and the Poisson sampling rate.
        steps : int
            Optimizer steps.
        federation, run : str
            Which federation and run it is for (their caps and spends).
        round : int
            The run's round.
        """
        extra = self._curve(noise_multiplier, sample_rate) * int(steps)
        return self._composed(
            extra,
            noise_multiplier=float(noise_multiplier),
            sample_rate=float(sample_rate),
            steps=int(steps),
            federation=federation,
            run=run,
            round=int(round),
        )

    def gaussian_release(
        self, sensitivity: float, noise_std: float, federation: str = "", run: str = ""
    ) -> Release:
        """The Gaussian release these settings would make, with its ε; nothing is recorded.

        Parameters
        ----------
        sensitivity : float
            The released vector's L2 sensitivity Δ.
        noise_std : float
            The noise's standard deviation σ on each coordinate.
        federation, run : str
            Which federation and run it is for.
        """
        return self._composed(
            gaussian_rdp(sensitivity, noise_std, _orders()),
            noise_multiplier=float(noise_std),
            sample_rate=1.0,
            steps=1,
            federation=federation,
            run=run,
            round=0,
            mechanism=GAUSSIAN,
            sensitivity=float(sensitivity),
        )

    def _composed(self, extra: np.ndarray, **fields: Any) -> Release:
        """A release whose RDP is ``extra``, with every scope's ε after it."""
        lifetime, of_federation, of_run = (
            _privacy_spent(scope.rdp + extra, _orders(), self.delta)[0]
            for scope in self._scopes(fields["federation"], fields["run"])
        )
        return Release(
            epsilon_after=lifetime,
            time=time.time(),
            run_epsilon_after=of_run,
            federation_epsilon_after=of_federation,
            **fields,
        )

    def check(
        self,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        federation: str = "",
        run: str = "",
        round: int = 0,
    ) -> Release:
        """:meth:`release`, refused if it would exceed any of the site's budgets.

        Parameters
        ----------
        noise_multiplier, sample_rate : float
            σ and the Poisson sampling rate.
        steps : int
            Optimizer steps.
        federation, run : str
            Which federation and run it is for (their caps and spends).
        round : int
            The run's round.

        Raises
        ------
        BudgetExceeded
            The lifetime budget, the federation's or the run's cap would be exceeded.
        """
        release = self.release(noise_multiplier, sample_rate, steps, federation, run, round)
        return self.within_budgets(release, "training this round")

    def within_budgets(self, release: Release, what: str) -> Release:
        """``release``, refused if it would exceed any of the site's budgets.

        Parameters
        ----------
        release : Release
            From :meth:`release` or :meth:`gaussian_release`, with no release in between.
        what : str
            What the release is, for the refusal ("training this round").

        Raises
        ------
        BudgetExceeded
            The lifetime budget, the federation's or the run's cap would be exceeded.
        """
        after = (release.epsilon_after, release.federation_epsilon_after, release.run_epsilon_after)
        over = [
            f"ε to {epsilon:.3f}, over {scope.name} of {scope.cap:g}"
            for scope, epsilon in zip(
                self._scopes(release.federation, release.run), after, strict=True
            )
            if scope.cap is not None and epsilon > scope.cap + 1e-9
        ]
        if over:
            raise BudgetExceeded(
                f"{what} would bring {'; '.join(over)} (δ={self.delta:g}; site's "
                f"lifetime ε spent so far {self.spent:.3f} of {self.epsilon_budget:g})"
            )
        return release

    def epsilon_left(self, federation: str, run: str) -> float:
        """The least ε a run still has: of the lifetime budget and its capped scopes.

        Parameters
        ----------
        federation, run : str
            The run.
        """
        return min(
            scope.cap - _privacy_spent(scope.rdp, _orders(), self.delta)[0]
            if scope.rdp.any()
            else scope.cap
            for scope in self._scopes(federation, run)
            if scope.cap is not None
        )

    def calibrate_gaussian(self, epsilon: float, sensitivity: float) -> float:
        """The least noise σ giving a Gaussian release alone at most ``epsilon`` at δ.

        Parameters
        ----------
        epsilon : float
            The ε the release may cost on its own (composed, the site's total grows by
            at most as much, since RDP composition is below the sum of ε).
        sensitivity : float
            The release's L2 sensitivity Δ.

        Raises
        ------
        BudgetExceeded
            ``epsilon`` is not positive: nothing is left to release with.
        """
        if epsilon <= 0:
            raise BudgetExceeded(
                f"no ε left for the statistics (site's lifetime ε spent {self.spent:.3f} "
                f"of {self.epsilon_budget:g})"
            )

        def fits(sigma: float) -> bool:
            return gaussian_epsilon(sensitivity, sigma, self.delta) <= epsilon

        # RDP at Opacus's orders (up to 63) never converts below a floor ε at δ, however
        # much noise: a target under it cannot be met.
        if not fits(MAX_GAUSSIAN_NOISE * sensitivity):
            raise BudgetExceeded(
                f"ε={epsilon:.4f} for the statistics is below what the RDP accountant can "
                f"certify at δ={self.delta:g}; raise statistics-epsilon-share"
            )
        high = sensitivity
        while not fits(high):
            high *= 2
        return _smallest_fitting(fits, MIN_GAUSSIAN_NOISE * sensitivity, high)

    def record(self, release: Release) -> Release:
        """Append ``release`` (from :meth:`check`, made now) and save the ledger.

        Parameters
        ----------
        release : Release
            What :meth:`check` returned for this release, with no release in between.
        """
        release = replace(release, time=time.time())
        self.releases.append(release)
        self.save()
        return release

    def step(
        self,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        federation: str = "",
        run: str = "",
        round: int = 0,
    ) -> Release:
        """Record a release without checking it against the budgets, and save the ledger.

        Parameters
        ----------
        noise_multiplier, sample_rate : float
            σ and the Poisson sampling rate.
        steps : int
            Optimizer steps.
        federation, run : str
            Which federation and run it was for.
        round : int
            The run's round.
        """
        return self.record(
            self.release(noise_multiplier, sample_rate, steps, federation, run, round)
        )

    # -- planning ---------------------------------------------------------------------

    def plan_noise(
        self, federation: str, run: str, sample_rate: float, steps_per_round: int, rounds: int
    ) -> float:
        """The σ that lets ``rounds`` more rounds of a run fit every budget left to it.

        The least of what is left: the lifetime budget, the federation's cap and the run's
        cap, each composed over its own releases plus the planned ones. Computed once per
        run and kept in the ledger, so a restarted site keeps training the run with the
        same σ.

        Parameters
        ----------
        federation, run : str
            The run the plan is for.
        sample_rate : float
            The Poisson sampling rate of every round.
        steps_per_round : int
            Optimizer steps of each round.
        rounds : int
            Rounds of the run still to train, this one included.

        Raises
        ------
        BudgetExceeded
            No σ up to :data:`MAX_NOISE_MULTIPLIER` fits.
        """
        key = f"{federation}/{run}"
        if key in self.plans:
            return self.plans[key]
        if rounds <= 0 or steps_per_round <= 0:
            raise ValueError("a plan needs at least one round of at least one step")
        capped = [(s.cap, s.rdp) for s in self._scopes(federation, run) if s.cap is not None]
        orders = _orders()
        planned_steps = steps_per_round * rounds

        def fits(sigma: float, indexes: list[int]) -> bool:
            # ε at some of the orders is never below ε at all of them, so a σ that fits
            # there fits; integer orders are cheap to compute, fractional ones are not.
            subset = [orders[i] for i in indexes]
            step = _step_rdp(sample_rate, sigma, subset) * planned_steps
            return all(
                _privacy_spent(rdp[indexes] + step, subset, self.delta)[0] <= cap
                for cap, rdp in capped
            )

        integers = [i for i, a in enumerate(orders) if float(a).is_integer()]
        high = 2.0
        while not fits(high, integers):
            high *= 2
            if high > MAX_NOISE_MULTIPLIER:
                raise BudgetExceeded(
                    f"no noise level up to σ={MAX_NOISE_MULTIPLIER:g} fits {rounds} more "
                    f"round(s) of run {key} in what is left of the site's budgets (lifetime "
                    f"ε spent {self.spent:.3f} of {self.epsilon_budget:g})"
                )
        coarse = _smallest_fitting(lambda sigma: fits(sigma, integers), MIN_NOISE_MULTIPLIER, high)
        # The final σ is a little below the coarse one, and its best orders lie next to
        # the coarse σ's best integer orders: search again on those neighbourhoods only.
        whole = [orders[i] for i in integers]
        step = _step_rdp(sample_rate, coarse, whole) * planned_steps
        window: set[int] = set()
        for _, rdp in capped:
            best = orders.index(_privacy_spent(rdp[integers] + step, whole, self.delta)[1])
            window.update(range(max(best - ORDER_WINDOW, 0), best + ORDER_WINDOW + 1))
        near = sorted(i for i in window if i < len(orders))
        low = max(MIN_NOISE_MULTIPLIER, coarse * (1 - FINE_BRACKET))
        sigma = _smallest_fitting(lambda sigma: fits(sigma, near), low, coarse)
        self.plans[key] = sigma
        self.save()
        return sigma

    # -- concurrency and persistence --------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[PrivacyLedger]:
        """Hold the site's ledger lock, with the ledger as saved by whoever held it last.

        Two processes training at one site take turns: hold it from the plan and check
        to the recorded release, so that neither checks against a ledger the other is
        about to change.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if self.path.is_file():
                self._load()
            yield self

    def state_dict(self) -> dict[str, Any]:
        """The ledger as its JSON file holds it: budgets, δ, releases, plans, RDP curves."""
        return {
            "format": LEDGER_FORMAT,
            "epsilon_budget": self.epsilon_budget,
            "epsilon_per_run": self.epsilon_per_run,
            "epsilon_per_federation": self.epsilon_per_federation,
            "delta": self.delta,
            "accountant": "rdp",
            "releases": [asdict(r) for r in self.releases],
            "plans": dict(self.plans),
            "rdp_orders": _orders(),
            "rdp_curves": [
                {"noise_multiplier": sigma, "sample_rate": rate, "rdp": curve.tolist()}
                for (sigma, rate), curve in self.curves.items()
            ],
        }

    def save(self) -> None:
        """Write the ledger to its file atomically (temporary file, fsync, rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-")
        with os.fdopen(fd, "w") as handle:
            json.dump(self.state_dict(), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path}: the privacy ledger is corrupt ({err})") from err
        if raw.get("format") != LEDGER_FORMAT:
            raise ValueError(f"{self.path}: not a fedcare privacy ledger")
        if raw.get("accountant", "rdp") != "rdp":
            raise ValueError(f"{self.path}: the ledger uses the '{raw['accountant']}' accountant")
        if float(raw["delta"]) != self.delta:
            raise ValueError(
                f"{self.path}: the ledger accounts at δ={raw['delta']}, the site asks "
                f"δ={self.delta}; keep δ fixed for a site's data"
            )
        # Curves computed at other orders (another Opacus) are computed again.
        if raw.get("rdp_orders") == _orders():
            for entry in raw.get("rdp_curves", []):
                key = (float(entry["noise_multiplier"]), float(entry["sample_rate"]))
                self.curves.setdefault(key, np.asarray(entry["rdp"], dtype=float))
        # A site may lower its budgets but the history always counts.
        self.releases = []
        for entry in raw.get("releases", []):
            if entry.get("mechanism", SAMPLED_GAUSSIAN) not in (SAMPLED_GAUSSIAN, GAUSSIAN):
                raise ValueError(f"{self.path}: a release of unknown kind {entry['mechanism']!r}")
            if "run_epsilon_after" not in entry:
                entry = self._with_scoped_epsilon(entry)
            self.releases.append(Release(**entry))
        self.plans = {k: float(v) for k, v in raw.get("plans", {}).items()}

    def _with_scoped_epsilon(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A release of a ledger written before per-run caps, with its scoped ε added.

        The ε of its run and of its federation are composed from the releases before it,
        as :meth:`check` would have recorded them.
        """
        this = Release(**{**entry, "run_epsilon_after": 0.0, "federation_epsilon_after": 0.0})

        def composed(covers: Callable[[Release], bool]) -> float:
            releases = [r for r in [*self.releases, this] if covers(r)]
            return _privacy_spent(self._rdp(releases), _orders(), self.delta)[0]

        return {
            **entry,
            "run_epsilon_after": composed(
                lambda r: (r.federation, r.run) == (this.federation, this.run)
            ),
            "federation_epsilon_after": composed(lambda r: r.federation == this.federation),
        }

    def summary(self) -> dict[str, Any]:
        """Lifetime, per-federation and per-run spend and caps, for `fedcare site budget`."""
        runs: dict[tuple[str, str], dict[str, Any]] = {}
        federations: dict[str, dict[str, Any]] = {}
        for r in self.releases:
            entry = runs.setdefault(
                (r.federation, r.run),
                {"federation": r.federation, "run": r.run, "rounds": 0, "steps": 0},
            )
            entry["rounds"] += int(r.is_training)
            entry["steps"] += r.steps if r.is_training else 0
            entry["epsilon"] = r.run_epsilon_after
            entry["epsilon_after"] = r.epsilon_after
            federations[r.federation] = {
                "federation": r.federation,
                "runs": len({run for fed, run in runs if fed == r.federation}),
                "epsilon": r.federation_epsilon_after,
            }
        return {
            "epsilon_budget": self.epsilon_budget,
            "epsilon_per_run": self.epsilon_per_run,
            "epsilon_per_federation": self.epsilon_per_federation,
            "delta": self.delta,
            "epsilon_spent": self.spent,
            "epsilon_remaining": self.remaining,
            "releases": len(self.releases),
            "federations": list(federations.values()),
            "runs": list(runs.values()),
        }


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)
