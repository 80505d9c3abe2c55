"""Privacy against utility on Breast Cancer Wisconsin, the DP-SGD overhead, and wall time.

Three measurements, printed and written to ``benchmarks/results/privacy_utility.{json,md}``:

1. The privacy-utility table: global-test ROC-AUC and accuracy (median over seeds) of a
   5-site, 10-round federation run through Flower's simulation engine, for ε ∈ {1, 3, 8}
   per site and without DP, with IID and Dirichlet(α = 0.5) label-skewed sites; beside
   the centralized non-private baseline trained on the pooled training rows and scored on
   the same test set.
2. The DP-SGD overhead: the time of Opacus training over the time of the same loop
   without DP, on the same site data, run alternately in this process.
3. The wall time of a whole 5-site, 10-round simulation (including Ray's start-up).

Each finished federation is appended to ``results/privacy_utility_runs.jsonl`` and skipped
when the benchmark is started again, so an interrupted benchmark loses nothing.

    .venv/bin/python benchmarks/privacy_utility.py            # the full table, 5 seeds
    .venv/bin/python benchmarks/privacy_utility.py --seeds 1  # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.site import SiteSettings, load_site  # noqa: E402
from models.data.features import FeatureStatistics, Standardization  # noqa: E402
from models.data.kinds.registry import load_schema  # noqa: E402
from models.families import build_model, get_task  # noqa: E402
from models.spec import get_weights  # noqa: E402
from privacy.dp_sgd import DPSettings, train_locally  # noqa: E402
from server.federation.evaluation import evaluate_on_table  # noqa: E402
from server.federation.setup import model_spec_for  # noqa: E402
from server.settings import RunSettings  # noqa: E402
from simulations.prepare import prepare_simulation  # noqa: E402
from simulations.runner import run_simulated_federation  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EPSILONS: list[float | None] = [1.0, 3.0, 8.0, None]
PARTITIONS = ["iid", "dirichlet"]


def federation_settings(
    partition: str, epsilon: float | None, seed: int, out_dir: Path
) -> RunSettings:
    """The benchmark's federation: the defaults of `fedcare simulate`, 5 sites, 10 rounds."""
    return RunSettings(
        sites=5,
        num_server_rounds=10,
        partition=partition,
        alpha=0.5,
        epsilon=epsilon or 1.0,
        dp=epsilon is not None,
        seed=seed,
        out_dir=str(out_dir),
    )


def run_key(partition: str, epsilon: float | None, seed: int) -> str:
    return f"{partition}/{'none' if epsilon is None else f'{epsilon:g}'}/{seed}"


def run_federations(seeds: int, done: dict[str, dict], log_path: Path, work: Path) -> None:
    """Run every (partition, ε, seed) federation not already in ``done``."""
    for partition in PARTITIONS:
        for epsilon in EPSILONS:
            for seed in range(seeds):
                key = run_key(partition, epsilon, seed)
                if key in done:
                    continue
                settings = federation_settings(partition, epsilon, seed, work / key)
                started = time.perf_counter()
                outcome = run_simulated_federation(settings)
                wall = time.perf_counter() - started
                report = outcome.report
                row = {
                    "key": key,
                    "partition": partition,
                    "epsilon": epsilon,
                    "seed": seed,
                    "roc_auc": report["final"]["roc_auc"],
                    "accuracy": report["final"]["accuracy"],
                    "max_epsilon_spent": max(report["privacy"]["epsilon_spent"].values()),
                    "wall_seconds": wall,
                    "round_seconds": sum(h["wall_seconds"] for h in report["history"]),
                }
                done[key] = row
                with log_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(
                    f"  {key:<18} ROC-AUC {row['roc_auc']:.4f}  acc {row['accuracy']:.4f}  "
                    f"max ε {row['max_epsilon_spent']:.3f}  {wall:.0f} s",
                    flush=True,
                )


def pooled_training_data(settings: RunSettings, work: Path):
    """All simulated sites' rows pooled, encoded with the pooled statistics."""
    layout = prepare_simulation(settings, work)
    sites = [load_site(SiteSettings.from_mapping(entry, "benchmark")) for entry in layout.sites]
    stats = FeatureStatistics()
    for site in sites:
        stats = stats.merge(site.statistics())
    standardization = Standardization.from_statistics(stats)
    parts = [
        site.encoded(standardization, part) for site in sites for part in ("train", "validation")
    ]
    inputs = np.concatenate([p[0] for p in parts])
    targets = np.concatenate([p[1] for p in parts])
    schema = load_schema(layout.schema_path)
    return layout, schema, standardization, inputs, targets


def centralized_baseline(seeds: int, work: Path) -> list[dict[str, float]]:
    """Non-private SGD on the pooled training rows, scored on the federation's test set."""
    rows = []
    for seed in range(seeds):
        settings = federation_settings("iid", None, seed, work / f"central-{seed}")
        layout, schema, standardization, inputs, targets = pooled_training_data(
            settings, work / f"central-{seed}"
        )
        spec = model_spec_for(settings, schema, FeatureStatistics())
        model = build_model(spec, seed=seed)
        train_locally(
            model, inputs, targets, get_task(spec.task), epochs=30, batch_size=32,
            learning_rate=0.1, dp=None, seed=seed,
        )  # fmt: skip
        metrics = evaluate_on_table(
            get_weights(model), spec, schema, standardization, layout.test_path
        )
        rows.append({"seed": seed, "roc_auc": metrics["roc_auc"], "accuracy": metrics["accuracy"]})
    return rows


def dp_overhead(work: Path, repeats: int = 7) -> list[dict[str, Any]]:
    """Opacus time / plain time for the same loop on the same data, alternating the two."""
    settings = federation_settings("iid", 1.0, 0, work / "overhead")
    _, schema, _, inputs, targets = pooled_training_data(settings, work / "overhead")
    results = []
    for kind, epochs in (("logreg", 20), ("mlp", 20)):
        spec = model_spec_for(RunSettings(model=kind, hidden="64,32"), schema, FeatureStatistics())
        task = get_task(spec.task)
        times: dict[str, list[float]] = {"dp": [], "plain": []}
        for repeat in range(repeats):
            for mode in ("plain", "dp"):
                result = train_locally(
                    build_model(spec, seed=repeat), inputs, targets, task, epochs=epochs,
                    batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                    dp=DPSettings(noise_multiplier=1.0) if mode == "dp" else None, seed=repeat,
                )  # fmt: skip
                times[mode].append(result.seconds)
        dp_time, plain_time = statistics.median(times["dp"]), statistics.median(times["plain"])
        results.append(
            {
                "model": kind,
                "rows": int(len(inputs)),
                "epochs": epochs,
                "batch_size": settings.batch_size,
                "dp_seconds_median": dp_time,
                "plain_seconds_median": plain_time,
                "ratio": dp_time / plain_time,
            }
        )
    return results


def utility_table(done: dict[str, dict], central: list[dict[str, float]]) -> list[dict]:
    table = []
    for partition in PARTITIONS:
        for epsilon in EPSILONS:
            runs = [
                r for r in done.values() if r["partition"] == partition and r["epsilon"] == epsilon
            ]
            if not runs:
                continue
            table.append(
                {
                    "setting": f"{partition}{' α=0.5' if partition == 'dirichlet' else ''}",
                    "epsilon": "no DP" if epsilon is None else f"{epsilon:g}",
                    "seeds": len(runs),
                    "roc_auc_median": statistics.median(r["roc_auc"] for r in runs),
                    "roc_auc_min": min(r["roc_auc"] for r in runs),
                    "accuracy_median": statistics.median(r["accuracy"] for r in runs),
                    "max_epsilon_spent": max(r["max_epsilon_spent"] for r in runs),
                }
            )
    table.append(
        {
            "setting": "centralized (pooled, non-private)",
            "epsilon": "no DP",
            "seeds": len(central),
            "roc_auc_median": statistics.median(r["roc_auc"] for r in central),
            "roc_auc_min": min(r["roc_auc"] for r in central),
            "accuracy_median": statistics.median(r["accuracy"] for r in central),
            "max_epsilon_spent": None,
        }
    )
    return table


def markdown(table: list[dict], overhead: list[dict], wall: dict[str, float]) -> str:
    lines = [
        "# Privacy against utility: Breast Cancer Wisconsin, 5 sites, 10 rounds, FedAvg",
        "",
        "| sites | ε per site | seeds | ROC-AUC (median) | ROC-AUC (min) | accuracy (median) "
        "| max ε spent |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        spent = "–" if row["max_epsilon_spent"] is None else f"{row['max_epsilon_spent']:.3f}"
        lines.append(
            f"| {row['setting']} | {row['epsilon']} | {row['seeds']} | "
            f"{row['roc_auc_median']:.4f} | {row['roc_auc_min']:.4f} | "
            f"{row['accuracy_median']:.4f} | {spent} |"
        )
    lines += [
        "",
        "## DP-SGD overhead (Opacus ÷ the same loop without DP, same data, alternated)",
        "",
        "| model | rows | epochs | DP s (median) | plain s (median) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row in overhead:
        lines.append(
            f"| {row['model']} | {row['rows']} | {row['epochs']} | "
            f"{row['dp_seconds_median']:.3f} | {row['plain_seconds_median']:.3f} | "
            f"{row['ratio']:.2f}× |"
        )
    lines += [
        "",
        "## Wall time of a 5-site, 10-round simulation (ε = 1, IID)",
        "",
        f"- whole run, median: {wall['median_seconds']:.1f} s "
        f"(min {wall['min_seconds']:.1f} s, {wall['runs']} runs), Ray start-up included",
        f"- the 10 rounds alone, median: {wall['rounds_median_seconds']:.1f} s",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per setting (default 5)")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier finished runs")
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "privacy_utility_runs.jsonl"
    done: dict[str, dict] = {}
    if log_path.is_file() and not args.fresh:
        for line in log_path.read_text().splitlines():
            row = json.loads(line)
            if row["seed"] < args.seeds:
                done[row["key"]] = row
    elif args.fresh:
        log_path.unlink(missing_ok=True)

    with tempfile.TemporaryDirectory(prefix="fedcare-bench-") as tmp:
        work = Path(tmp)
        print(f"federations ({len(done)} already done):", flush=True)
        run_federations(args.seeds, done, log_path, work)
        print("centralized baseline …", flush=True)
        central = centralized_baseline(args.seeds, work)
        print("DP-SGD overhead …", flush=True)
        overhead = dp_overhead(work)

    iid_eps1 = [r for r in done.values() if r["partition"] == "iid" and r["epsilon"] == 1.0]
    wall = {
        "runs": len(iid_eps1),
        "median_seconds": statistics.median(r["wall_seconds"] for r in iid_eps1),
        "min_seconds": min(r["wall_seconds"] for r in iid_eps1),
        "rounds_median_seconds": statistics.median(r["round_seconds"] for r in iid_eps1),
    }
    table = utility_table(done, central)
    results = {
        "utility": table,
        "centralized": central,
        "dp_overhead": overhead,
        "simulation_wall_time": wall,
        "runs": sorted(done.values(), key=lambda r: r["key"]),
    }
    (RESULTS / "privacy_utility.json").write_text(json.dumps(results, indent=2))
    text = markdown(table, overhead, wall)
    (RESULTS / "privacy_utility.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
