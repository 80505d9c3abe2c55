"""The one-run privacy audit of a simulated run: each site's empirical lower bound on ε.

Steinke, Nasr and Jagielski (2023) audit a DP training run with one run: canaries each
join the data on a secret coin, the auditor guesses from the released output which
joined, and the number of right guesses bounds ε from below (:mod:`privacy.audit`).

The attacker sees what the coordinator sees, every round: the global model ``w_t`` it
sent and each site's returned model (``server.federation.audit_view``). As DP's own
definition allows, it also knows the site's other records (the canaries are the unknown
ones); it never sees inside the site's training (batches, per-step gradients, noise).
For site ``k`` and round ``t`` it replays the site's local training without DP from
``w_t`` on those other records, and takes what the site's update holds beyond the
replay, ``b = w_k,t − replay_k,t``: without DP that is mostly the canaries' pull, with DP
mostly noise. Each canary's part of ``b`` is estimated by a ridge regression of ``b`` on
the canaries' fitting directions ``−∇ℓ(canary_i; w_t)`` (the directions overlap, so
each is estimated with the others), and a canary's score is its coefficient summed over
the rounds. Scores use nothing the coins decide but the released updates, so the bound
is valid whatever they are. The audit guesses "in" for the top third of the scores and
"out" for the bottom third (fixed before looking), and writes each site's bound beside
its accounted ε into ``report.json`` (``privacy.audit``) and ``report.png``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.site import SiteSettings, load_site
from models.data.features import Standardization
from models.data.kinds.registry import get_kind, load_schema
from models.families import build_model, task_for
from models.spec import ModelSpec, set_weights
from privacy.audit import AuditOutcome, audit_guesses
from privacy.dp_sgd import train_locally
from server.federation.audit_view import RoundView, load_rounds
from server.federation.checkpoint import Checkpoint
from server.federation.report import PLOT_FILE, plot_report, read_report, write_report
from server.settings import RunSettings
from simulations.canaries import AUDIT_FOLDER, CANARIES_FILE, load_coins
from simulations.prepare import read_layout

SIMULATION_FOLDER = "simulation"
CONFIDENCE = 0.95
# Each side's guesses as a share of the canaries (k₊ = k₋ = m · GUESS_SHARE).
GUESS_SHARE = 1 / 3
# The ridge penalty relative to the canary directions' mean squared norm.
RIDGE = 1e-2
# Any fixed seed: the replay's batches cannot be the site's (the canaries change them).
REPLAY_SEED = 0


def audit_run(run_dir: Path) -> dict[str, Any]:
    """Audit the simulated run in ``run_dir`` and add the result to its report and plot.

    Parameters
    ----------
    run_dir : Path
        A finished simulation's output folder, run with ``audit-canaries``.

    Returns
    -------
    dict
        The report's new ``privacy.audit`` entry.

    Raises
    ------
    FileNotFoundError
        The folder holds no finished run, no audit coins or no kept rounds.
    """
    report = read_report(run_dir)
    views = load_rounds(run_dir)
    if not views:
        raise FileNotFoundError(
            f"{run_dir}: no rounds kept for an audit; simulate with --audit to keep them"
        )
    simulation = run_dir / SIMULATION_FOLDER
    coins = load_coins(simulation)
    scores = canary_scores(run_dir, simulation, views)
    delta = float(report["privacy"]["delta"])
    accounted = report["privacy"]["epsilon_spent"] if report["privacy"]["dp"] else {}
    sites = {}
    for site, site_scores in scores.items():
        outcome = guess(site_scores, coins[site], delta)
        sites[site] = {**asdict(outcome), "accounted_epsilon": accounted.get(site)}
    entry = {
        "method": "one-run canary audit (Steinke, Nasr, Jagielski 2023), coordinator's view",
        "confidence": CONFIDENCE,
        "sites": sites,
    }
    report["privacy"]["audit"] = entry
    write_report(run_dir, report)
    plot_report(report, run_dir / PLOT_FILE)
    return entry


def guess(scores: np.ndarray, coins: np.ndarray, delta: float) -> AuditOutcome:
    """The guesses' tally and bound for one site (a third of the canaries on each side)."""
    each = int(len(scores) * GUESS_SHARE)
    return audit_guesses(scores, coins, each, each, delta, CONFIDENCE)


def canary_scores(run_dir: Path, simulation: Path, views: list[RoundView]) -> dict[str, np.ndarray]:
    """Each site's score per canary, from the coordinator's view of every round."""
    checkpoint = Checkpoint.load(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint; is it a finished run's folder?")
    spec = ModelSpec.from_dict(checkpoint.meta["model"])
    standardization = Standardization.from_dict(checkpoint.meta["standardization"])
    settings = RunSettings(**checkpoint.meta["settings"])
    schema = load_schema(simulation / "schema.toml")
    canaries = get_kind(schema).load(simulation / AUDIT_FOLDER / CANARIES_FILE, schema)
    encoded = canaries.encode(np.arange(canaries.num_examples), standardization)
    records = known_records(simulation, standardization)
    scores: dict[str, np.ndarray] = {}
    for view in views:
        towards = fitting_directions(spec, view.global_weights, encoded.inputs, encoded.targets)
        for site, update in view.updates.items():
            replay = replay_update(spec, settings, view.global_weights, *records[site])
            beyond = _flat(update) - _flat(replay)
            scores[site] = scores.get(site, 0.0) + ridge_coefficients(towards, beyond)
    return scores


def known_records(
    simulation: Path, standardization: Standardization
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each site's training records other than the canaries, encoded (the attacker's prior)."""
    layout = read_layout(simulation)
    known = {}
    for entry in layout.sites:
        site = load_site(SiteSettings.from_mapping(entry, f"{simulation} sites.json"))
        others = site.train_index[: len(site.train_index) - site.settings.audit_canaries]
        encoded = site.examples.encode(others, standardization)
        known[site.settings.name] = (encoded.inputs, encoded.targets)
    return known


def replay_update(
    spec: ModelSpec,
    settings: RunSettings,
    weights: dict[str, np.ndarray],
    inputs: np.ndarray,
    targets: np.ndarray,
) -> dict[str, np.ndarray]:
    """The site's round replayed without DP from ``weights`` on its known records."""
    model = build_model(spec)
    set_weights(model, weights)
    return train_locally(
        model,
        inputs,
        targets,
        task_for(spec),
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        dp=None,
        proximal_mu=settings.proximal_mu if settings.strategy == "fedprox" else 0.0,
        global_weights=weights,
        seed=REPLAY_SEED,
    ).weights


def ridge_coefficients(directions: np.ndarray, beyond: np.ndarray) -> np.ndarray:
    """Each direction's coefficient in a ridge regression of ``beyond`` on all of them."""
    gram = directions @ directions.T
    shrink = RIDGE * np.trace(gram) / len(gram)
    return np.linalg.solve(gram + shrink * np.eye(len(gram)), directions @ beyond)


def fitting_directions(
    spec: ModelSpec, weights: dict[str, np.ndarray], inputs: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """Per canary, −∇ of its loss at ``weights``, flattened in name order (one row each)."""
    model = build_model(spec)
    set_weights(model, weights)
    params = dict(model.named_parameters())
    trained = [n for n in sorted(weights) if n in params]  # buffers have no gradient
    task = task_for(spec)
    rows = []
    for x, y in zip(torch.as_tensor(inputs), torch.as_tensor(targets), strict=True):
        loss = task.loss(model(x.unsqueeze(0)), y.unsqueeze(0))
        grads = torch.autograd.grad(loss, [params[n] for n in trained])
        by_name = dict(zip(trained, grads, strict=True))
        rows.append(
            np.concatenate(
                [
                    -by_name[n].numpy().ravel() if n in by_name else np.zeros(weights[n].size)
                    for n in sorted(weights)
                ]
            )
        )
    return np.asarray(rows)


def _flat(weights: dict[str, np.ndarray]) -> np.ndarray:
    """The weights as one vector, in name order (as :func:`fitting_directions` orders)."""
    return np.concatenate([np.asarray(weights[n], dtype=float).ravel() for n in sorted(weights)])
