"""What every kind of site data (tables, images, sequences, notes) provides.

A federation's schema names its data kind (``[dataset] kind = "image"``; ``table`` when
absent). The kind is the one place that knows how that data looks:

- which schema keys it needs (:meth:`DataKind.check_schema`),
- which files or folders hold a site's data (:meth:`DataKind.is_site_source`),
- how to read and validate them, naming file, row and field of every problem
  (:meth:`DataKind.load`, which returns :class:`SiteExamples`),
- the additive statistics a federation pools for preprocessing and how examples become
  tensors (:meth:`SiteExamples.statistics`, :meth:`SiteExamples.encode`),
- the model's input width and shape options, and which model families fit
  (:meth:`DataKind.model_input`, :meth:`DataKind.families`),
- how an inference request's instances are checked and encoded
  (:meth:`DataKind.encode_request`) and how attributions are shown
  (:meth:`DataKind.present_attributions`).

The ClientApp, the coordinator, the simulation and the inference service all go through
this interface. The implementations (``table``, ``image``, ``sequence``, ``text``) import
only this module; ``models.data.kinds.registry`` imports them and finds a schema's kind,
so a new kind of data is one new module here and one line in the registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.data.features import FeatureStatistics, Standardization
from models.data.schema import SchemaError, SiteSchema

DEFAULT_KIND = "table"


class RowError(ValueError):
    """A request instance does not match the schema; ``row`` and ``feature`` say where."""

    def __init__(self, row: int, feature: str | None, message: str):
        self.row = row
        self.feature = feature
        self.message = message
        where = f"row {row}" + (f", feature '{feature}'" if feature else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class EncodedExamples:
    """Model-ready examples.

    Parameters
    ----------
    inputs : ndarray
        float32, one entry per example along axis 0 (its shape depends on the kind).
    targets : ndarray
        Class indices (int64), standardized values (regression, float32) or
        ``[time, event]`` rows (survival, float32).
    """

    inputs: np.ndarray
    targets: np.ndarray


@dataclass(frozen=True)
class ModelInput:
    """What a kind tells the model builder.

    Parameters
    ----------
    input_dim : int
        The :class:`models.spec.ModelSpec` ``input_dim``.
    options : dict
        Shape options the family needs (image size, sequence length …).
    """

    input_dim: int
    options: dict[str, Any] = field(default_factory=dict)


class SiteExamples(Protocol):
    """A site's checked data, as a kind loaded it."""

    @property
    def num_examples(self) -> int:
        """Number of examples (rows, images, patients, notes)."""

    @property
    def dropped_rows(self) -> list[int]:
        """File rows dropped for a missing value (``missing = drop_row`` …), for the report."""

    def strata(self) -> np.ndarray | None:
        """One label per example to stratify the train/validation split on, or None."""

    def statistics(self, index: np.ndarray) -> FeatureStatistics:
        """Additive statistics of the examples at ``index`` (what the site shares)."""

    def encode(self, index: np.ndarray, standardization: Standardization) -> EncodedExamples:
        """The examples at ``index`` as tensors, scaled with the federation's statistics."""


class DataKind(Protocol):
    """One kind of site data; see the module docstring."""

    name: str
    tasks: tuple[str, ...]
    # the kind's own [dataset] keys (any other key is refused)
    keys: tuple[str, ...]
    # what a site's source in a --data-dir is, for messages ("a .csv, .tsv or .parquet file")
    sources: str

    def check_schema(self, schema: SiteSchema) -> None:
        """Raise :class:`SchemaError` naming the key this kind needs and does not find."""

    def is_site_source(self, path: Path) -> bool:
        """Whether ``path`` (file or folder in a ``--data-dir``) holds a site's data."""

    def load(self, path: Path, schema: SiteSchema) -> SiteExamples:
        """Read and check a site's data; raises ``SiteDataError`` listing every problem."""

    def families(self, schema: SiteSchema) -> tuple[str, ...]:
        """Model families that fit this data, the default first."""

    def model_input(self, schema: SiteSchema) -> ModelInput:
        """The model's input width and shape options."""

    def encode_request(
        self,
        schema: SiteSchema,
        standardization: Standardization,
        instances: Sequence[Mapping[str, Any]],
    ) -> np.ndarray:
        """Check request instances and encode them; raises :class:`RowError`."""

    def present_attributions(
        self, schema: SiteSchema, attributions: np.ndarray, instance: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One instance's attributions (shaped like its encoded input) as JSON-able values."""


def integer_option(schema: SiteSchema, key: str, default: int, minimum: int) -> int:
    """An integer ``[dataset]`` key of a kind, checked (``SchemaError`` names the key)."""
    value = schema.extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SchemaError(
            f"{schema.source}: [dataset].{key} is {value!r}, expected an integer >= {minimum}"
        )
    return value


def column_option(schema: SiteSchema, key: str) -> str:
    """A ``[dataset]`` key naming a column, required by a kind."""
    value = schema.extra.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(f"{schema.source}: [dataset] needs '{key}' (the column's name)")
    if value == schema.label or value in schema.feature_names:
        raise SchemaError(
            f"{schema.source}: [dataset].{key} '{value}' is also the label or a feature"
        )
    return value
