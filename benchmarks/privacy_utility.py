"""Privacy against utility on Breast Cancer Wisconsin, the DP-SGD overhead, and wall time.

Three measurements, printed and written to ``benchmarks/results/privacy_utility.{json,md}``:

1. The privacy-utility table: global-test ROC-AUC and accuracy (worst and median over
   seeds) of a 5-site federation at the default settings (``RunSettings()``), for
   ε ∈ {1, 3, 8} per site and without DP, with IID and Dirichlet(α = 0.5) label-skewed
   sites. ε is each site's whole spend: the federated statistics release (if the settings
   make one) and every training round, composed in the site's ledger. Beside them, in the
   same table: the settings before this benchmark's methods (``BEFORE`` in
   ``benchmarks/utility_methods.py``, on the schema before the declared log scale,
   ``on_schema("linear")``) at ε = 1; a centralized DP logistic regression at
   ε = 1 (Opacus on the pooled training rows, features scaled by the declared ranges);
   and the non-private pooled model (exact pooled standardization).
2. The DP-SGD overhead: the time of Opacus training over the time of the same loop
   without DP, on the same site data, run alternately in this process.
3. The wall time of one 5-site federation at ε = 1.

Every federation runs through the real round loop and the real ClientApp (statistics,
DP-SGD, ledgers) in this process (``simulations.in_process``: no Ray start-up; the same
settings give the same report as ``fedcare simulate``). Each finished federation is
appended to ``results/privacy_utility_runs.jsonl`` and skipped when the benchmark is
started again, so an interrupted benchmark loses nothing.

    .venv/bin/python benchmarks/privacy_utility.py            # the full table, 5 seeds
    .venv/bin/python benchmarks/privacy_utility.py --seeds 1  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runs_log import load_runs, record_run  # noqa: E402
from utility_methods import BEFORE, on_schema  # noqa: E402

from client.site import SiteSettings, load_site  # noqa: E402
from models.data.features import FeatureStatistics, Standardization, declared_bounds  # noqa: E402
from models.data.kinds.registry import load_schema  # noqa: E402
from models.families import build_model, get_task  # noqa: E402
from models.spec import get_weights  # noqa: E402
from privacy.dp_sgd import DPSettings, batches_per_epoch, dp_sample_rate, train_locally  # noqa: E402
from privacy.ledger import PrivacyLedger  # noqa: E402
from server.federation.evaluation import evaluate_on_table  # noqa: E402
from server.federation.setup import model_spec_for  # noqa: E402
from server.settings import RunSettings  # noqa: E402
from simulations.in_process import run_in_process  # noqa: E402
from simulations.prepare import prepare_simulation  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EPSILONS: list[float | None] = [1.0, 3.0, 8.0, None]
PARTITIONS = ["iid", "dirichlet"]
DEFAULTS = RunSettings()
# The centralized DP baseline: every pooled row, the federation's local settings, as many
# epochs as the federation's sites train in all.
CENTRAL_EPSILON = 1.0
CENTRAL_EPOCHS = DEFAULTS.num_server_rounds * DEFAULTS.local_epochs


def federation_settings(
    partition: str, epsilon: float | None, seed: int, out_dir: Path, before: bool = False
) -> RunSettings:
    """The benchmark's federation: `fedcare simulate`'s defaults (or ``BEFORE``), 5 sites."""
    return RunSettings(
        **(BEFORE if before else {}),
        sites=5,
        partition=partition,
        alpha=0.5,
        epsilon=epsilon or 1.0,
        dp=epsilon is not None,
        seed=seed,
        out_dir=str(out_dir),
    )


def run_key(partition: str, epsilon: float | None, seed: int, before: bool = False) -> str:
    eps = "none" if epsilon is None else f"{epsilon:g}"
    return f"{'before/' if before else ''}{partition}/{eps}/{seed}"


def run_federation(
    partition: str, epsilon: float | None, seed: int, before: bool, work: Path
) -> dict[str, Any]:
    """One federation; its results row."""
    key = run_key(partition, epsilon, seed, before)
    settings = federation_settings(partition, epsilon, seed, work / key, before)
    started = time.perf_counter()
    with on_schema("linear") if before else nullcontext():  # the schema before, too
        report = run_in_process(settings).report
    privacy = report["privacy"]
    return {
        "key": key,
        "before": before,
        "partition": partition,
        "epsilon": epsilon,
        "seed": seed,
        "roc_auc": report["final"]["roc_auc"],
        "accuracy": report["final"]["accuracy"],
        "max_epsilon_spent": max(privacy["epsilon_spent"].values()) if settings.dp else None,
        "statistics_epsilon": max(privacy["statistics_epsilon"].values(), default=0.0),
        "wall_seconds": time.perf_counter() - started,
        "round_seconds": sum(h["wall_seconds"] for h in report["history"]),
    }


def run_federations(seeds: int, done: dict[str, dict], log_path: Path, work: Path) -> None:
    """Run every (partition, ε, seed) federation, and the ``BEFORE`` ones, not in ``done``."""
    plan = [(p, e, False) for p in PARTITIONS for e in EPSILONS]
    plan += [(p, 1.0, True) for p in PARTITIONS]
    for partition, epsilon, before in plan:
        for seed in range(seeds):
            key = run_key(partition, epsilon, seed, before)
            if key in done:
                continue
            row = run_federation(partition, epsilon, seed, before, work)
            done[key] = row
            record_run(log_path, row)
            spent = "–" if row["max_epsilon_spent"] is None else f"{row['max_epsilon_spent']:.3f}"
            print(
                f"  {key:<24} ROC-AUC {row['roc_auc']:.4f}  acc {row['accuracy']:.4f}  "
                f"max ε {spent}  {row['wall_seconds']:.0f} s",
                flush=True,
            )


def pooled_training_data(settings: RunSettings, work: Path):
    """All simulated sites' rows pooled; the exact pooled and the declared-range scaling."""
    layout = prepare_simulation(settings, work)
    sites = [load_site(SiteSettings.from_mapping(entry, "benchmark")) for entry in layout.sites]
    stats = FeatureStatistics()
    for site in sites:
        stats = stats.merge(site.statistics())
    schema = load_schema(layout.schema_path)
    exact = Standardization.from_statistics(stats)
    ranges = Standardization.from_statistics(FeatureStatistics(), declared_bounds(schema))
    pooled = {}
    for name, standardization in (("exact", exact), ("ranges", ranges)):
        parts = [
            site.encoded(standardization, part)
            for site in sites
            for part in ("train", "validation")
        ]
        pooled[name] = (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
        )
    return layout, schema, {"exact": exact, "ranges": ranges}, pooled


def centralized_baselines(seeds: int, work: Path) -> list[dict[str, Any]]:
    """Logistic regression on the pooled training rows: non-private, and DP at ε = 1.

    The non-private model standardizes with the exact pooled statistics; the DP one with
    the declared ranges (exact statistics would be a release outside its ε) and DP-SGD
    (Opacus, Poisson sampling) with σ planned by a privacy ledger for ε = 1 at δ.
    """
    rows = []
    for seed in range(seeds):
        settings = federation_settings("iid", None, seed, work / f"central-{seed}")
        layout, schema, scalings, pooled = pooled_training_data(settings, work / f"central-{seed}")
        spec = model_spec_for(settings, schema, FeatureStatistics())
        for name, dp in (("pooled, non-private", False), ("pooled, DP ε = 1", True)):
            scaling = "ranges" if dp else "exact"
            inputs, targets = pooled[scaling]
            plan = None
            if dp:
                ledger = PrivacyLedger(work / f"central-ledger-{seed}", CENTRAL_EPSILON)
                rate = dp_sample_rate(len(inputs), DEFAULTS.batch_size)
                steps = CENTRAL_EPOCHS * batches_per_epoch(len(inputs), DEFAULTS.batch_size)
                sigma = ledger.plan_noise("central", "run", rate, steps, 1)
                plan = DPSettings(sigma, DEFAULTS.max_grad_norm)
                epsilon = ledger.release(sigma, rate, steps, "central", "run").epsilon_after
            model = build_model(spec, seed=seed)
            train_locally(
                model, inputs, targets, get_task(spec.task), epochs=CENTRAL_EPOCHS,
                batch_size=DEFAULTS.batch_size, learning_rate=DEFAULTS.learning_rate,
                dp=plan, seed=seed,
            )  # fmt: skip
            metrics = evaluate_on_table(
                get_weights(model), spec, schema, scalings[scaling], layout.test_path
            )
            rows.append(
                {
                    "setting": name,
                    "seed": seed,
                    "roc_auc": metrics["roc_auc"],
                    "accuracy": metrics["accuracy"],
                    "epsilon": epsilon if dp else None,
                }
            )
    return rows


def dp_overhead(work: Path, repeats: int = 7) -> list[dict[str, Any]]:
    """Opacus time / plain time for the same loop on the same data, alternating the two."""
    settings = federation_settings("iid", 1.0, 0, work / "overhead")
    _, schema, _, pooled = pooled_training_data(settings, work / "overhead")
    inputs, targets = pooled["exact"]
    results = []
    for kind, epochs in (("logreg", 20), ("mlp", 20)):
        spec = model_spec_for(
            replace(DEFAULTS, model=kind, hidden="64,32"), schema, FeatureStatistics()
        )
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


def _row(setting: str, epsilon: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    spent = [r["max_epsilon_spent"] for r in runs if r.get("max_epsilon_spent") is not None]
    return {
        "setting": setting,
        "epsilon": epsilon,
        "seeds": len(runs),
        "roc_auc_median": statistics.median(r["roc_auc"] for r in runs),
        "roc_auc_min": min(r["roc_auc"] for r in runs),
        "accuracy_median": statistics.median(r["accuracy"] for r in runs),
        "accuracy_min": min(r["accuracy"] for r in runs),
        "max_epsilon_spent": max(spent) if spent else None,
    }


def utility_table(done: dict[str, dict], central: list[dict[str, Any]]) -> list[dict]:
    table = []
    for before in (False, True):
        for partition in PARTITIONS:
            for epsilon in EPSILONS:
                runs = [
                    r
                    for r in done.values()
                    if r["partition"] == partition
                    and r["epsilon"] == epsilon
                    and r.get("before", False) == before
                ]
                if not runs:
                    continue
                name = f"{partition}{' α=0.5' if partition == 'dirichlet' else ''}"
                table.append(
                    _row(
                        f"{name}, before" if before else name,
                        "no DP" if epsilon is None else f"{epsilon:g}",
                        runs,
                    )
                )
    for setting in ("pooled, DP ε = 1", "pooled, non-private"):
        runs = [r for r in central if r["setting"] == setting]
        if runs:
            epsilon = "no DP" if runs[0]["epsilon"] is None else f"{CENTRAL_EPSILON:g}"
            row = _row(f"centralized logreg ({setting})", epsilon, runs)
            if runs[0]["epsilon"] is not None:
                row["max_epsilon_spent"] = max(r["epsilon"] for r in runs)
            table.append(row)
    return table


def markdown(
    table: list[dict],
    overhead: list[dict],
    wall: dict[str, float],
    load: tuple[float, float, float],
) -> str:
    lines = [
        "# Privacy against utility: Breast Cancer Wisconsin, 5 sites",
        "",
        "Global test set (114 tumours, held out from every site). ε is each site's whole "
        "spend at δ = 1e-5: the federated statistics release, if the settings make one, and "
        "every training round, composed in the site's ledger. Default settings: "
        f"{DEFAULTS.num_server_rounds} rounds, {DEFAULTS.local_epochs} local epoch(s), "
        f"batch {DEFAULTS.batch_size}, learning rate {DEFAULTS.learning_rate}, clipping "
        f"{DEFAULTS.max_grad_norm}, {DEFAULTS.strategy}, statistics share "
        f'{DEFAULTS.statistics_epsilon_share}. "before" rows: the settings before this '
        "session's tuning ("
        + ", ".join(f"{k.replace('_', '-')}={v}" for k, v in BEFORE.items())
        + f"). Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
        "",
        "| sites | ε per site | seeds | ROC-AUC (median) | ROC-AUC (min) | accuracy (median) "
        "| accuracy (min) | max ε spent |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        spent = "–" if row["max_epsilon_spent"] is None else f"{row['max_epsilon_spent']:.3f}"
        lines.append(
            f"| {row['setting']} | {row['epsilon']} | {row['seeds']} | "
            f"{row['roc_auc_median']:.4f} | {row['roc_auc_min']:.4f} | "
            f"{row['accuracy_median']:.4f} | {row['accuracy_min']:.4f} | {spent} |"
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
        "## Wall time of a 5-site federation (ε = 1, IID, in process)",
        "",
        f"- whole run, median: {wall['median_seconds']:.1f} s "
        f"(min {wall['min_seconds']:.1f} s, {wall['runs']} runs)",
        f"- the rounds alone, median: {wall['rounds_median_seconds']:.1f} s",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per setting (default 5)")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier finished runs")
    args = parser.parse_args()
    log_path = RESULTS / "privacy_utility_runs.jsonl"
    done = {k: r for k, r in load_runs(log_path, args.fresh).items() if r["seed"] < args.seeds}

    with tempfile.TemporaryDirectory(prefix="fedcare-bench-") as tmp:
        work = Path(tmp)
        print(f"federations ({len(done)} already done):", flush=True)
        run_federations(args.seeds, done, log_path, work)
        print("centralized baselines …", flush=True)
        central = centralized_baselines(args.seeds, work)
        print("DP-SGD overhead …", flush=True)
        overhead = dp_overhead(work)

    default_eps1 = [
        r
        for r in done.values()
        if r["partition"] == "iid" and r["epsilon"] == 1.0 and not r.get("before", False)
    ]
    wall = {
        "runs": len(default_eps1),
        "median_seconds": statistics.median(r["wall_seconds"] for r in default_eps1),
        "min_seconds": min(r["wall_seconds"] for r in default_eps1),
        "rounds_median_seconds": statistics.median(r["round_seconds"] for r in default_eps1),
    }
    table = utility_table(done, central)
    load = os.getloadavg()
    results = {
        "utility": table,
        "centralized": central,
        "dp_overhead": overhead,
        "simulation_wall_time": wall,
        "load_average": load,
        "runs": sorted(done.values(), key=lambda r: r["key"]),
    }
    (RESULTS / "privacy_utility.json").write_text(json.dumps(results, indent=2))
    text = markdown(table, overhead, wall, load)
    (RESULTS / "privacy_utility.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
