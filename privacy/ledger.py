"""The site's privacy ledger: every DP-SGD release the site ever made, on disk.

A new Opacus ``PrivacyEngine`` per round only knows that round. The site must compose
over every round it ever trained, across process restarts and runs, and refuse a round
that would take it over its own budget. The ledger keeps the accountant's history (noise
multiplier, sample rate, steps per release) in a JSON file in the site's state folder and
rebuilds an Opacus accountant from it whenever ε is asked for, so the figure is exactly
Opacus's.

Saving is atomic (write then rename), so a crash mid-write never loses the count.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LEDGER_FILE = "privacy_ledger.json"
LEDGER_FORMAT = "fedcare-privacy-ledger/1"
# The most noise (relative to the clipping norm) a plan may use before the site refuses.
MAX_NOISE_MULTIPLIER = 64.0


class BudgetExceeded(RuntimeError):
    """Training the requested round would take the site over its ε budget."""


@dataclass(frozen=True)
class Release:
    """One DP-SGD training session whose result left the site.

    Parameters
    ----------
    noise_multiplier : float
        σ of the Gaussian noise, relative to the clipping norm.
    sample_rate : float
        Poisson sampling probability of each record per step.
    steps : int
        Optimizer steps taken.
    federation, run, round : str, str, int
        Which federation, run and round this was for (for reports; the budget counts
        every release whatever its federation).
    epsilon_after : float
        ε spent after this release, at the ledger's δ.
    time : float
        Unix time of the release.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    federation: str
    run: str
    round: int
    epsilon_after: float
    time: float


def _merge_equal_settings(
    history: list[tuple[float, float, int]],
) -> list[tuple[float, float, int]]:
    """One entry per (σ, q) with the steps added up.

    RDP composes linearly in the number of steps, so this gives Opacus's RDP accountant
    exactly the same ε, while computing each (σ, q) curve once instead of once per round
    (each curve takes a few hundred milliseconds).
    """
    steps: dict[tuple[float, float], int] = {}
    for sigma, rate, count in history:
        steps[(sigma, rate)] = steps.get((sigma, rate), 0) + count
    return [(sigma, rate, count) for (sigma, rate), count in steps.items()]


class PrivacyLedger:
    """ε accounting that survives restarts, against one site's budget.

    Parameters
    ----------
    state_dir : path
        The site's state folder; the ledger is ``<state_dir>/privacy_ledger.json``.
    epsilon_budget : float
        The most ε the site will ever spend on this data.
    delta : float
        The δ at which ε is reported; must be below 1/n for the site's n records.
    accountant : str
        Opacus accountant: ``rdp`` (default), ``prv`` or ``gdp``.
    """

    def __init__(
        self,
        state_dir: str | Path,
        epsilon_budget: float,
        delta: float = 1e-5,
        accountant: str = "rdp",
    ):
        if epsilon_budget <= 0:
            raise ValueError(f"the ε budget must be positive, got {epsilon_budget}")
        if not 0 < delta < 1:
            raise ValueError(f"δ must be in (0, 1), got {delta}")
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LEDGER_FILE
        self.epsilon_budget = float(epsilon_budget)
        self.delta = float(delta)
        self.accountant = accountant
        self.releases: list[Release] = []
        self.plans: dict[str, float] = {}
        if self.path.is_file():
            self._load()

    # -- the accountant interface -------------------------------------------------

    def get_epsilon(self, extra: list[tuple[float, float, int]] | None = None) -> float:
        """ε spent so far (plus ``extra`` hypothetical releases) at the ledger's δ."""
        history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in self.releases]
        history += extra or []
        if not history:
            return 0.0
        # Imported here: Opacus pulls in torch, which a `fedcare site budget` does not need.
        from opacus.accountants import create_accountant

        accountant = create_accountant(self.accountant)
        accountant.history = _merge_equal_settings(history) if self.accountant == "rdp" else history
        return float(accountant.get_epsilon(delta=self.delta))

    @property
    def spent(self) -> float:
        """The site's ε spent so far (0 before any release)."""
        # Each release stores ε after it, at this ledger's fixed δ and accountant.
        return self.releases[-1].epsilon_after if self.releases else 0.0

    @property
    def remaining(self) -> float:
        """The ε left in the budget (never negative)."""
        return max(self.epsilon_budget - self.spent, 0.0)

    def check(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε after a release with these settings; raises :class:`BudgetExceeded` if over."""
        after = self.get_epsilon([(noise_multiplier, sample_rate, steps)])
        if after > self.epsilon_budget + 1e-9:
            raise BudgetExceeded(
                f"training this round would bring ε to {after:.3f}, over the site's budget "
                f"of {self.epsilon_budget:g} (δ={self.delta:g}; spent so far {self.spent:.3f})"
            )
        return after

    def step(
        self,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        federation: str = "",
        run: str = "",
        round: int = 0,
    ) -> Release:
        """Record a release (after :meth:`check`) and save the ledger."""
        after = self.get_epsilon([(noise_multiplier, sample_rate, steps)])
        release = Release(
            noise_multiplier=float(noise_multiplier),
            sample_rate=float(sample_rate),
            steps=int(steps),
            federation=federation,
            run=run,
            round=int(round),
            epsilon_after=after,
            time=time.time(),
        )
        self.releases.append(release)
        self.save()
        return release

    # -- planning -------------------------------------------------------------------

    def plan_noise(
        self, plan_key: str, sample_rate: float, steps_per_round: int, rounds: int
    ) -> float:
        """The noise multiplier that lets ``rounds`` more rounds fit the remaining budget.

        Computed once per ``plan_key`` (federation + run) and kept in the ledger, so a
        restarted site keeps training the run with the same σ.
        """
        if plan_key in self.plans:
            return self.plans[plan_key]
        if rounds <= 0 or steps_per_round <= 0:
            raise ValueError("a plan needs at least one round of at least one step")

        def fits(sigma: float) -> bool:
            extra = [(sigma, sample_rate, steps_per_round)] * rounds
            return self.get_epsilon(extra) <= self.epsilon_budget

        low, high = 0.3, 2.0
        while not fits(high):
            low, high = high, high * 2
            if high > MAX_NOISE_MULTIPLIER:
                # Past this, every update would be mostly noise and harm the global model.
                raise BudgetExceeded(
                    f"no noise level up to σ={MAX_NOISE_MULTIPLIER:g} fits {rounds} more "
                    f"round(s) in the site's remaining budget (spent {self.spent:.3f} of "
                    f"{self.epsilon_budget:g})"
                )
        if fits(low):
            high = low
        for _ in range(40):  # bisection to ~1e-4 relative precision
            mid = (low + high) / 2
            if fits(mid):
                high = mid
            else:
                low = mid
            if high - low < 1e-4 * high:
                break
        self.plans[plan_key] = high
        self.save()
        return high

    # -- persistence ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The ledger as its JSON file holds it: budget, δ, accountant, releases, plans."""
        return {
            "format": LEDGER_FORMAT,
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "accountant": self.accountant,
            "releases": [asdict(r) for r in self.releases],
            "plans": dict(self.plans),
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
        if raw.get("accountant", "rdp") != self.accountant:
            raise ValueError(
                f"{self.path}: the ledger uses the '{raw['accountant']}' accountant, "
                f"not '{self.accountant}'"
            )
        if float(raw["delta"]) != self.delta:
            raise ValueError(
                f"{self.path}: the ledger accounts at δ={raw['delta']}, the site asks "
                f"δ={self.delta}; keep δ fixed for a site's data"
            )
        # A site may lower its budget but the history always counts.
        self.releases = [Release(**r) for r in raw.get("releases", [])]
        self.plans = {k: float(v) for k, v in raw.get("plans", {}).items()}

    def summary(self) -> dict[str, Any]:
        """Spent and left, overall and per federation/run, for `fedcare site budget`."""
        by_run: dict[str, dict[str, Any]] = {}
        for r in self.releases:
            key = f"{r.federation}/{r.run}"
            entry = by_run.setdefault(
                key, {"federation": r.federation, "run": r.run, "rounds": 0, "steps": 0}
            )
            entry["rounds"] += 1
            entry["steps"] += r.steps
            entry["epsilon_after"] = r.epsilon_after
        return {
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "epsilon_spent": self.spent,
            "epsilon_remaining": self.remaining,
            "releases": len(self.releases),
            "runs": list(by_run.values()),
        }
