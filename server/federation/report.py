"""The run's report: ``report.json`` and a plot of metrics and ε per site over rounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on coordinators and CI
import matplotlib.pyplot as plt  # noqa: E402

REPORT_FILE = "report.json"
PLOT_FILE = "report.png"


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` to ``out_dir / report.json`` (indented, keys sorted).

    Parameters
    ----------
    out_dir : Path
        The run's output folder.
    report : dict
        The run's report; values JSON cannot encode (e.g. numpy numbers) go through ``float``.

    Returns
    -------
    Path
        The file written.
    """
    path = out_dir / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=float))
    return path


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Two panels: the global model's metrics per round, and ε spent per site."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = [h["round"] for h in history]
    for source, style in (("global_test", "-"), ("federated_evaluation", "--")):
        keys = sorted({k for h in history for k in h.get(source, {})})
        for key in keys:
            if key in ("num-examples", "epsilon"):
                continue
            values = [h.get(source, {}).get(key) for h in history]
            points = [(r, v) for r, v in zip(rounds, values, strict=True) if v is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                label = f"{key} ({'test set' if source == 'global_test' else 'sites'})"
                left.plot(xs, ys, style, marker="o", markersize=3, label=label)
    left.set_xlabel("round")
    left.set_title("global model")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    sites = sorted({s for h in history for s in h.get("epsilon", {})})
    for site in sites:
        values = [h.get("epsilon", {}).get(site) for h in history]
        points = [(r, v) for r, v in zip(rounds, values, strict=True) if v is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            right.plot(xs, ys, marker="o", markersize=3, label=site)
    right.set_xlabel("round")
    right.set_ylabel("ε spent")
    right.set_title("privacy spent per site")
    right.grid(alpha=0.3)
    if sites:
        right.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
