"""Choosing the aggregation strategy, and saving and restoring its state.

The strategies are Flower's own (``flwr.serverapp.strategy``). FedAvg is the default;
FedProx adds a proximal term at the sites; FedAdam keeps server-side moments, which
:func:`strategy_state` / :func:`restore_strategy_state` carry through checkpoints. The
robust aggregators (FedMedian, FedTrimmedAvg, Krum) need each site's update and so cannot
be combined with secure aggregation.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from server.settings import RunSettings


class _Sampling(TypedDict):
    """The sampling arguments every strategy takes."""

    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int


def make_strategy(settings: RunSettings, num_sites: int) -> Strategy:
    """The strategy named by ``settings.strategy``, sampling every available site.

    Parameters
    ----------
    settings : RunSettings
        ``strategy``, ``min_sites`` and the strategy's own settings (``proximal_mu`` for
        FedProx; ``server_learning_rate`` and ``learning_rate`` for FedAdam).
    num_sites : int
        The sites in the run; Krum assumes at most ``(num_sites - 3) // 2`` are malicious.

    Returns
    -------
    Strategy
        A Flower Message API strategy.

    Raises
    ------
    ValueError
        The strategy's name is unknown.
    """
    common: _Sampling = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": settings.min_sites,
        "min_evaluate_nodes": settings.min_sites,
        "min_available_nodes": settings.min_sites,
    }
    name = settings.strategy
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(proximal_mu=settings.proximal_mu, **common)
    if name == "fedadam":
        return FedAdam(eta=settings.server_learning_rate, eta_l=settings.learning_rate, **common)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common)
    if name == "krum":
        return Krum(num_malicious_nodes=max(0, (num_sites - 3) // 2), **common)
    raise ValueError(f"unknown strategy '{name}'")


_STATE_FIELDS = ("current_arrays", "m_t", "v_t")


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """The arrays a stateful strategy (FedOpt family) keeps between rounds.

    Parameters
    ----------
    strategy : Strategy
        The run's strategy; one without such state gives an empty dict.

    Returns
    -------
    dict of str to ndarray
        Each array of ``current_arrays``, ``m_t`` and ``v_t`` under ``"<field>/<name>"``.
    """
    state: dict[str, np.ndarray] = {}
    for field in _STATE_FIELDS:
        value = getattr(strategy, field, None)
        if isinstance(value, dict):
            state.update({f"{field}/{k}": np.asarray(v) for k, v in value.items()})
    return state


def restore_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    """Put the arrays saved by :func:`strategy_state` back on the strategy.

    Parameters
    ----------
    strategy : Strategy
        The resumed run's strategy; only the fields it has are set.
    state : dict of str to ndarray
        What :func:`strategy_state` returned (from the checkpoint).
    """
    for field in _STATE_FIELDS:
        values = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(field + "/")}
        if values and hasattr(strategy, field):
            setattr(strategy, field, values)
