"""Personalization on label-skewed hospitals: each site's global against personalized model.

Breast Cancer Wisconsin split across 5 sites by a Dirichlet(α = 0.3) label skew, 10 rounds
of FedAvg with DP-SGD at ε per site, then each site fine-tunes the global model on its own
training part (``personalize-epochs``), within the same budget (its noise plan reserves
the room), and reports the global and the personalized model's metrics on its own
validation part. Both models are scored in the same run on the same rows, side by side.
Printed and written to ``benchmarks/results/personalization.{json,md}`` (with ``--epochs
N`` other than 1: ``personalization-epochsN.{json,md}``) with the load average. The
federation runs in this process (``simulations.in_process``), without Ray.

    .venv/bin/python benchmarks/personalization.py
    .venv/bin/python benchmarks/personalization.py --seeds 0 1 2 --epsilon 3 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.settings import RunSettings  # noqa: E402
from simulations.in_process import run_in_process  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("roc_auc", "accuracy")


def run(seed: int, epsilon: float, epochs: int, out: Path) -> dict[str, Any]:
    """One federation with personalization; per site, both models' metrics and the ε."""
    settings = RunSettings(
        sites=5,
        num_server_rounds=10,
        partition="dirichlet",
        alpha=0.3,
        epsilon=epsilon,
        personalize_epochs=epochs,
        seed=seed,
        out_dir=str(out),
    )
    started = time.perf_counter()
    report = run_in_process(settings, progress=lambda line: None).report
    return {
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "sites": report["personalization"],
        "epsilon_spent": report["privacy"]["epsilon_spent"],
        "final_global_test": report["final"],
    }


def markdown(results: dict[str, Any]) -> str:
    """The per-site table of every seed, and the mean change per metric."""
    lines = [
        "# Personalization on Dirichlet(α = 0.3) sites",
        "",
        f"Breast Cancer Wisconsin, 5 sites, 10 rounds FedAvg, DP ε = {results['epsilon']} per "
        f"site (training, statistics and personalization together), then "
        f"{results['personalize_epochs']} epoch(s) of DP fine-tuning at each site. Metrics on "
        "each site's own validation part; load average "
        f"{results['load_average'][0]:.2f} / {results['load_average'][1]:.2f} / "
        f"{results['load_average'][2]:.2f} (1/5/15 min).",
        "",
        "| seed | site | val. rows | ROC-AUC global | ROC-AUC personalized | accuracy global "
        "| accuracy personalized | ε spent on personalization | ε spent in all |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in results["runs"]:
        for site, figures in entry["sites"].items():
            g, p = figures["global"], figures["personalized"]
            lines.append(
                f"| {entry['seed']} | {site} | {int(g['num-examples'])} | "
                + " | ".join(
                    f"{g.get(k, float('nan')):.4f} | {p.get(k, float('nan')):.4f}" for k in METRICS
                )
                + f" | {figures['epsilon']:.3f} | {entry['epsilon_spent'][site]:.3f} |"
            )
    lines += ["", "Mean over sites and seeds (personalized − global):", ""]
    for key, change in results["mean_change"].items():
        lines.append(f"- {key}: {change:+.4f}")
    lines.append("")
    lines.append(
        "A site whose validation part holds one class has no ROC-AUC (nan); it is left out "
        "of the means."
    )
    return "\n".join(lines) + "\n"


def mean_change(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Personalized minus global, per metric, over every site with both figures finite."""
    out = {}
    for key in METRICS:
        changes = [
            f["personalized"][key] - f["global"][key]
            for entry in runs
            for f in entry["sites"].values()
            if key in f["global"]
            and key in f["personalized"]
            and f["global"][key] == f["global"][key]
            and f["personalized"][key] == f["personalized"][key]
        ]
        out[key] = statistics.fmean(changes) if changes else float("nan")
    return out


def main() -> None:
    """Run the seeds, print the table and write it to benchmarks/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs.append(run(seed, args.epsilon, args.epochs, Path(tmp) / f"seed-{seed}"))
            print(f"seed {seed}: {runs[-1]['seconds']:.1f} s")
    results = {
        "epsilon": args.epsilon,
        "personalize_epochs": args.epochs,
        "partition": "dirichlet",
        "alpha": 0.3,
        "runs": runs,
        "mean_change": mean_change(runs),
        "load_average": list(os.getloadavg()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    # one file pair per epoch count, so the counts compared in the docs stay side by side
    stem = "personalization" + ("" if args.epochs == 1 else f"-epochs{args.epochs}")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
