"""Fed-TCGA-BRCA: federated DP survival against non-private FedAvg and each region alone.

FLamby's Fed-TCGA-BRCA (``../shared/data/fed_tcga_brca``): 6 regions, their natural split
and each region's own test rows, read by the loader ``benchmarks/model_families.py`` uses
(:func:`simulations.datasets.write_fed_tcga_brca`). Features are scaled without looking at
any test row (from the sites' training rows, or, when the run releases no statistics, from
the schema's declared ranges). A linear Cox model, trained five ways, 5 seeds each:

- FedAvg over the 6 regions with DP at ε = 3 per region (the statistics included);
- FedAvg over the 6 regions without DP;
- each region alone (a one-site federation on its own training rows) at ε = 3, and
  without DP;
- FedAvg over the 6 regions at ε = 3 with a statistics share of 0.2: features scaled by
  the noisy means and stds of the regions' training rows (in their ledgers) instead of
  the declared ranges.

The metric is FLamby's: the C-index on each region's own test rows, averaged over the 6
regions (for "alone", each region's model on its own test rows). Every federation runs
through the real round loop and ClientApp in this process (``simulations.in_process``).
Printed and written to ``benchmarks/results/tcga_brca.{json,md}``; finished runs are kept in
``results/tcga_brca_runs.jsonl`` and skipped when started again.

    .venv/bin/python benchmarks/tcga_brca.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_families import COMMON, TCGA_SOURCE, center_c_indices  # noqa: E402
from runs_log import load_runs, record_run  # noqa: E402

from server.settings import RunSettings  # noqa: E402
from simulations.datasets import CENTER_TESTS, write_fed_tcga_brca  # noqa: E402
from simulations.in_process import run_in_process  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EPSILON = 3.0
SEEDS = 5
REGIONS = 6


@dataclass(frozen=True)
class Setting:
    """One way of training, run for every seed.

    Parameters
    ----------
    name : str
        Row name.
    dp : bool
        DP-SGD at ε = :data:`EPSILON` per region, or no DP.
    together : bool
        The 6 regions in one federation, or each region alone.
    statistics_share : float
        The run's ``statistics_epsilon_share`` (0, the default: scaled by declared ranges).
    """

    name: str
    dp: bool
    together: bool
    statistics_share: float = 0.0


SETTINGS = [
    Setting("FedAvg, 6 regions, ε = 3", True, True),
    Setting("FedAvg, 6 regions, no DP", False, True),
    Setting("each region alone, ε = 3", True, False),
    Setting("each region alone, no DP", False, False),
    # Noisy means and stds from the sites' training rows instead of the declared ranges.
    Setting("FedAvg, 6 regions, ε = 3, statistics share 0.2", True, True, 0.2),
]


def region_alone(data: Path, region: int, out: Path) -> Path:
    """A data folder with one region's training rows and its own test rows as the test set."""
    if not out.is_dir():
        out.mkdir(parents=True)
        shutil.copy(data / "schema.toml", out / "schema.toml")
        shutil.copy(data / f"region-{region}.csv", out / f"region-{region}.csv")
        shutil.copy(data / CENTER_TESTS / f"test-{region}.csv", out / "test.csv")
    return out


def run_settings(data: Path, sites: int, setting: Setting, seed: int, out: Path) -> RunSettings:
    """The benchmark's federation: model_families' TCGA settings, the defaults otherwise."""
    return RunSettings(
        **{**COMMON, "sites": sites, "seed": seed},
        model="cox_linear",
        data_dir=str(data),
        min_sites=min(2, sites),
        dp=setting.dp,
        epsilon=EPSILON,
        statistics_epsilon_share=setting.statistics_share,
        out_dir=str(out),
    )


def run_one(setting: Setting, seed: int, data: Path, work: Path) -> dict:
    """One setting and seed: the C-index on each region's own test rows."""
    started = time.perf_counter()
    per_region, spent = [], []
    if setting.together:
        out = work / f"together-{setting.dp}-{setting.statistics_share}-{seed}"
        report = run_in_process(run_settings(data, REGIONS, setting, seed, out)).report
        per_region = center_c_indices(report, data)
        spent = list(report["privacy"]["epsilon_spent"].values())
    else:
        for region in range(REGIONS):
            alone = region_alone(data, region, work / f"region-{region}")
            out = work / f"alone-{setting.dp}-{seed}-{region}"
            report = run_in_process(run_settings(alone, 1, setting, seed, out)).report
            per_region.append(report["final"]["c_index"])
            spent += list(report["privacy"]["epsilon_spent"].values())
    return {
        "key": f"{setting.name}/{seed}",
        "setting": setting.name,
        "seed": seed,
        "c_index_per_region": per_region,
        "c_index_mean": statistics.mean(per_region),
        "max_epsilon_spent": max(spent) if setting.dp else None,
        "wall_seconds": time.perf_counter() - started,
    }


def summary(done: dict[str, dict]) -> list[dict[str, Any]]:
    """Per setting: mean, least and largest over seeds of the mean C-index over regions."""
    rows = []
    for setting in SETTINGS:
        runs = [r for r in done.values() if r["setting"] == setting.name]
        if not runs:
            continue
        means = [r["c_index_mean"] for r in runs]
        per_region = [
            statistics.mean(r["c_index_per_region"][i] for r in runs) for i in range(REGIONS)
        ]
        rows.append(
            {
                "setting": setting.name,
                "seeds": len(runs),
                "c_index_mean": statistics.mean(means),
                "c_index_min": min(means),
                "c_index_max": max(means),
                "per_region_mean": per_region,
                "max_epsilon_spent": max(r["max_epsilon_spent"] for r in runs)
                if setting.dp
                else None,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], load: tuple[float, float, float]) -> str:
    lines = [
        "# Fed-TCGA-BRCA: C-index, mean over the 6 regions' own test rows",
        "",
        f"Linear Cox model, {COMMON['num_server_rounds']} rounds, learning rate "
        f"{COMMON['learning_rate']}, batch {COMMON['batch_size']}, δ = 1e-5; ε is each region's "
        "whole spend (at the default statistics share 0 no statistics are released and "
        "features are scaled by the schema's declared ranges; with a share, by the noisy "
        "means and stds of the regions' training rows, in their ledgers; no test row is "
        "looked at either way); "
        "natural split (FLamby's train/test per region), "
        f"{SEEDS} seeds. Load average at the end: {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}.",
        "",
        "| setting | seeds | C-index (mean over seeds) | min | max | per region (mean over "
        "seeds) | max ε spent |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        spent = "–" if row["max_epsilon_spent"] is None else f"{row['max_epsilon_spent']:.3f}"
        regions = ", ".join(f"{c:.3f}" for c in row["per_region_mean"])
        lines.append(
            f"| {row['setting']} | {row['seeds']} | {row['c_index_mean']:.4f} | "
            f"{row['c_index_min']:.4f} | {row['c_index_max']:.4f} | {regions} | {spent} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fresh", action="store_true", help="ignore earlier finished runs")
    args = parser.parse_args()
    log_path = RESULTS / "tcga_brca_runs.jsonl"
    done = load_runs(log_path, args.fresh)
    with tempfile.TemporaryDirectory(prefix="fedcare-tcga-") as tmp:
        work = Path(tmp)
        data = write_fed_tcga_brca(TCGA_SOURCE, work / "tcga-data")
        for setting in SETTINGS:
            for seed in range(SEEDS):
                key = f"{setting.name}/{seed}"
                if key in done:
                    continue
                row = run_one(setting, seed, data, work)
                done[key] = row
                record_run(log_path, row)
                print(
                    f"  {key:<32} C-index {row['c_index_mean']:.4f}  {row['wall_seconds']:.0f} s",
                    flush=True,
                )
    rows = summary(done)
    (RESULTS / "tcga_brca.json").write_text(
        json.dumps(
            {"summary": rows, "runs": sorted(done.values(), key=lambda r: r["key"])}, indent=2
        )
    )
    text = markdown(rows, os.getloadavg())
    (RESULTS / "tcga_brca.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
