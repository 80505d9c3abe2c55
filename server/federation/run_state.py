"""What a federated run carries from one step to the next, and what it produces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from models.data.features import Standardization
from models.data.schema import SiteSchema
from models.spec import ModelSpec
from server.registry import ModelVersion
from server.settings import RunSettings

Progress = Callable[[str], None]


class FederationError(RuntimeError):
    """The run cannot go on (too few sites, no checkpoint to resume …)."""


@dataclass(frozen=True)
class SiteFiles:
    """Where the federation's schema and (optional) global test set are.

    Parameters
    ----------
    schema_path : Path
        The federation's schema.
    test_path : Path or None
        Held-out data the coordinator evaluates the global model on (simulation).
    simulation_dir : str
        The simulated sites' folder, sent to the sites; empty in deployment.
    """

    schema_path: Path
    test_path: Path | None = None
    simulation_dir: str = ""


# Lays out the simulated sites for a run (``simulations.prepare.prepare_simulation``):
# called with the run's settings and the folder to write them to.
SitePreparer = Callable[[RunSettings, Path], SiteFiles]


@dataclass
class RunState:
    """A run between two steps: enough to train the next round, checkpoint or finish.

    Parameters
    ----------
    settings : RunSettings
        The run's configuration (``sites`` as the SuperLink has them under ``flwr run``).
    out : Path
        The run's output folder.
    schema : SiteSchema
        The federation's schema.
    files : SiteFiles
        Where the schema and the global test set are.
    run_key : str
        The run's identity in the sites' ledgers (kept on resume).
    standardization : Standardization
        The federated feature scaling.
    spec : ModelSpec
        The network.
    weights : dict of str to ndarray
        The global model after the last finished round.
    strategy : Strategy
        Flower's strategy, with its own state (FedAdam's moments).
    next_round : int
        The first round still to train.
    history : list of dict
        One entry per finished round (the report's ``history``).
    site_epsilon : dict of str to float
        Each site's ε spent, as it last reported it.
    site_epsilon_remaining : dict of str to float
        What each site last said is left of its lifetime budget.
    site_names : dict of int to str
        Site names by node id, as the sites announced them.
    personalization : dict of str to dict
        After personalization: per site, the global and personalized model's validation
        metrics and the ε it cost.
    """

    settings: RunSettings
    out: Path
    schema: SiteSchema
    files: SiteFiles
    run_key: str
    standardization: Standardization
    spec: ModelSpec
    weights: dict[str, np.ndarray]
    strategy: Strategy
    next_round: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    site_epsilon: dict[str, float] = field(default_factory=dict)
    site_epsilon_remaining: dict[str, float] = field(default_factory=dict)
    site_names: dict[int, str] = field(default_factory=dict)
    personalization: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunOutcome:
    """What a finished run produced.

    Parameters
    ----------
    report : dict
        The run's report (``report.json``).
    report_path : Path
        Where it was written.
    model : ModelVersion
        The registered global model.
    """

    report: dict[str, Any]
    report_path: Path
    model: ModelVersion
