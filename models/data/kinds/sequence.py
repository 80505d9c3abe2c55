"""Per-patient time series (vital signs, lab values) in long format: one row per measurement.

Schema keys (``[dataset]``): ``kind = "sequence"``, ``patient`` (the patient-id column),
``time`` (a numeric column ordering a patient's rows), ``max_steps`` (default 48: a longer
series keeps its most recent steps), ``task`` (binary, multiclass or regression) and
``label`` (one value per patient, repeated on each of its rows). ``[features.<name>]``
declare the measurements, typed as in tables.

Each patient becomes a ``(max_steps, features + 1)`` float32 array: the standardized
measurements of its steps in time order, then zero padding; the last channel is 1 on a
real step and 0 on padding (see :mod:`models.sequences`). The federation pools the
measurements' counts, sums and sums of squares over every step (and, for regression, the
per-patient label's). A request instance is ``{"steps": [{"<time>": t, "<feature>": v,
…}, …]}``, or the same columns as lists of equal length, ``{"<time>": [t0, t1, …],
"<feature>": [v0, v1, …], …}`` (what one inference tensor per column carries).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.data.features import (
    FeatureEncoder,
    FeatureStatistics,
    Standardization,
    declared_bounds,
    on_encoded_scale,
)
from models.data.kinds.base import (
    EncodedExamples,
    ModelInput,
    RowError,
    column_option,
    integer_option,
)
from models.data.kinds.table import attributions_by_feature, check_rows
from models.data.schema import FeatureSpec, SchemaError, SiteSchema
from models.data.tables import (
    TABLE_FILE,
    TABLE_SUFFIXES,
    DataProblem,
    SiteDataError,
    load_site_table,
)

STEPS_FIELD = "steps"


@dataclass(frozen=True)
class SequenceLayout:
    """The columns a sequence schema names: ``patient``, ``time`` and ``max_steps``."""

    patient: str
    time: str
    max_steps: int

    @classmethod
    def of(cls, schema: SiteSchema) -> SequenceLayout:
        """The layout a schema declares (``max_steps`` default 48).

        Parameters
        ----------
        schema : SiteSchema
            A sequence schema.

        Raises
        ------
        SchemaError
            ``patient`` or ``time`` is missing or names the label or a feature, or
            ``max_steps`` is not a positive integer.
        """
        return cls(
            patient=column_option(schema, "patient"),
            time=column_option(schema, "time"),
            max_steps=integer_option(schema, "max_steps", 48, 1),
        )


def step_schema(schema: SiteSchema) -> SiteSchema:
    """How each measurement row is checked: the features plus the time as a number."""
    layout = SequenceLayout.of(schema)
    time = FeatureSpec(name=layout.time, type="numeric")
    return replace(schema, features=(*schema.features, time), extra={})


@dataclass
class SequenceExamples:
    """A site's checked series.

    Parameters
    ----------
    schema : SiteSchema
        The federation's schema.
    steps : DataFrame
        Every kept measurement row (features, time, label, patient).
    rows : list[ndarray]
        Per patient, the positions in ``steps`` of its rows in time order (at most
        ``max_steps``, the latest).
    labels : DataFrame
        One row per patient: its label.
    dropped_rows : list of int
        File rows dropped for a missing value.
    """

    schema: SiteSchema
    steps: pd.DataFrame
    rows: list[np.ndarray]
    labels: pd.DataFrame
    dropped_rows: list[int] = field(default_factory=list)

    @property
    def num_examples(self) -> int:
        """Number of patients."""
        return len(self.rows)

    def strata(self) -> np.ndarray | None:
        """Each patient's label for classification; None for regression."""
        if self.schema.task == "regression":
            return None
        return self.labels[self.schema.label].to_numpy()

    def statistics(self, index: np.ndarray) -> FeatureStatistics:
        """Numeric features over every kept step of the patients at ``index``, and labels.

        The labels count per class, or for regression enter as one value per patient.
        """
        positions: np.ndarray | list[int] = (
            np.concatenate([self.rows[i] for i in index]) if len(index) else []
        )
        steps = self.steps.iloc[positions]
        columns = {
            s.name: on_encoded_scale(s, steps[s.name].to_numpy(dtype=float))
            for s in self.schema.features
            if s.type == "numeric"
        }
        labels = self.labels.iloc[index][self.schema.label]
        # a patient adds up to max_steps values to each column: what one patient can move
        per_patient = SequenceLayout.of(self.schema).max_steps
        bounds = declared_bounds(self.schema)
        if self.schema.task == "regression":
            # its label is one value per patient, but the sensitivity is the column's most
            columns[self.schema.label] = labels.to_numpy(dtype=float)
            return FeatureStatistics.of_values(
                columns, rows=len(index), bounds=bounds, values_per_example=per_patient
            )
        return FeatureStatistics.of_values(
            columns,
            labels=labels.tolist(),
            rows=len(index),
            bounds=bounds,
            values_per_example=per_patient,
        )

    def encode(self, index: np.ndarray, standardization: Standardization) -> EncodedExamples:
        """The patients at ``index`` as ``(n, max_steps, width + 1)`` arrays and labels."""
        encoder = FeatureEncoder(self.schema, standardization)
        max_steps = SequenceLayout.of(self.schema).max_steps
        values = encoder.transform(self.steps)
        inputs = np.zeros((len(index), max_steps, encoder.input_dim + 1), dtype=np.float32)
        for i, patient in enumerate(index):
            pack_steps(inputs[i], values[self.rows[patient]])
        return EncodedExamples(inputs, encoder.labels(self.labels.iloc[index]))


def pack_steps(out: np.ndarray, values: np.ndarray) -> None:
    """Write one patient's encoded steps into its zeroed ``(max_steps, width + 1)`` array."""
    out[: len(values), :-1] = values
    out[: len(values), -1] = 1.0


def _group_patients(
    path: str, schema: SiteSchema, frame: pd.DataFrame, file_rows: list[int]
) -> tuple[list[np.ndarray], pd.DataFrame]:
    layout = SequenceLayout.of(schema)
    problems: list[DataProblem] = []
    for position, patient in enumerate(frame[layout.patient]):
        if not patient.strip():
            problems.append(DataProblem(path, file_rows[position], layout.patient, "empty id"))
    times = frame[layout.time].to_numpy(dtype=float)
    for blank in np.flatnonzero(np.isnan(times)):
        problems.append(DataProblem(path, file_rows[blank], layout.time, "empty time"))
    if problems:
        raise SiteDataError(problems)
    rows: list[np.ndarray] = []
    labels: list[Any] = []
    for patient, positions in frame.groupby(layout.patient, sort=False).indices.items():
        ordered = positions[np.argsort(times[positions], kind="stable")]
        for a, b in zip(ordered[:-1], ordered[1:], strict=True):
            if times[a] == times[b]:
                problems.append(
                    DataProblem(
                        path,
                        file_rows[b],
                        layout.time,
                        f"patient {patient!r} already has a row at time {times[b]:g} "
                        f"(row {file_rows[a]})",
                    )
                )
        first = frame[schema.label].iloc[ordered[0]]
        for position in ordered[1:]:
            if frame[schema.label].iloc[position] != first:
                problems.append(
                    DataProblem(
                        path,
                        file_rows[position],
                        schema.label,
                        f"patient {patient!r} has label {first!r} on row "
                        f"{file_rows[ordered[0]]}; a patient has one label",
                    )
                )
                break
        rows.append(ordered[-layout.max_steps :])
        labels.append(first)
    if problems:
        raise SiteDataError(problems)
    return rows, pd.DataFrame({schema.label: labels})


class SequenceKind:
    """Long-format time series; see the module docstring."""

    name = "sequence"
    tasks: tuple[str, ...] = ("binary", "multiclass", "regression")
    keys: tuple[str, ...] = ("patient", "time", "max_steps")
    sources = f"{TABLE_FILE} (one row per measurement)"

    def check_schema(self, schema: SiteSchema) -> None:
        """Check ``patient``, ``time``, ``max_steps`` and that features are declared."""
        layout = SequenceLayout.of(schema)
        if not schema.features:
            raise SchemaError(f"{schema.source}: missing [features.<name>] tables")
        if layout.patient == layout.time:
            raise SchemaError(f"{schema.source}: [dataset].patient and .time are one column")

    def is_site_source(self, path: Path) -> bool:
        """Whether ``path`` is a table file (CSV or Parquet)."""
        return path.is_file() and path.suffix.lower() in TABLE_SUFFIXES

    def load(self, path: Path, schema: SiteSchema) -> SequenceExamples:
        """Read and check a long-format table and group it by patient.

        Raises ``SiteDataError`` for bad rows, repeated times, a patient with two labels
        and a site whose patients all share one class.
        """
        layout = SequenceLayout.of(schema)
        table = load_site_table(path, step_schema(schema), passthrough=[layout.patient])
        rows, labels = _group_patients(str(path), schema, table.frame, table.source_rows)
        examples = SequenceExamples(schema, table.frame, rows, labels, table.dropped_rows)
        strata = examples.strata()
        if strata is not None and len(set(strata)) < 2:
            raise SiteDataError(
                [
                    DataProblem(
                        str(path),
                        None,
                        schema.label,
                        f"every patient has label {strata[0]!r}; a site needs patients of "
                        f"at least two of {list(schema.classes)}",
                    )
                ]
            )
        return examples

    def families(self, schema: SiteSchema) -> tuple[str, ...]:
        """GRU (the default), LSTM and attention."""
        return ("gru", "lstm", "attention")

    def model_input(self, schema: SiteSchema) -> ModelInput:
        """The encoded features' width per step, and the ``max_len`` option."""
        width = FeatureEncoder(schema, Standardization({}, {})).input_dim
        return ModelInput(width, {"max_len": SequenceLayout.of(schema).max_steps})

    def encode_request(
        self,
        schema: SiteSchema,
        standardization: Standardization,
        instances: Sequence[Mapping[str, Any]],
    ) -> np.ndarray:
        """Request series (see :func:`checked_steps`) as ``(n, max_steps, width + 1)``."""
        layout = SequenceLayout.of(schema)
        encoder = FeatureEncoder(schema, standardization)
        inputs = np.zeros((len(instances), layout.max_steps, encoder.input_dim + 1), np.float32)
        for i, instance in enumerate(instances):
            steps = checked_steps(schema, i, instance)
            pack_steps(inputs[i], encoder.transform(steps))
        return inputs

    def present_attributions(
        self, schema: SiteSchema, attributions: np.ndarray, instance: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Attributions per step the model saw, in time order.

        ``{"steps": [{"time": t, "features": {name: attribution}}, …]}``.
        """
        time = SequenceLayout.of(schema).time
        steps = checked_steps(schema, 0, instance)
        return {
            "steps": [
                {
                    "time": float(t),
                    "features": attributions_by_feature(schema, attributions[j, :-1]),
                }
                for j, t in enumerate(steps[time])
            ]
        }


def checked_steps(schema: SiteSchema, row: int, instance: Mapping[str, Any]) -> pd.DataFrame:
    """One request instance's steps, checked, in time order, the latest ``max_steps``.

    Parameters
    ----------
    schema : SiteSchema
        A sequence schema.
    row : int
        The instance's index in the request, for errors.
    instance : mapping
        ``{"steps": [{...}, …]}``, or one list per column, all of one length.

    Raises
    ------
    RowError
        The instance is malformed, a step's value does not fit, or two steps share a time.
    """
    layout = SequenceLayout.of(schema)
    if not isinstance(instance, Mapping) or not instance:
        raise RowError(row, None, f'expected {{"{STEPS_FIELD}": [{{...}}, ...]}}')
    if set(instance) == {STEPS_FIELD}:
        steps = instance[STEPS_FIELD]
    else:
        # Columnar form, as one tensor per column of shape [n, steps] carries it.
        columns = dict(instance)
        if not all(isinstance(v, list) for v in columns.values()):
            raise RowError(row, None, f'expected {{"{STEPS_FIELD}": [...]}} or lists per column')
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise RowError(row, None, "every column of a series needs the same number of steps")
        steps = [{n: v[j] for n, v in columns.items()} for j in range(lengths.pop())]
    if not isinstance(steps, list) or not steps:
        raise RowError(row, STEPS_FIELD, "expected a non-empty list of measurement objects")
    try:
        frame = check_rows(step_schema(schema), steps)
    except RowError as err:
        where = f"{STEPS_FIELD}[{err.row}]" + (f".{err.feature}" if err.feature else "")
        raise RowError(row, where, err.message) from None
    frame = frame.sort_values(layout.time, kind="stable").reset_index(drop=True)
    repeated = frame[layout.time].duplicated()
    if repeated.any():
        time = frame[layout.time][repeated].iloc[0]
        raise RowError(row, STEPS_FIELD, f"two steps at time {time:g}")
    return frame.iloc[-layout.max_steps :].reset_index(drop=True)
