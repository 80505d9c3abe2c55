"""Tables: one row per patient, typed columns (CSV or Parquet).

Read and checked by :mod:`models.data.tables`.

Tasks: binary, multiclass, regression, and survival (``label`` is the follow-up time,
``[dataset].event`` the column that is 1 for an observed event, 0 for censoring).
Numeric features are standardized with the federation's pooled means and deviations,
categorical ones one-hot encoded (:class:`models.data.features.FeatureEncoder`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.data.features import FeatureEncoder, FeatureStatistics, Standardization
from models.data.kinds.base import EncodedExamples, ModelInput, RowError, column_option
from models.data.schema import FeatureSpec, SchemaError, SiteSchema
from models.data.tables import (
    TABLE_FILE,
    TABLE_SUFFIXES,
    DataProblem,
    SiteDataError,
    SiteTable,
    load_site_table,
)
from models.data.values import ValueRefused


def check_rows(schema: SiteSchema, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Check request rows against the schema's features and return them as a typed frame.

    Every declared feature must be present with a value its rule reads
    (:mod:`models.data.values`, exactly as training reads a cell); a missing value is
    refused (a prediction imputes nothing); extra keys are refused (a misspelt feature
    name would otherwise be silently ignored).

    Parameters
    ----------
    schema : SiteSchema
        The schema whose features the rows hold.
    rows : sequence of mapping
        The request's rows, feature name to value.

    Returns
    -------
    DataFrame
        One column per feature: numbers and 0/1 as float, categories as str.

    Raises
    ------
    RowError
        The first row and feature that do not fit.
    """
    names = schema.feature_names
    missing = schema.missing_values
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise RowError(i, None, "expected an object of feature values")
        unknown = sorted(set(row) - set(names))
        if unknown:
            raise RowError(i, unknown[0], "unknown feature (not in the model's schema)")
        for spec in schema.features:
            value = row.get(spec.name)
            if missing.is_missing(value, spec.categories):
                raise RowError(i, spec.name, "missing value")
            try:
                columns[spec.name].append(spec.rule.read(value))
            except ValueRefused as refused:
                raise RowError(i, spec.name, str(refused)) from None
    return pd.DataFrame(columns)


def survival_row_schema(schema: SiteSchema) -> SiteSchema:
    """How a survival table's rows are checked.

    The follow-up time is checked as a regression label, the event column as a binary
    feature beside the others.

    Parameters
    ----------
    schema : SiteSchema
        A survival table schema (``[dataset].event`` set).
    """
    event = FeatureSpec(name=str(schema.extra["event"]), type="binary")
    return replace(schema, task="regression", features=(*schema.features, event), extra={})


@dataclass
class TableExamples:
    """A checked site table; one example per row.

    Parameters
    ----------
    schema : SiteSchema
        The federation's schema.
    table : SiteTable
        The site's checked rows.
    """

    schema: SiteSchema
    table: SiteTable

    @property
    def frame(self) -> pd.DataFrame:
        """The table's typed rows."""
        return self.table.frame

    @property
    def num_examples(self) -> int:
        """Number of rows."""
        return self.table.num_rows

    @property
    def dropped_rows(self) -> list[int]:
        """File rows dropped for a missing value."""
        return self.table.dropped_rows

    def strata(self) -> np.ndarray | None:
        """The label (classification) or event column (survival); None for regression."""
        if self.schema.task == "survival":
            return self.frame[self.schema.extra["event"]].to_numpy()
        if self.schema.task == "regression":
            return None
        return self.frame[self.schema.label].to_numpy()

    def statistics(self, index: np.ndarray) -> FeatureStatistics:
        """Statistics of the rows at ``index``: numeric features (and regression label)."""
        return FeatureStatistics.of_frame(self.frame.iloc[index], self.schema)

    def encode(self, index: np.ndarray, standardization: Standardization) -> EncodedExamples:
        """The rows at ``index`` encoded; survival targets are ``[time, event]`` rows."""
        frame = self.frame.iloc[index]
        encoder = FeatureEncoder(self.schema, standardization)
        if self.schema.task == "survival":
            time = frame[self.schema.label].to_numpy(dtype=np.float32)
            event = frame[self.schema.extra["event"]].to_numpy(dtype=np.float32)
            targets = np.stack([time, event], axis=1)
        else:
            targets = encoder.labels(frame)
        return EncodedExamples(encoder.transform(frame), targets)


class TableKind:
    """Site tables (the default kind)."""

    name = "table"
    tasks: tuple[str, ...] = ("binary", "multiclass", "regression", "survival")
    keys: tuple[str, ...] = ("event",)
    sources = TABLE_FILE

    def check_schema(self, schema: SiteSchema) -> None:
        """Check that features are declared, and ``event`` for survival."""
        if not schema.features:
            raise SchemaError(f"{schema.source}: missing [features.<name>] tables")
        if schema.task == "survival":
            column_option(schema, "event")

    def is_site_source(self, path: Path) -> bool:
        """Whether ``path`` is a table file (CSV or Parquet)."""
        return path.is_file() and path.suffix.lower() in TABLE_SUFFIXES

    def load(self, path: Path, schema: SiteSchema) -> TableExamples:
        """Read and check a table; survival also refuses negative follow-up times."""
        if schema.task != "survival":
            return TableExamples(schema, load_site_table(path, schema))
        table = load_site_table(path, survival_row_schema(schema))
        times = table.frame[schema.label].to_numpy(dtype=float)
        problems = [
            DataProblem(str(path), row, schema.label, f"follow-up time {t:g} is negative")
            for row, t in zip(table.source_rows, times, strict=True)
            if t < 0
        ]
        if problems:
            raise SiteDataError(problems)
        return TableExamples(schema, table)

    def families(self, schema: SiteSchema) -> tuple[str, ...]:
        """Cox linear and Cox MLP for survival; else logistic regression and MLP."""
        return ("cox_linear", "cox_mlp") if schema.task == "survival" else ("logreg", "mlp")

    def model_input(self, schema: SiteSchema) -> ModelInput:
        """The encoded row's width (one-hot categories included); no options."""
        return ModelInput(FeatureEncoder(schema, Standardization({}, {})).input_dim)

    def encode_request(
        self,
        schema: SiteSchema,
        standardization: Standardization,
        instances: Sequence[Mapping[str, Any]],
    ) -> np.ndarray:
        """Request rows checked with :func:`check_rows` and encoded."""
        return FeatureEncoder(schema, standardization).transform(check_rows(schema, instances))

    def present_attributions(
        self, schema: SiteSchema, attributions: np.ndarray, instance: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``{"features": {name: attribution}}``."""
        return {"features": attributions_by_feature(schema, attributions.reshape(-1))}


def attributions_by_feature(schema: SiteSchema, values: np.ndarray) -> dict[str, float]:
    """An encoded row's per-column attributions summed per schema feature.

    A categorical feature's one-hot columns add up to one number.

    Parameters
    ----------
    schema : SiteSchema
        The schema the row was encoded with.
    values : ndarray
        One attribution per encoded column, in encoding order.
    """
    owners = [
        spec.name
        for spec in schema.features
        for _ in (spec.categories if spec.type == "categorical" else (spec.name,))
    ]
    per_feature = dict.fromkeys(schema.feature_names, 0.0)
    for name, value in zip(owners, values, strict=True):
        per_feature[name] += float(value)
    return per_feature
