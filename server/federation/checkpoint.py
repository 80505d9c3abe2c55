"""Checkpoints of a federated run, written after every round, for resuming.

Flower's ``strategy.start`` keeps no checkpoint, so the coordinator's round loop writes
one here: the global weights, the round reached, the strategy's own state (FedAdam's
moments), the federated standardization, the run's history and per-site privacy figures.
A checkpoint is written to a temporary folder and renamed into place, so a coordinator
killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

CHECKPOINT_DIR = "checkpoint"


@dataclass
class Checkpoint:
    """The state of a run after ``round``.

    Parameters
    ----------
    round : int
        The last completed round (0 before training).
    run_key : str
        The run's identity in the sites' ledgers; kept on resume.
    weights : dict[str, ndarray]
        The global model after ``round``.
    strategy_state : dict[str, ndarray]
        Arrays a stateful strategy needs (e.g. ``m_t/…``, ``v_t/…`` for FedAdam).
    meta : dict
        JSON-able: standardization, model spec, history, per-site ε, settings.
    """

    round: int
    run_key: str
    weights: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> Path:
        """Write the checkpoint into ``out_dir``, replacing the previous one.

        Parameters
        ----------
        out_dir : str or Path
            The run's output folder (created if missing).

        Returns
        -------
        Path
            The checkpoint folder, ``out_dir / CHECKPOINT_DIR``.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=out_dir))
        _save_arrays(staging / "weights.npz", self.weights)
        _save_arrays(staging / "strategy.npz", self.strategy_state)
        state = {"round": self.round, "run_key": self.run_key, "meta": self.meta}
        (staging / "state.json").write_text(json.dumps(state, indent=2))
        target = out_dir / CHECKPOINT_DIR
        previous = out_dir / ".checkpoint-previous"
        if previous.exists():
            shutil.rmtree(previous)
        if target.exists():
            os.rename(target, previous)
        os.rename(staging, target)
        if previous.exists():
            shutil.rmtree(previous)
        return target

    @classmethod
    def load(cls, out_dir: str | Path) -> Checkpoint | None:
        """The last checkpoint in ``out_dir``, or None when there is none."""
        out_dir = Path(out_dir)
        folder = out_dir / CHECKPOINT_DIR
        if not (folder / "state.json").is_file():
            # a crash between the two renames leaves only the previous one
            folder = out_dir / ".checkpoint-previous"
            if not (folder / "state.json").is_file():
                return None
        state = json.loads((folder / "state.json").read_text())
        return cls(
            round=int(state["round"]),
            run_key=str(state["run_key"]),
            weights=_load_arrays(folder / "weights.npz"),
            strategy_state=_load_arrays(folder / "strategy.npz"),
            meta=state["meta"],
        )


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    # cast: mypy would also match each array against savez's ``allow_pickle: bool``
    np.savez(buffer, **cast(dict[str, Any], arrays))
    path.write_bytes(buffer.getvalue())


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}
