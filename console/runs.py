"""Run folders as the console shows them: a finished run's ``report.json``, else its checkpoint.

A run folder is what ``server/federation/rounds.py`` writes: ``checkpoint/`` after every
round, ``report.json`` once the run has finished. Both are read on every request, so a
page shows a run's progress while it goes on.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from console.charts import Chart, Series, Threshold
from protocol.federation import TRAIN_SECONDS
from server.federation.checkpoint import CHECKPOINT_DIR, Checkpoint
from server.federation.report import REPORT_FILE

FINISHED = "finished"
IN_PROGRESS = "in progress"
# Counts, not metrics: charted nowhere.
NOT_METRICS = ("num-examples", "epsilon")


@dataclass(frozen=True)
class ModelRef:
    """The registry version a finished run registered.

    Parameters
    ----------
    name : str
        The model's name.
    version : int
        Its version number.
    registry : str
        The registry folder.
    """

    name: str
    version: int
    registry: str


@dataclass(frozen=True)
class RoundRecord:
    """One finished round, as the run's history holds it.

    Parameters
    ----------
    round : int
        The round's number (1, 2, …).
    wall_seconds : float
        The round's wall time at the coordinator.
    sites_trained : int
        Sites whose update was aggregated.
    global_test : dict of str to float
        The global model's metrics on the coordinator's test set (empty without one).
    federated_evaluation : dict of str to float
        The sites' validation metrics, pooled.
    epsilon : dict of str to float
        Each site's ε spent, as last reported.
    refused : dict of str to str or None
        The sites that did not train, with their reasons.
    train_seconds : float or None
        The sites' local training time (their mean, weighted by examples, as the round
        aggregated their replies); None when not recorded.
    """

    round: int
    wall_seconds: float
    sites_trained: int
    global_test: dict[str, float]
    federated_evaluation: dict[str, float]
    epsilon: dict[str, float]
    refused: dict[str, str | None]
    train_seconds: float | None = None

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> RoundRecord:
        """The record of one ``history`` entry.

        Parameters
        ----------
        entry : dict
            An entry of the report's or checkpoint's ``history``.
        """
        return cls(
            round=int(entry["round"]),
            wall_seconds=float(entry["wall_seconds"]),
            sites_trained=int(entry["sites_trained"]),
            global_test=dict(entry.get("global_test") or {}),
            federated_evaluation=dict(entry.get("federated_evaluation") or {}),
            epsilon=dict(entry.get("epsilon") or {}),
            refused=dict(entry.get("refused") or {}),
            train_seconds=(entry.get("train") or {}).get(TRAIN_SECONDS),
        )


@dataclass(frozen=True)
class RunSummary:
    """What the runs list shows of a run.

    Parameters
    ----------
    name : str
        The run folder's name (the console's handle for the run).
    path : str
        The run folder.
    run_key : str
        The run's identity in the sites' ledgers.
    status : str
        ``finished`` (it has a report) or ``in progress`` (a checkpoint only).
    rounds_done, rounds_total : int
        Rounds finished, and rounds the run was configured for.
    dp : bool
        Whether the sites trained with DP-SGD.
    delta : float
        δ of the sites' accounting.
    epsilon_budget : float or None
        Each site's ε budget (simulation), None when each site sets its own.
    epsilon_spent : dict of str to float
        Each site's ε, as it last reported it.
    epsilon_remaining : dict of str to float
        What each site last said is left of its lifetime budget (sites that said so).
    final : dict of str to float
        The final metrics (finished runs), else the last round's.
    model : ModelRef or None
        The registered version (finished runs).
    updated : str
        When the run's files last changed (UTC, ISO 8601).
    """

    name: str
    path: str
    run_key: str
    status: str
    rounds_done: int
    rounds_total: int
    dp: bool
    delta: float
    epsilon_budget: float | None
    epsilon_spent: dict[str, float]
    epsilon_remaining: dict[str, float]
    final: dict[str, float]
    model: ModelRef | None
    updated: str


@dataclass(frozen=True)
class RefusalCount:
    """How often a site refused for one reason.

    Parameters
    ----------
    site : str
        The site.
    reason : str
        Its reason, as the site gave it.
    rounds : list of int
        The rounds it refused.
    """

    site: str
    reason: str
    rounds: list[int]


@dataclass(frozen=True)
class RunDetail:
    """A run with its rounds and the charts of its page.

    Parameters
    ----------
    summary : RunSummary
        The run.
    rounds : list of RoundRecord
        Its finished rounds, in order.
    refusals : list of RefusalCount
        Its refusals by site and reason.
    charts : list of Chart
        Metrics on the test set and the sites' validation, ε per site, wall time.
    """

    summary: RunSummary
    rounds: list[RoundRecord]
    refusals: list[RefusalCount]
    charts: list[Chart]


def _mtime(path: Path) -> str:
    stamp = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a run (a report or a checkpoint).

    Parameters
    ----------
    path : Path
        A folder.
    """
    return (path / REPORT_FILE).is_file() or (path / CHECKPOINT_DIR).is_dir()


def run_folders(runs_dir: Path) -> list[Path]:
    """The run folders in ``runs_dir`` (itself included when it is one), newest first.

    Parameters
    ----------
    runs_dir : Path
        A folder of run folders, e.g. ``fedcare-runs/``.
    """
    found = [runs_dir] if is_run_folder(runs_dir) else []
    if runs_dir.is_dir():
        found += [p for p in runs_dir.iterdir() if p.is_dir() and is_run_folder(p)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def read_run(path: Path) -> tuple[RunSummary, list[RoundRecord]]:
    """A run's summary and rounds, from its report or, while it runs, its checkpoint.

    Parameters
    ----------
    path : Path
        The run folder.

    Raises
    ------
    FileNotFoundError
        The folder holds neither a report nor a checkpoint.
    """
    report_path = path / REPORT_FILE
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        history = [RoundRecord.from_entry(e) for e in report["history"]]
        settings = report["settings"]
        model = report["model"]
        summary = RunSummary(
            name=path.name,
            path=str(path),
            run_key=str(report["run"]),
            status=FINISHED,
            rounds_done=len(history),
            rounds_total=int(settings["num_server_rounds"]),
            dp=bool(report["privacy"]["dp"]),
            delta=float(report["privacy"]["delta"]),
            epsilon_budget=report["privacy"]["epsilon_budget"],
            epsilon_spent=dict(report["privacy"]["epsilon_spent"]),
            epsilon_remaining=dict(report["privacy"].get("epsilon_remaining") or {}),
            final=dict(report["final"]),
            model=ModelRef(str(model["name"]), int(model["version"]), str(model["registry"])),
            updated=_mtime(report_path),
        )
        return summary, history
    checkpoint = Checkpoint.load(path)
    if checkpoint is None:
        raise FileNotFoundError(f"{path}: neither {REPORT_FILE} nor a checkpoint")
    history = [RoundRecord.from_entry(e) for e in checkpoint.meta["history"]]
    settings = checkpoint.meta["settings"]
    last = history[-1] if history else None
    summary = RunSummary(
        name=path.name,
        path=str(path),
        run_key=checkpoint.run_key,
        status=IN_PROGRESS,
        rounds_done=checkpoint.round,
        rounds_total=int(settings["num_server_rounds"]),
        dp=bool(settings["dp"]),
        delta=float(settings["delta"]),
        # as finish_run reports it: a simulation's sites share the run's budget
        epsilon_budget=float(settings["epsilon"]) if settings["mode"] == "simulation" else None,
        epsilon_spent=dict(checkpoint.meta["epsilon"]),
        epsilon_remaining=dict(checkpoint.meta.get("epsilon_remaining") or {}),
        final=dict((last.global_test or last.federated_evaluation) if last else {}),
        model=None,
        updated=_mtime(path / CHECKPOINT_DIR),
    )
    return summary, history


def refusal_counts(rounds: list[RoundRecord]) -> list[RefusalCount]:
    """The rounds each site refused, grouped by site and reason.

    Parameters
    ----------
    rounds : list of RoundRecord
        A run's rounds.
    """
    grouped: dict[tuple[str, str], list[int]] = {}
    for r in rounds:
        for site, reason in r.refused.items():
            grouped.setdefault((site, reason or "no reason given"), []).append(r.round)
    return [RefusalCount(site, reason, rs) for (site, reason), rs in sorted(grouped.items())]


def _metric_series(rounds: list[RoundRecord], source: str, key: str, label: str) -> Series:
    values = ((r.round, getattr(r, source).get(key)) for r in rounds)
    return Series(label, [(float(x), float(y)) for x, y in values if y is not None])


def run_charts(summary: RunSummary, rounds: list[RoundRecord]) -> list[Chart]:
    """A chart per metric (test set and sites' validation), ε per site, and wall time.

    Parameters
    ----------
    summary : RunSummary
        The run (for its ε budget).
    rounds : list of RoundRecord
        Its rounds.
    """
    keys = {
        k for r in rounds for k in (*r.global_test, *r.federated_evaluation) if k not in NOT_METRICS
    }
    charts = []
    for key in sorted(keys):
        series = [
            _metric_series(rounds, "global_test", key, "test set"),
            _metric_series(rounds, "federated_evaluation", key, "sites' validation"),
        ]
        charts.append(Chart(f"metric-{key}", key, "round", key, [s for s in series if s.points]))
    sites = sorted({s for r in rounds for s in r.epsilon})
    epsilon = [
        Series(site, [(float(r.round), r.epsilon[site]) for r in rounds if site in r.epsilon])
        for site in sites
    ]
    budget = [Threshold("budget", summary.epsilon_budget)] if summary.epsilon_budget else []
    charts.append(Chart("epsilon", "ε spent per site", "round", "ε", epsilon, budget))
    wall = Series("round wall time", [(float(r.round), r.wall_seconds) for r in rounds])
    training = Series(
        "sites' local training (mean)",
        [(float(r.round), r.train_seconds) for r in rounds if r.train_seconds is not None],
    )
    charts.append(Chart("wall", "where a round's time went", "round", "seconds", [wall, training]))
    return charts


def run_detail(path: Path) -> RunDetail:
    """A run folder's summary, rounds, refusals and charts.

    Parameters
    ----------
    path : Path
        The run folder.
    """
    summary, rounds = read_run(path)
    return RunDetail(summary, rounds, refusal_counts(rounds), run_charts(summary, rounds))
