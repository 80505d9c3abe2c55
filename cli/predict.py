"""`fedcare predict`: send a CSV of patients through the encrypted inference service."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.output import fail

if TYPE_CHECKING:
    from client.sdk import InferenceError

console = Console(stderr=True)


def flatten(prediction: dict[str, Any]) -> dict[str, Any]:
    """One CSV row of a prediction: mappings become ``<field>_<key>`` columns."""
    out: dict[str, Any] = {}
    for name, value in prediction.items():
        if isinstance(value, dict):
            out.update({f"{name}_{key}": v for key, v in value.items()})
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class PatientRows:
    """The patients of a file, as the service is sent them.

    Parameters
    ----------
    rows : list of dict
        Per patient, each feature's cell exactly as the file holds it (the service reads
        it with the rule training reads a cell with, ``models.data.values``).
    lines : list of int
        Each patient's file row, as a person counts it (the header is row 1).
    """

    rows: list[dict[str, Any]]
    lines: list[int]


def read_rows(path: Path, features: list[str]) -> PatientRows:
    """The feature columns of a table, read as training reads a site's file.

    Parameters
    ----------
    path : Path
        A CSV, TSV or Parquet file with a header line.
    features : list of str
        The model's features, the columns taken.

    Raises ``ValueError`` (``SiteDataError`` for an unreadable file) naming a missing
    column, or if there is no row.
    """
    from models.data.tables import read_table

    frame = read_table(path)
    missing = [name for name in features if name not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column for the model's feature(s) {missing}")
    if frame.empty:  # nothing to send, and no prediction to take the output's columns from
        raise ValueError(f"{path}: no rows of patients under the header")
    rows = [dict(zip(features, cells, strict=True)) for cells in frame[features].to_numpy()]
    return PatientRows(rows, [int(line) for line in frame.index])


def _where(path: Path, lines: list[int], start: int, err: InferenceError) -> str:
    """A refusal of a batch's row as the file's row: ``file, row 7, column 'age': …``."""
    row, feature = err.details.get("row"), err.details.get("feature")
    if not isinstance(row, int) or not 0 <= start + row < len(lines):
        return str(err)
    prefix = f"row {row}" + (f", feature '{feature}'" if feature else "") + ": "
    message = err.message.removeprefix(prefix)
    column = f", column '{feature}'" if feature else ""
    return f"{path}, row {lines[start + row]}{column}: {message}"


def predict(
    url: str = typer.Option(..., help="The service, e.g. https://127.0.0.1:8443."),
    token: str = typer.Option(
        ..., envvar="FEDCARE_TOKEN", help="Bearer token (or set FEDCARE_TOKEN)."
    ),
    input: Path = typer.Option(..., exists=True, dir_okay=False, help="Patients, one per row."),
    model: str = typer.Option(
        ...,
        help="The model's name, as the service serves it from its registry (e.g. "
        "breast_cancer for `fedcare demo`'s model).",
    ),
    ca_cert: Path | None = typer.Option(None, help="CA of the service's TLS certificate."),
    client_cert: Path | None = typer.Option(None, help="Client certificate (mTLS)."),
    client_key: Path | None = typer.Option(None, help="Client key (mTLS)."),
    out: Path | None = typer.Option(None, help="Write predictions to this CSV instead."),
    he: bool = typer.Option(
        False,
        "--he",
        help="Homomorphic mode (linear models): send CKKS ciphertexts the host cannot read.",
    ),
) -> None:
    """Predict every row of a CSV through the encrypted service; extra columns are ignored."""
    from client.sdk import InferenceClient, InferenceError

    try:
        with InferenceClient(
            url,
            token,
            model,
            ca_cert=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
            mode="he" if he else "plain",
        ) as client:
            metadata = client.metadata()
            features = [item["name"] for item in metadata["inputs"]]
            patients = read_rows(input, features)
            parameters = metadata["parameters"]
            # HE requests carry up to the ciphertext's slots; the client batches them itself.
            batch = max(len(patients.rows), 1) if he else int(parameters["max_rows"])
            predictions: list[dict[str, Any]] = []
            version = ""
            for start in range(0, len(patients.rows), batch):
                try:
                    result = client.infer(patients.rows[start : start + batch])
                except InferenceError as err:
                    raise ValueError(_where(input, patients.lines, start, err)) from None
                predictions.extend(result.predictions)
                version = result.model_version
    except (InferenceError, ValueError) as err:
        raise fail(err, 2) from None
    flat = [flatten(p) for p in predictions]
    console.print(f"{len(flat)} predictions from {model} v{version}")
    if out is not None:
        with out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)
        console.print(f"written to {out}")
        return
    table = Table("row", *flat[0])
    for i, row in enumerate(flat, start=1):
        cells = (f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values())
        table.add_row(str(i), *cells)
    Console(file=sys.stdout).print(table)
