"""What the coordinator saw each round, kept for a simulation's privacy audit.

With ``audit-canaries`` set (simulation only, without secure aggregation) the coordinator
keeps, per round, the global weights it sent and every site's update it received: the
view the audit's threat model gives the attacker (``simulations.audit`` scores the
canaries from it). One ``.npz`` per round in ``<run>/audit-view/``, arrays named
``<site>/<parameter>`` with :data:`GLOBAL` for the weights sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

VIEW_FOLDER = "audit-view"
GLOBAL = "global"  # never a site's name: the sites' are their files' stems or hospital-<i>
SEPARATOR = "/"


@dataclass(frozen=True)
class RoundView:
    """One round as the coordinator saw it.

    Parameters
    ----------
    round : int
        The round.
    global_weights : dict of str to ndarray
        The weights sent to the sites.
    updates : dict of str to dict
        Each site's returned weights, by site name.
    """

    round: int
    global_weights: dict[str, np.ndarray]
    updates: dict[str, dict[str, np.ndarray]]


def keep_round(out: Path, view: RoundView) -> Path:
    """Write ``view`` to ``out/audit-view/round-<n>.npz``.

    Parameters
    ----------
    out : Path
        The run's output folder.
    view : RoundView
        The round's weights and updates.
    """
    folder = out / VIEW_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"{GLOBAL}{SEPARATOR}{k}": v for k, v in view.global_weights.items()}
    for site, weights in view.updates.items():
        arrays.update({f"{site}{SEPARATOR}{k}": v for k, v in weights.items()})
    path = folder / f"round-{view.round:04d}.npz"
    # cast: mypy would also match each array against savez's ``allow_pickle: bool``
    np.savez(path, **cast(dict[str, Any], arrays))
    return path


def load_rounds(out: Path) -> list[RoundView]:
    """Every kept round of the run in ``out``, in order (empty if none was kept)."""
    views = []
    for path in sorted((out / VIEW_FOLDER).glob("round-*.npz")):
        grouped: dict[str, dict[str, np.ndarray]] = {}
        with np.load(path, allow_pickle=False) as saved:
            for key in saved.files:
                owner, _, name = key.partition(SEPARATOR)
                grouped.setdefault(owner, {})[name] = saved[key]
        global_weights = grouped.pop(GLOBAL)
        views.append(RoundView(int(path.stem.split("-")[1]), global_weights, grouped))
    return views
