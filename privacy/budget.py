"""A site's round, trained within its privacy budget: the one place the order is kept.

The DP guarantee a site gives holds only if every step below happens, in this order,
for every update it releases:

1. δ must be below 1/n for the site's n training examples;
2. the Poisson sampling rate is computed once, and the same rate is planned, checked,
   used by Opacus and recorded;
3. σ is planned so that the rest of the run fits in the least of what is left: of the
   site's lifetime budget, of its per-federation cap and of its per-run cap;
4. the ledger checks that this round's release stays within all three;
5. DP-SGD trains (:func:`privacy.dp_sgd.train_locally`);
6. the release is recorded in the ledger (saved atomically) before the update leaves;
   the ledger's lock is held from step 3 to here, so that two runs training at the site
   at once take turns and each plans and checks against the other's releases;
7. the update is kept, so that a coordinator asking again for the same round gets the
   same update, which reveals nothing new and costs no ε (training again would).

:func:`train_within_budget` does all of it in one call; the ClientApp only turns
:class:`BudgetExceeded` and :class:`DeltaTooLarge` into its error replies.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from torch import nn

from models.tasks import Task
from privacy.dp_sgd import DPSettings, batches_per_epoch, dp_sample_rate, train_locally
from privacy.ledger import BudgetExceeded, PrivacyLedger, Release

__all__ = [
    "BudgetExceeded",
    "BudgetedUpdate",
    "DeltaTooLarge",
    "RoundRequest",
    "arrays_digest",
    "train_within_budget",
]

LAST_RELEASE = "last_release.npz"
LAST_RELEASE_META = "last_release.json"


class DeltaTooLarge(ValueError):
    """The site's δ is not below 1/n: the guarantee would be meaningless."""


@dataclass(frozen=True)
class RoundRequest:
    """What the coordinator asks of a site for one round.

    Parameters
    ----------
    federation, run : str
        Name the run in the ledger.
    round, num_rounds : int
        This round and the run's total (σ is planned for the rounds left).
    dp : bool
        Whether to train with DP-SGD.
    local_epochs, batch_size, learning_rate : training settings
        ``batch_size`` is the expected batch size under Poisson sampling.
    max_grad_norm : float
        Per-example clipping norm.
    proximal_mu : float
        FedProx's μ (0 for FedAvg).
    seed : int or None
        Seeds sampling and noise (simulation); None in deployment, where they come
        from the site's own entropy (:func:`privacy.dp_sgd.train_locally`).
    input_digest : str
        :func:`arrays_digest` of the global weights the round starts from.
    """

    federation: str
    run: str
    round: int
    num_rounds: int
    dp: bool
    local_epochs: int
    batch_size: int
    learning_rate: float
    max_grad_norm: float
    proximal_mu: float
    seed: int | None
    input_digest: str

    @property
    def key(self) -> dict[str, object]:
        """The request's identity in the re-send cache."""
        return {"federation": self.federation, "run": self.run, "round": self.round}


@dataclass(frozen=True)
class BudgetedUpdate:
    """A released update and what it cost.

    Parameters
    ----------
    weights : dict of str to ndarray
        The trained weights (plain parameter names).
    num_examples : int
        The site's training examples.
    epsilon : float
        The site's ε spent after this release, over everything it ever released.
    noise_multiplier : float
        σ used (0 without DP).
    train_loss, train_seconds : float
        Mean training loss and the training loop's wall time.
    resent : bool
        True when this is the update already released for the same request.
    epsilon_remaining : float or None
        What is left of the site's lifetime budget after this release (None for an
        update re-sent from a cache written before it was kept).
    """

    weights: dict[str, np.ndarray]
    num_examples: int
    epsilon: float
    noise_multiplier: float
    train_loss: float
    train_seconds: float
    resent: bool = False
    epsilon_remaining: float | None = None


def arrays_digest(weights: Mapping[str, np.ndarray]) -> str:
    """sha256 over the names and bytes of ``weights``, in name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(weights[name]).tobytes())
    return digest.hexdigest()


def train_within_budget(
    ledger: PrivacyLedger,
    request: RoundRequest,
    model: nn.Module,
    global_weights: Mapping[str, np.ndarray],
    inputs: np.ndarray,
    targets: np.ndarray,
    task: Task,
) -> BudgetedUpdate:
    """Train one round at a site and release the update only within the site's budget.

    Parameters
    ----------
    ledger : PrivacyLedger
        The site's ledger; its folder also keeps the last released update.
    request : RoundRequest
        The round asked for.
    model : nn.Module
        The network, holding ``global_weights``.
    global_weights : mapping of str to ndarray
        The weights the round starts from (FedProx's anchor).
    inputs, targets : ndarray
        The site's encoded training part.
    task : Task
        Gives the loss.

    Raises
    ------
    DeltaTooLarge
        δ is not below 1/n.
    BudgetExceeded
        The round would take the site past its budget (nothing is trained or recorded).
    """
    # Held from the re-send check to the saved release: another run training at this site
    # at once waits, then plans and checks against a ledger holding this release.
    with ledger.locked():
        cached = _cached_update(ledger.state_dir, request)
        if cached is not None:
            return cached
        n = len(inputs)
        planned = _plan(ledger, request, n) if request.dp else None
        result = train_locally(
            model,
            inputs,
            targets,
            task,
            epochs=request.local_epochs,
            batch_size=request.batch_size,
            learning_rate=request.learning_rate,
            dp=planned[0] if planned is not None else None,
            proximal_mu=request.proximal_mu,
            global_weights=global_weights,
            seed=request.seed,
        )
        if planned is not None:
            checked = planned[1]
            if (result.sample_rate, result.steps) != (checked.sample_rate, checked.steps):
                raise RuntimeError("Opacus sampled at another rate or step count than checked")
            epsilon = ledger.record(checked).epsilon_after
        else:
            epsilon = ledger.spent
        update = BudgetedUpdate(
            weights=result.weights,
            num_examples=n,
            epsilon=epsilon,
            epsilon_remaining=ledger.remaining,
            noise_multiplier=planned[0].noise_multiplier if planned is not None else 0.0,
            train_loss=result.mean_loss,
            train_seconds=result.seconds,
        )
        _remember_update(ledger.state_dir, request, update)
    return update


def _plan(ledger: PrivacyLedger, request: RoundRequest, n: int) -> tuple[DPSettings, Release]:
    """Steps 1-4: δ, the sampling rate, σ for the rest of the run, and the checked release."""
    if ledger.delta >= 1.0 / n:
        raise DeltaTooLarge(f"δ={ledger.delta:g} must be below 1/n = {1.0 / n:.2e}")
    sample_rate = dp_sample_rate(n, request.batch_size)
    steps = request.local_epochs * batches_per_epoch(n, request.batch_size)
    rounds_left = request.num_rounds - request.round + 1
    sigma = ledger.plan_noise(request.federation, request.run, sample_rate, steps, rounds_left)
    checked = ledger.check(
        sigma, sample_rate, steps, request.federation, request.run, request.round
    )
    return DPSettings(noise_multiplier=sigma, max_grad_norm=request.max_grad_norm), checked


def _cached_update(state_dir: Path, request: RoundRequest) -> BudgetedUpdate | None:
    """The update already released for this exact request (same round, same input)."""
    meta_path = state_dir / LAST_RELEASE_META
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("request") != request.key or meta.get("input_sha256") != request.input_digest:
        return None
    with np.load(state_dir / LAST_RELEASE, allow_pickle=False) as saved:
        weights = {k: saved[k] for k in saved.files}
    if arrays_digest(weights) != meta.get("weights_sha256"):
        return None
    return BudgetedUpdate(weights=weights, resent=True, **meta["update"])


def _remember_update(state_dir: Path, request: RoundRequest, update: BudgetedUpdate) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    # cast: mypy would also match each array against savez's ``allow_pickle: bool``
    # Each file replaced whole, and the meta names the weights' digest: a crash between
    # the two never pairs a request with another round's weights.
    partial = state_dir / f".{LAST_RELEASE}"
    with open(partial, "wb") as handle:
        np.savez(handle, **cast(dict[str, Any], update.weights))
    os.replace(partial, state_dir / LAST_RELEASE)
    figures = {
        "num_examples": update.num_examples,
        "epsilon": update.epsilon,
        "epsilon_remaining": update.epsilon_remaining,
        "noise_multiplier": update.noise_multiplier,
        "train_loss": update.train_loss,
        "train_seconds": update.train_seconds,
    }
    meta = {
        "request": request.key,
        "input_sha256": request.input_digest,
        "weights_sha256": arrays_digest(update.weights),
        "update": figures,
    }
    (state_dir / f".{LAST_RELEASE_META}").write_text(json.dumps(meta))
    os.replace(state_dir / f".{LAST_RELEASE_META}", state_dir / LAST_RELEASE_META)
