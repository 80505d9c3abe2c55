"""`fedcare predict`: send a CSV of patients through the encrypted inference service."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cli.output import fail

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


def read_rows(path: Path, features: list[str]) -> list[dict[str, Any]]:
    """The feature columns of a CSV as rows.

    Parameters
    ----------
    path : Path
        The CSV, with a header line.
    features : list of str
        The model's features, the columns taken.

    Raises ``ValueError`` naming a missing column or an empty cell, or if there is no row.
    """
    import pandas as pd

    frame = pd.read_csv(path)
    if frame.empty:  # nothing to send, and no prediction to take the output's columns from
        raise ValueError(f"{path}: no rows of patients under the header")
    missing = [name for name in features if name not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column for the model's feature(s) {missing}")
    frame = frame[features]
    empty = frame.isna()
    if empty.to_numpy().any():
        row, col = next((r, c) for r, c in zip(*empty.to_numpy().nonzero(), strict=True))
        raise ValueError(f"{path}: line {row + 2}, column '{features[col]}' is empty")
    return frame.to_dict(orient="records")


def predict(
    url: str = typer.Option(..., help="The service, e.g. https://127.0.0.1:8443."),
    token: str = typer.Option(
        ..., envvar="FEDCARE_TOKEN", help="Bearer token (or set FEDCARE_TOKEN)."
    ),
    input: Path = typer.Option(..., exists=True, dir_okay=False, help="Patients, one per row."),
    model: str = typer.Option("breast_cancer", help="The model's name in the registry."),
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
            rows = read_rows(input, features)
            parameters = metadata["parameters"]
            # HE requests carry up to the ciphertext's slots; the client batches them itself.
            batch = max(len(rows), 1) if he else int(parameters["max_rows"])
            predictions: list[dict[str, Any]] = []
            version = ""
            for start in range(0, len(rows), batch):
                result = client.infer(rows[start : start + batch])
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
