"""Which training methods buy utility at ε = 1 per site: measured, one change at a time.

Breast Cancer Wisconsin, 5 sites (IID and Dirichlet α = 0.5), ε = 1 per site with the
statistics release included, 5 seeds per setting. Each candidate is a set of run settings
changed from a base; every federation goes through the real round loop and the real
ClientApp (DP-SGD, ledgers) in this process (``simulations.in_process``). Printed and
written to ``benchmarks/results/utility_methods.{json,md}``: per candidate and partition
the worst and median global-test ROC-AUC and the median accuracy over the seeds, beside
the target (every seed ROC-AUC ≥ 0.98, median accuracy ≥ 0.965).

Each finished federation is appended to ``results/utility_methods_runs.jsonl`` and
skipped when the benchmark is started again.

    .venv/bin/python benchmarks/utility_methods.py                  # every candidate
    .venv/bin/python benchmarks/utility_methods.py --only ranges    # one
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.settings import RunSettings  # noqa: E402
from simulations.in_process import run_in_process_federation  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PARTITIONS = ("iid", "dirichlet")
SEEDS = 5
TARGET_ROC_AUC_MIN = 0.98
TARGET_ACCURACY_MEDIAN = 0.965
# The settings of the session before this benchmark (the base every change starts from).
BEFORE = {
    "statistics_epsilon_share": 0.2,
    "learning_rate": 0.1,
    "batch_size": 16,
    "num_server_rounds": 10,
    "local_epochs": 1,
    "strategy": "fedavg",
}


@dataclass(frozen=True)
class Candidate:
    """One method tried: what it changes from the settings before it.

    Parameters
    ----------
    name : str
        Row name.
    what : str
        The change, in words.
    changes : dict
        ``RunSettings`` values changed from :data:`BEFORE`.
    """

    name: str
    what: str
    changes: dict[str, Any] = field(default_factory=dict)


CANDIDATES = [
    Candidate("before", "the defaults before this work (statistics share 0.2)"),
    Candidate(
        "ranges",
        "no statistics released: features scaled by their declared ranges, all ε to training",
        {"statistics_epsilon_share": 0.0},
    ),
    Candidate("share-0.5", "statistics share 0.5", {"statistics_epsilon_share": 0.5}),
]


def settings_for(candidate: Candidate, partition: str, seed: int, out: Path) -> RunSettings:
    """The federation of ``candidate`` on one partition and seed."""
    return RunSettings(
        **{**BEFORE, **candidate.changes},
        sites=5,
        partition=partition,
        alpha=0.5,
        epsilon=1.0,
        seed=seed,
        out_dir=str(out),
    )


def run_candidate(
    candidate: Candidate, done: dict[str, dict], log_path: Path, work: Path
) -> None:
    """Run every (partition, seed) of ``candidate`` not already in ``done``."""
    for partition in PARTITIONS:
        for seed in range(SEEDS):
            key = f"{candidate.name}/{partition}/{seed}"
            if key in done:
                continue
            started = time.perf_counter()
            report = run_in_process_federation(
                settings_for(candidate, partition, seed, work / key)
            ).report
            row = {
                "key": key,
                "candidate": candidate.name,
                "partition": partition,
                "seed": seed,
                "roc_auc": report["final"]["roc_auc"],
                "accuracy": report["final"]["accuracy"],
                "max_epsilon_spent": max(report["privacy"]["epsilon_spent"].values()),
                "wall_seconds": time.perf_counter() - started,
            }
            done[key] = row
            with log_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(
                f"  {key:<28} ROC-AUC {row['roc_auc']:.4f}  acc {row['accuracy']:.4f}  "
                f"max ε {row['max_epsilon_spent']:.3f}  {row['wall_seconds']:.0f} s",
                flush=True,
            )


def summary(done: dict[str, dict]) -> list[dict[str, Any]]:
    """Per candidate and partition: worst and median ROC-AUC, median accuracy, target met."""
    rows = []
    for candidate in CANDIDATES:
        for partition in PARTITIONS:
            runs = [
                r
                for r in done.values()
                if r["candidate"] == candidate.name and r["partition"] == partition
            ]
            if not runs:
                continue
            roc_min = min(r["roc_auc"] for r in runs)
            acc_median = statistics.median(r["accuracy"] for r in runs)
            rows.append(
                {
                    "candidate": candidate.name,
                    "what": candidate.what,
                    "partition": partition,
                    "seeds": len(runs),
                    "roc_auc_min": roc_min,
                    "roc_auc_median": statistics.median(r["roc_auc"] for r in runs),
                    "accuracy_median": acc_median,
                    "accuracy_min": min(r["accuracy"] for r in runs),
                    "max_epsilon_spent": max(r["max_epsilon_spent"] for r in runs),
                    "target_met": roc_min >= TARGET_ROC_AUC_MIN
                    and acc_median >= TARGET_ACCURACY_MEDIAN,
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]], load: tuple[float, float, float]) -> str:
    lines = [
        "# Utility at ε = 1 per site: methods tried on Breast Cancer Wisconsin",
        "",
        "5 sites, ε = 1 per site (the statistics release included), δ = 1e-5, "
        f"{SEEDS} seeds per row; global-test metrics of the registered model. Target: "
        f"every seed ROC-AUC ≥ {TARGET_ROC_AUC_MIN}, median accuracy ≥ "
        f"{TARGET_ACCURACY_MEDIAN}. Base settings before this work: "
        + ", ".join(f"{k.replace('_', '-')}={v}" for k, v in BEFORE.items())
        + f". Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
        "",
        "| candidate | change | sites | ROC-AUC min | ROC-AUC median | accuracy median "
        "| accuracy min | max ε | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['candidate']} | {row['what']} | {row['partition']} | "
            f"{row['roc_auc_min']:.4f} | {row['roc_auc_median']:.4f} | "
            f"{row['accuracy_median']:.4f} | {row['accuracy_min']:.4f} | "
            f"{row['max_epsilon_spent']:.3f} | {'met' if row['target_met'] else '–'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="run only these candidates")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier finished runs")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "utility_methods_runs.jsonl"
    if args.fresh:
        log_path.unlink(missing_ok=True)
    done: dict[str, dict] = {}
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row
    with tempfile.TemporaryDirectory(prefix="fedcare-methods-") as tmp:
        for candidate in CANDIDATES:
            if args.only and candidate.name not in args.only:
                continue
            print(f"{candidate.name}: {candidate.what}", flush=True)
            run_candidate(candidate, done, log_path, Path(tmp))
    rows = summary(done)
    (RESULTS / "utility_methods.json").write_text(
        json.dumps({"summary": rows, "runs": sorted(done.values(), key=lambda r: r["key"])}, indent=2)
    )
    text = markdown(rows, os.getloadavg())
    (RESULTS / "utility_methods.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
