"""Every model family through the whole federation path, with and without DP.

For each family, a federation through Flower's simulation engine (DP-SGD with Opacus at
the sites, the privacy ledger, the registry) is run twice: without DP and with ε = 3 per
site (δ = 1e-5). Printed and written to ``benchmarks/results/model_families.{json,md}``:

- the global-test metric of each family, at ε = 3 and without DP;
- the DP-SGD time overhead: the sites' training time with DP over the time of the same
  training without DP (``train-seconds`` the sites report, summed over rounds);
- Fed-TCGA-BRCA (``../shared/data/fed_tcga_brca``, 6 natural regions, linear Cox): the
  benchmark's metric, the mean over the 6 centers of the C-index on each center's test
  rows, without DP and at ε = 3 per site, beside the published non-private figures
  (FedAvg 0.732, pooled 0.676, from FLamby's result files).

Data: digits (real, 8×8 images), diabetes (real, regression), vitals and notes
(synthetic, generated from a fixed seed: see ``simulations.datasets``), Fed-TCGA-BRCA
(real). Each finished federation is appended to ``results/model_families_runs.jsonl``
and skipped when the benchmark is started again.

    .venv/bin/python benchmarks/model_families.py
    .venv/bin/python benchmarks/model_families.py --only tcga_cox_linear
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.data.kinds.registry import get_kind, load_schema  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from models.survival import concordance_index  # noqa: E402
from server.registry import ModelRegistry  # noqa: E402
from server.settings import RunSettings  # noqa: E402
from simulations.datasets import CENTER_TESTS, write_fed_tcga_brca  # noqa: E402
from simulations.runner import run_simulated_federation  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TCGA_SOURCE = ROOT.parent / "shared" / "data" / "fed_tcga_brca"
EPSILON = 3.0
PUBLISHED_TCGA = {"FedAvg (non-private)": 0.732, "pooled (non-private)": 0.676}


@dataclass(frozen=True)
class Family:
    """One benchmarked configuration.

    Parameters
    ----------
    name : str
        Row name in the table.
    data : str
        A built-in data set, or ``tcga`` for the Fed-TCGA-BRCA folder.
    metrics : tuple of str
        The global-test metrics shown, the headline first.
    settings : dict
        ``RunSettings`` values (model, rounds, learning rate …).
    """

    name: str
    data: str
    metrics: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)


FAMILIES = [
    Family(
        "image_cnn",
        "digits",
        ("accuracy", "balanced_accuracy"),
        {"model": "cnn", "learning_rate": 0.5, "local_epochs": 2, "batch_size": 32},
    ),
    Family("sequence_gru", "vitals", ("roc_auc", "pr_auc"), {"model": "gru"}),
    Family("sequence_lstm", "vitals", ("roc_auc", "pr_auc"), {"model": "lstm"}),
    Family("sequence_attention", "vitals", ("roc_auc", "pr_auc"), {"model": "attention"}),
    Family("regression_mlp", "diabetes", ("r2", "mae"), {"model": "mlp", "learning_rate": 0.05}),
    Family(
        "notes_logreg_balanced",
        "notes",
        ("pr_auc", "balanced_accuracy"),
        {"model": "logreg", "class_weights": "balanced"},
    ),
    Family("tcga_cox_linear", "tcga", ("c_index",), {"model": "cox_linear"}),
]
COMMON = {
    "sites": 3,
    "num_server_rounds": 10,
    "local_epochs": 1,
    "learning_rate": 0.5,
    "batch_size": 16,
    "delta": 1e-5,
    "seed": 0,
}


def run_family(family: Family, dp: bool, work: Path) -> dict[str, Any]:
    """One federation of ``family``, with DP at ε = 3 or without; its results row."""
    out = work / f"{family.name}-{'dp' if dp else 'nodp'}"
    values = {**COMMON, **family.settings, "dp": dp, "epsilon": EPSILON, "out_dir": str(out)}
    if family.data == "tcga":
        values["data_dir"] = str(write_fed_tcga_brca(TCGA_SOURCE, work / "tcga-data"))
        values["sites"] = 6
    else:
        values["dataset"] = family.data
    started = time.perf_counter()
    report = run_simulated_federation(RunSettings(**values)).report
    row = {
        "family": family.name,
        "dp": dp,
        "final": report["final"],
        "train_seconds": sum(h["train"].get("train-seconds", 0.0) for h in report["history"]),
        "max_epsilon_spent": max(report["privacy"]["epsilon_spent"].values()),
        "wall_seconds": time.perf_counter() - started,
        "model_kind": report["model"]["kind"],
    }
    if family.data == "tcga":
        row["center_c_index"] = center_c_indices(report, work / "tcga-data")
    return row


def center_c_indices(report: dict[str, Any], data_dir: Path) -> list[float]:
    """The registered model's C-index on each center's test rows (the benchmark's split)."""
    version = ModelRegistry(report["model"]["registry"]).get(report["model"]["name"])
    predictor = Predictor.from_version(version)
    schema = load_schema(data_dir / "schema.toml")
    kind = get_kind(schema)
    scores = []
    for path in sorted((data_dir / CENTER_TESTS).glob("test-*.csv")):
        examples = kind.load(path, schema)
        encoded = examples.encode(np.arange(examples.num_examples), predictor.standardization)
        risk = predictor.outputs(encoded.inputs).reshape(-1)
        scores.append(concordance_index(encoded.targets[:, 0], encoded.targets[:, 1], risk))
    return scores


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Model families: global-test metric at ε = 3 per site and without DP",
        "",
        f"FedAvg through Flower's simulation engine, {COMMON['sites']} sites (6 natural "
        f"regions for Fed-TCGA-BRCA), {COMMON['num_server_rounds']} rounds, δ = 1e-5. "
        "DP overhead = the sites' training seconds with DP ÷ without DP.",
        "",
        "| family | data | model | metric | no DP | ε = 3 | ε spent | DP overhead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        plain, private = rows.get(f"{family.name}/nodp"), rows.get(f"{family.name}/dp")
        if plain is None or private is None:
            continue
        overhead = private["train_seconds"] / max(plain["train_seconds"], 1e-9)
        for i, metric in enumerate(family.metrics):
            first = i == 0
            lines.append(
                f"| {family.name if first else ''} | {family.data if first else ''} | "
                f"{private['model_kind'] if first else ''} | {metric} | "
                f"{plain['final'][metric]:.4f} | {private['final'][metric]:.4f} | "
                f"{private['max_epsilon_spent']:.3f} | "
                f"{f'{overhead:.1f}×' if first else ''} |"
            )
    plain, private = rows.get("tcga_cox_linear/nodp"), rows.get("tcga_cox_linear/dp")
    if plain and private:
        lines += [
            "",
            "## Fed-TCGA-BRCA: C-index, mean over the 6 centers' test sets",
            "",
            "| model | C-index (mean of 6 centers) | per center |",
            "|---|---|---|",
        ]
        for label, row in (("fedcare FedAvg, no DP", plain), ("fedcare FedAvg, ε = 3", private)):
            per_center = ", ".join(f"{c:.3f}" for c in row["center_c_index"])
            lines.append(
                f"| {label} | {statistics.mean(row['center_c_index']):.4f} | {per_center} |"
            )
        for label, value in PUBLISHED_TCGA.items():
            lines.append(f"| published {label} (FLamby) | {value:.3f} | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run only this family (see FAMILIES)")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier finished runs")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "model_families_runs.jsonl"
    rows: dict[str, dict[str, Any]] = {}
    if log_path.is_file() and not args.fresh:
        for line in log_path.read_text().splitlines():
            row = json.loads(line)
            rows[f"{row['family']}/{'dp' if row['dp'] else 'nodp'}"] = row
    with tempfile.TemporaryDirectory(prefix="fedcare-families-") as tmp:
        for family in FAMILIES:
            if args.only and family.name != args.only:
                continue
            for dp in (False, True):
                key = f"{family.name}/{'dp' if dp else 'nodp'}"
                if key in rows:
                    continue
                row = run_family(family, dp, Path(tmp))
                rows[key] = row
                with log_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                shown = {m: round(row["final"][m], 4) for m in family.metrics}
                print(f"{key}: {shown}, {row['wall_seconds']:.0f} s", flush=True)
    (RESULTS / "model_families.json").write_text(json.dumps(rows, indent=2, sort_keys=True))
    text = markdown(rows)
    (RESULTS / "model_families.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
