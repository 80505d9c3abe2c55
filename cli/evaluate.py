"""`fedcare evaluate`: score a registered model on local files with its own preprocessing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cli.output import fail, print_warning
from cli.predict import flatten
from protocol.federation import NUM_EXAMPLES

console = Console()


def evaluate(
    registry: Path = typer.Option(
        ..., exists=True, file_okay=False, help="The registry folder (a run's registry/)."
    ),
    model: str = typer.Option(
        ..., help="NAME or NAME@VERSION (the newest version when none is given)."
    ),
    data: list[Path] = typer.Option(
        ..., help="A CSV/Parquet file with the model's features and label; repeat for more."
    ),
    out: Path | None = typer.Option(None, help="Write the metrics as JSON here."),
    predictions: Path | None = typer.Option(
        None, help="Write one CSV line per row here: file, row number and prediction."
    ),
) -> None:
    """Score a registered model on your own files: the task's metrics per file and overall."""
    from models.data.schema import SchemaError
    from models.data.tables import SiteDataError
    from server.registry import RegistryError
    from server.scoring import ScoringError, find_version, score_files

    try:
        version = find_version(registry, model)
        if not version.signature_path.is_file():
            print_warning(f"{version.path} is unsigned; its origin is not verified")
        scores = score_files(version, data)
    except (RegistryError, ScoringError, SchemaError, SiteDataError) as err:
        raise fail(err, 1) from None
    keys = sorted({key for score in scores.files for key in score.metrics})
    table = Table(title=f"{scores.model} v{scores.version}")
    table.add_column("file", overflow="fold")
    for key in keys:
        table.add_column("rows" if key == NUM_EXAMPLES else key, justify="right")
    labels = _file_labels([s.file for s in scores.files])
    for name, metrics in [
        *zip(labels, (s.metrics for s in scores.files), strict=True),
        ("overall", scores.overall),
    ]:
        table.add_row(name, *(_cell(key, metrics.get(key)) for key in keys))
    console.print(table)
    if out is not None:
        out.write_text(json.dumps(scores.to_dict(), indent=2))
        console.print(f"metrics: {out}")
    if predictions is not None:
        rows = [{"file": p.file, "row": p.row, **flatten(p.prediction)} for p in scores.predictions]
        with predictions.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        console.print(f"predictions: {predictions}")


def _file_labels(files: list[str]) -> list[str]:
    """Each file by its name, or all by their paths where two share a name."""
    names = [Path(file).name for file in files]
    return names if len(set(names)) == len(names) else files


def _cell(key: str, value: float | None) -> str:
    """A metric as the table shows it (a dash where a file has none, e.g. one class only)."""
    if value is None:
        return "-"
    return f"{value:.0f}" if key == NUM_EXAMPLES else f"{value:.4f}"
