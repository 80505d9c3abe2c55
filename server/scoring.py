"""Scoring a registered model on local files: the researcher's check of a model.

A version is rebuilt from its registry folder alone (:meth:`Predictor.from_version`), and
each file is read, checked and encoded by the schema's data kind with the version's own
federated standardization, exactly as the coordinator evaluated it on the global test set.
The task's metrics are computed per file and over all files pooled (not averaged).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.data.kinds.registry import get_kind
from models.data.kinds.table import TableExamples
from models.data.tables import SiteDataError
from models.predictor import Predictor
from protocol.federation import NUM_EXAMPLES
from server.registry import ModelRegistry, ModelVersion

_REFERENCE = re.compile(r"^(?P<name>[^@\s]+)(?:@v?(?P<version>\d+))?$")


class ScoringError(ValueError):
    """The model reference or the files cannot be scored; the message says where."""


@dataclass(frozen=True)
class PredictionRow:
    """One scored example: where it is, and the model's prediction (nothing else of it).

    Parameters
    ----------
    file : str
        The file as it was given.
    row : int
        The file row for tables (the header is row 1); the example's position, from 1, for
        other kinds of data.
    prediction : dict
        The task's prediction (``label`` and ``probability`` for binary tasks …).
    """

    file: str
    row: int
    prediction: dict[str, Any]


@dataclass(frozen=True)
class FileScore:
    """The task's metrics on one file.

    Parameters
    ----------
    file : str
        The file as it was given.
    metrics : dict of str to float
        The task's metrics, with ``num-examples``.
    """

    file: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Scores:
    """A version scored on files.

    Parameters
    ----------
    model : str
        The model's name.
    version : int
        Its version number.
    signed : bool
        Whether the version has a manifest signature (not verified here: no key).
    files : list of FileScore
        Each file's metrics, in the order given.
    overall : dict of str to float
        The metrics over every file's examples pooled.
    predictions : list of PredictionRow
        Every example's prediction, file by file.
    """

    model: str
    version: int
    signed: bool
    files: list[FileScore]
    overall: dict[str, float]
    predictions: list[PredictionRow]

    def to_dict(self) -> dict[str, Any]:
        """The metrics as JSON-able values (the predictions are written as CSV instead)."""
        return {
            "model": self.model,
            "version": self.version,
            "signed": self.signed,
            "files": {score.file: score.metrics for score in self.files},
            "overall": self.overall,
        }


def find_version(registry_dir: Path, reference: str) -> ModelVersion:
    """The version ``NAME`` (the newest) or ``NAME@VERSION`` names, its files checked.

    Parameters
    ----------
    registry_dir : Path
        The registry folder (a simulation's ``registry/``).
    reference : str
        ``NAME`` or ``NAME@VERSION`` (``breast_cancer@2``, ``breast_cancer@v2``).

    Raises
    ------
    ScoringError
        The reference is malformed.
    RegistryError
        No such model or version, or a file does not match its sha256.
    """
    match = _REFERENCE.match(reference.strip())
    if match is None:
        raise ScoringError(f"--model {reference!r}: expected NAME or NAME@VERSION")
    number = match["version"]
    version = ModelRegistry(registry_dir).get(match["name"], int(number) if number else None)
    version.verify_files()
    return version


def score_files(version: ModelVersion, paths: Sequence[Path]) -> Scores:
    """Score a version on files read with its own schema and standardization.

    Parameters
    ----------
    version : ModelVersion
        The registered model.
    paths : sequence of Path
        CSV/Parquet tables (or what the schema's data kind reads).

    Raises
    ------
    ScoringError
        Some files fail the schema's checks; every problem of every file is listed.
    """
    predictor = Predictor.from_version(version)
    kind = get_kind(predictor.schema)
    loaded, failures = [], []
    for path in paths:
        try:
            loaded.append((path, kind.load(path, predictor.schema)))
        except SiteDataError as err:
            failures.append(str(err))
    if failures:
        raise ScoringError("\n".join(failures))
    files, predictions = [], []
    pooled_targets, pooled_outputs = [], []
    for path, examples in loaded:
        encoded = examples.encode(np.arange(examples.num_examples), predictor.standardization)
        outputs = predictor.outputs(encoded.inputs)
        # regression targets back in the label's units, as the coordinator scores them
        targets = predictor.encoder.decode_outputs(encoded.targets)
        files.append(FileScore(str(path), _metrics(predictor, targets, outputs)))
        pooled_targets.append(targets)
        pooled_outputs.append(outputs)
        rows = (
            examples.table.source_rows
            if isinstance(examples, TableExamples)
            else range(1, examples.num_examples + 1)
        )
        answers = predictor.task.predict(outputs, predictor.schema.classes)
        predictions.extend(
            PredictionRow(str(path), row, answer) for row, answer in zip(rows, answers, strict=True)
        )
    overall = _metrics(predictor, np.concatenate(pooled_targets), np.concatenate(pooled_outputs))
    return Scores(
        model=version.name,
        version=version.version,
        signed=version.signature_path.is_file(),
        files=files,
        overall=overall,
        predictions=predictions,
    )


def _metrics(predictor: Predictor, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    metrics = predictor.task.metrics(targets, outputs)
    metrics[NUM_EXAMPLES] = float(len(targets))
    return metrics
