"""The run's report: ``report.json`` and a plot of metrics and ε per site over rounds.

The ε panel also shows, when the run was audited (``privacy.audit``, written by
``simulations.audit``), each site's empirical lower bound beside its accounted ε.
"""

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


def read_report(out_dir: Path) -> dict[str, Any]:
    """The report of the run in ``out_dir``."""
    path = out_dir / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report; is {out_dir} a finished run's folder?")
    return dict(json.loads(path.read_text()))


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """The report's plot: metrics and ε per site over the rounds, audit bounds beside ε."""
    title = (
        f"{report['model']['name']}: {report['settings']['strategy']}, DP={report['privacy']['dp']}"
    )
    audited = report["privacy"].get("audit", {}).get("sites", {})
    audit = {
        site: (entry["epsilon_lower_bound"], entry["accounted_epsilon"])
        for site, entry in audited.items()
    }
    return plot_history(report["history"], path, title, audit)


def plot_history(
    history: list[dict[str, Any]],
    path: Path,
    title: str,
    audit: dict[str, tuple[float, float | None]] | None = None,
) -> Path:
    """Two panels: the global model's metrics per round, and ε spent per site.

    Parameters
    ----------
    history : list of dict
        The report's ``history``.
    path : Path
        Where the PNG goes.
    title : str
        The figure's title.
    audit : dict of str to (float, float or None), optional
        Each audited site's empirical ε lower bound and its accounted ε (None without
        DP), drawn side by side after the last round.
    """
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
    _plot_audit(right, rounds[-1] if rounds else 0, audit or {})
    right.set_xlabel("round")
    right.set_ylabel("ε spent")
    right.set_title("privacy spent per site")
    right.grid(alpha=0.3)
    if sites or audit:
        right.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_audit(axes: Any, last_round: int, audit: dict[str, tuple[float, float | None]]) -> None:
    """Each site's audited ε lower bound (▼) beside its accounted ε (○) after the last round."""
    for i, (site, (bound, accounted)) in enumerate(sorted(audit.items())):
        x = last_round + 0.3 + 0.1 * i
        label = f"{site}: audited lower bound {bound:.2f}"
        if accounted is not None:
            axes.plot([x], [accounted], marker="o", fillstyle="none", color=f"C{i}")
            label += f" (accounted {accounted:.2f})"
        axes.plot([x], [bound], marker="v", linestyle="none", color=f"C{i}", label=label)
