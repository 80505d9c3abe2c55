"""Data-quality warnings of a site's table: counts by column, never a value.

``fedcare site check`` prints them beside the problems the loader finds. They are not
errors (the file may be right): a column holding one value throughout, cells that look
like a missing-value code the schema does not declare (``-999``, ``9999``, ``?`` …), and
numbers far outside the feature's declared range (beyond it by more than its width: a
unit mistake, or a code). Each warning names the column and counts the cells; the codes
it looks for are this module's fixed list, not the file's cells.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models.data.schema import FeatureSpec, SiteSchema
from models.data.tables import TABLE_SUFFIXES, SiteDataError, read_table
from models.data.values import NUMBER, MissingValues

# Values that often stand for "missing" in hospital exports.
SUSPECT_NUMBERS = frozenset({-9.0, -99.0, -999.0, -9999.0, 999.0, 9999.0, 99999.0})
SUSPECT_WORDS = frozenset(
    {"?", "-", "--", ".", "n/a", "#n/a", "none", "missing", "unknown", "unk", "nd"}
)


@dataclass(frozen=True)
class QualityWarning:
    """One data-quality finding of a column.

    Parameters
    ----------
    column : str
        A column the schema declares.
    kind : str
        ``constant_column``, ``missing_code`` or ``far_out_of_range``.
    count : int
        How many cells.
    message : str
        What it may mean, with no cell's value.
    """

    column: str
    kind: str
    count: int
    message: str

    def __str__(self) -> str:
        return f"column '{self.column}': {self.message}"


def quality_warnings(path: Path, schema: SiteSchema) -> list[QualityWarning]:
    """The data-quality warnings of a table file (none for other kinds of data).

    Parameters
    ----------
    path : Path
        The site's file.
    schema : SiteSchema
        The federation's schema.
    """
    if not (path.is_file() and path.suffix.lower() in TABLE_SUFFIXES):
        return []
    try:
        raw = read_table(path)
    except SiteDataError:
        return []  # the loader's problems say why
    missing = schema.missing_values
    warnings: list[QualityWarning] = []
    for spec in schema.features:
        if spec.name in raw.columns:
            warnings.extend(_column_warnings(raw[spec.name], spec, missing))
    return warnings


def _column_warnings(
    column: pd.Series, spec: FeatureSpec, missing: MissingValues
) -> Iterator[QualityWarning]:
    cells = [c for c in column.tolist() if not missing.is_missing(c, spec.categories)]
    texts = [str(c).strip() for c in cells]
    if len(texts) >= 2 and len(set(texts)) == 1:
        yield QualityWarning(
            spec.name,
            "constant_column",
            len(texts),
            f"all {len(texts)} filled cells hold one value: the column tells the model nothing",
        )
    codes = sum(1 for text in texts if _looks_like_code(text, spec))
    if codes:
        yield QualityWarning(
            spec.name,
            "missing_code",
            codes,
            f"{codes} cell(s) look like a missing-value code (such as -999, 9999 or ?); "
            "if they mean missing, list them in [dataset].missing_values",
        )
    if spec.type == "numeric" and spec.min is not None and spec.max is not None:
        width = spec.max - spec.min
        far = sum(
            1
            for text in texts
            if NUMBER.fullmatch(text) and not spec.min - width <= float(text) <= spec.max + width
        )
        if far:
            yield QualityWarning(
                spec.name,
                "far_out_of_range",
                far,
                f"{far} value(s) far outside the declared range [{spec.min:g}, {spec.max:g}] "
                "(beyond it by more than its width): another unit, or a code?",
            )


def _looks_like_code(text: str, spec: FeatureSpec) -> bool:
    """Whether a filled cell looks like a missing-value code its column does not declare."""
    if text in spec.categories:
        return False
    if text.casefold() in SUSPECT_WORDS:
        return True
    return bool(NUMBER.fullmatch(text)) and float(text) in SUSPECT_NUMBERS
