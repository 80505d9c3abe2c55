"""Clinical notes: a table with one free-text column, classified by feature hashing.

Schema keys (``[dataset]``): ``kind = "text"``, ``text`` (the notes column),
``n_features`` (hash buckets, default 1024), ``ngram_max`` (word n-grams up to this
length, default 2), ``task`` (binary or multiclass), ``label``, ``classes``. No
``[features]``.

Notes are hashed at each site with the same fixed function (:class:`models.text.TextHasher`),
so no vocabulary, and no word, ever leaves a site; the federation pools only the class
counts. A request instance is ``{"<text column>": "…note…"}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.data.features import FeatureEncoder, FeatureStatistics, Standardization
from models.data.kinds.base import (
    EncodedExamples,
    ModelInput,
    RowError,
    column_option,
    integer_option,
)
from models.data.schema import SchemaError, SiteSchema
from models.data.tables import (
    TABLE_FILE,
    TABLE_SUFFIXES,
    DataProblem,
    SiteDataError,
    SiteTable,
    load_site_table,
)
from models.text import TextHasher

MAX_NOTE_CHARS = 100_000


def hasher_of(schema: SiteSchema) -> TextHasher:
    """The hashing settings a text schema declares."""
    return TextHasher(
        n_features=integer_option(schema, "n_features", 1024, 2),
        ngram_max=integer_option(schema, "ngram_max", 2, 1),
    )


@dataclass
class NoteExamples:
    """A site's checked notes (``table.frame`` holds the label and the notes column)."""

    schema: SiteSchema
    table: SiteTable

    @property
    def dropped_rows(self) -> list[int]:
        """File rows dropped for a missing value."""
        return self.table.dropped_rows

    @property
    def num_examples(self) -> int:
        """Number of notes."""
        return self.table.num_rows

    def strata(self) -> np.ndarray | None:
        """Each note's label: splits are stratified by class."""
        return self.table.frame[self.schema.label].to_numpy()

    def statistics(self, index: np.ndarray) -> FeatureStatistics:
        """The class counts of the notes at ``index``; nothing of the text."""
        labels = self.table.frame[self.schema.label].iloc[index].tolist()
        return FeatureStatistics.of_values({}, labels=labels, rows=len(index))

    def encode(self, index: np.ndarray, standardization: Standardization) -> EncodedExamples:
        """The notes at ``index`` hashed into ``n_features`` buckets, and class indices."""
        frame = self.table.frame.iloc[index]
        notes = frame[column_option(self.schema, "text")].tolist()
        targets = FeatureEncoder(self.schema, standardization).labels(frame)
        return EncodedExamples(hasher_of(self.schema).transform(notes), targets)


class TextKind:
    """Clinical notes; see the module docstring."""

    name = "text"
    tasks: tuple[str, ...] = ("binary", "multiclass")
    keys: tuple[str, ...] = ("text", "n_features", "ngram_max")
    sources = f"{TABLE_FILE} (one row per note)"

    def check_schema(self, schema: SiteSchema) -> None:
        """Check ``text``, ``n_features``, ``ngram_max``, and that there are no features."""
        column_option(schema, "text")
        hasher_of(schema)
        if schema.features:
            raise SchemaError(f"{schema.source}: text data takes no [features] tables")

    def is_site_source(self, path: Path) -> bool:
        """Whether ``path`` is a table file (CSV or Parquet)."""
        return path.is_file() and path.suffix.lower() in TABLE_SUFFIXES

    def load(self, path: Path, schema: SiteSchema) -> NoteExamples:
        """Read and check the notes table; an empty note is a ``SiteDataError``."""
        column = column_option(schema, "text")
        table = load_site_table(path, replace(schema, extra={}), passthrough=[column])
        problems = [
            DataProblem(str(path), row, column, "empty note")
            for row, note in zip(table.source_rows, table.frame[column], strict=True)
            if not note.strip()
        ]
        if problems:
            raise SiteDataError(problems)
        return NoteExamples(schema, table)

    def families(self, schema: SiteSchema) -> tuple[str, ...]:
        """Logistic regression (the default) and MLP over the hashed terms."""
        return ("logreg", "mlp")

    def model_input(self, schema: SiteSchema) -> ModelInput:
        """``n_features`` inputs (the hash buckets); no options."""
        return ModelInput(hasher_of(schema).n_features)

    def encode_request(
        self,
        schema: SiteSchema,
        standardization: Standardization,
        instances: Sequence[Mapping[str, Any]],
    ) -> np.ndarray:
        """Instances ``{"<text column>": note}`` hashed (``MAX_NOTE_CHARS`` at most each)."""
        column = column_option(schema, "text")
        notes = []
        for i, instance in enumerate(instances):
            if not isinstance(instance, Mapping) or set(instance) != {column}:
                raise RowError(i, None, f'expected {{"{column}": "<note>"}}')
            note = instance[column]
            if not isinstance(note, str) or not note.strip():
                raise RowError(i, column, "expected a non-empty note (text)")
            if len(note) > MAX_NOTE_CHARS:
                raise RowError(i, column, f"longer than {MAX_NOTE_CHARS} characters")
            notes.append(note)
        return hasher_of(schema).transform(notes)

    def present_attributions(
        self, schema: SiteSchema, attributions: np.ndarray, instance: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``{"terms": {term: attribution}}``, largest effect first.

        A bucket's attribution is shared equally by the note's terms that hash into it, so
        the terms add up to the total.
        """
        terms = hasher_of(schema).terms(instance[column_option(schema, "text")])
        sharing: dict[int, int] = {}
        for bucket in terms.values():
            sharing[bucket] = sharing.get(bucket, 0) + 1
        values = {t: float(attributions[b]) / sharing[b] for t, b in terms.items()}
        return {"terms": dict(sorted(values.items(), key=lambda kv: -abs(kv[1])))}
