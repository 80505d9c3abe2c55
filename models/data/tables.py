"""Loading a site's table and checking it against the federation's schema.

Every problem is reported with the file, the row (as a spreadsheet shows it: the header
is row 1) and the column, and what was expected. All problems of a file are collected
before failing, so a data manager can fix them in one pass.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.data.schema import FeatureSpec, SiteSchema

TRUE_WORDS = {"1", "1.0", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "0.0", "false", "no", "n", "f"}
MAX_REPORTED_PROBLEMS = 20


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a site's table."""

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        return f"{', '.join(where)}: {self.message}"


class SiteDataError(ValueError):
    """A site's table does not match the schema. ``problems`` lists every finding."""

    def __init__(self, problems: list[DataProblem]):
        # In file order, as the person fixing the file reads it.
        self.problems = sorted(problems, key=lambda p: p.row or 0)
        problems = self.problems
        shown = "\n".join(f"  - {p}" for p in problems[:MAX_REPORTED_PROBLEMS])
        more = len(problems) - MAX_REPORTED_PROBLEMS
        tail = f"\n  … and {more} more" if more > 0 else ""
        super().__init__(f"{len(problems)} problem(s) in site data:\n{shown}{tail}")


@dataclass
class SiteTable:
    """A checked table: features typed as the schema says, the label as text.

    Parameters
    ----------
    frame : pandas.DataFrame
        The feature columns (schema order) and the label column. Numeric features are
        float (NaN where missing and the policy is ``impute_mean``), categorical ones
        text, binary ones 0.0/1.0.
    source_rows : list[int]
        The file row of each kept row, for messages.
    dropped_rows : list[int]
        File rows dropped under the ``drop_row`` missing-value policy.
    """

    schema: SiteSchema
    path: str
    frame: pd.DataFrame
    source_rows: list[int]
    dropped_rows: list[int]

    @property
    def num_rows(self) -> int:
        """Number of kept rows."""
        return len(self.frame)

    def label_counts(self) -> dict[str, int]:
        """Rows per class, every class of the schema included; empty for regression."""
        if self.schema.task == "regression":
            return {}
        counts = self.frame[self.schema.label].value_counts()
        return {c: int(counts.get(c, 0)) for c in self.schema.classes}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file with every cell as text (CSV) so the checks see the raw value."""
    path = Path(path)
    if not path.is_file():
        raise SiteDataError([DataProblem(str(path), None, None, "file not found")])
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise SiteDataError(
                [DataProblem(str(path), None, None, f"not a readable Parquet file ({err})")]
            ) from err
    if suffix not in (".csv", ".tsv", ".txt"):
        raise SiteDataError(
            [DataProblem(str(path), None, None, "expected a .csv or .parquet file")]
        )
    sep = "\t" if suffix == ".tsv" else ","
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle, delimiter=sep), None)
    except UnicodeDecodeError as err:
        raise SiteDataError(
            [DataProblem(str(path), None, None, "not UTF-8 text; save the file as UTF-8 CSV")]
        ) from err
    if not header or all(not h.strip() for h in header):
        raise SiteDataError([DataProblem(str(path), None, None, "the file is empty")])
    seen: set[str] = set()
    duplicates = []
    for name in header:
        if name in seen:
            duplicates.append(name)
        seen.add(name)
    if duplicates:
        raise SiteDataError(
            [
                DataProblem(str(path), 1, name, "duplicate header: the column appears twice")
                for name in duplicates
            ]
        )
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.ParserError as err:
        raise SiteDataError([DataProblem(str(path), None, None, f"malformed CSV ({err})")]) from err


def load_site_table(
    path: str | Path, schema: SiteSchema, passthrough: Sequence[str] = ()
) -> SiteTable:
    """Read a site's file and check every row against ``schema``.

    ``passthrough`` names more columns that must be present and are copied unchecked, as
    text, into the frame (a patient id, a clinical note): the caller checks them.
    Raises :class:`SiteDataError` listing every problem found.
    """
    path_text = str(path)
    raw = read_table(path)
    problems: list[DataProblem] = []
    expected = [*schema.feature_names, schema.label, *passthrough]
    missing_columns = [c for c in expected if c not in raw.columns]
    for name in missing_columns:
        problems.append(DataProblem(path_text, 1, name, "missing column (declared in the schema)"))
    if problems:
        raise SiteDataError(problems)
    if len(raw) == 0:
        raise SiteDataError([DataProblem(path_text, None, None, "the file has no data rows")])

    file_rows = [i + 2 for i in range(len(raw))]  # header is row 1
    columns: dict[str, list] = {}
    drop: set[int] = set()
    for spec in schema.features:
        values, bad, empty = _check_feature(raw[spec.name].tolist(), spec, path_text, file_rows)
        problems.extend(bad)
        columns[spec.name] = values
        if empty:
            if schema.missing == "reject":
                problems.extend(
                    DataProblem(path_text, file_rows[i], spec.name, "empty cell (missing = reject)")
                    for i in empty
                )
            elif schema.missing == "drop_row" or spec.type != "numeric":
                drop.update(empty)
    labels, bad_labels, empty_labels = _check_label(raw[schema.label].tolist(), schema, path_text)
    problems.extend(bad_labels)
    drop.update(empty_labels)  # a row without its label cannot be used
    if problems:
        raise SiteDataError(problems)

    keep = [i for i in range(len(raw)) if i not in drop]
    if not keep:
        raise SiteDataError([DataProblem(path_text, None, None, "no usable rows left")])
    frame = pd.DataFrame({name: [columns[name][i] for i in keep] for name in columns})
    frame[schema.label] = [labels[i] for i in keep]
    for name in passthrough:
        cells = raw[name].tolist()
        frame[name] = ["" if _is_empty(cells[i]) else str(cells[i]) for i in keep]
    table = SiteTable(
        schema=schema,
        path=path_text,
        frame=frame,
        source_rows=[file_rows[i] for i in keep],
        dropped_rows=sorted(file_rows[i] for i in drop),
    )
    if schema.task != "regression":
        present = [c for c, n in table.label_counts().items() if n > 0]
        if len(present) < 2:
            raise SiteDataError(
                [
                    DataProblem(
                        path_text,
                        None,
                        schema.label,
                        f"the label has one class only ({present[0]!r}); "
                        f"a site needs examples of at least two of {list(schema.classes)}",
                    )
                ]
            )
    return table


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in ("", "NA", "NaN", "nan", "null")


def _check_feature(
    cells: list, spec: FeatureSpec, path: str, rows: list[int]
) -> tuple[list, list[DataProblem], list[int]]:
    values: list = []
    problems: list[DataProblem] = []
    empty: list[int] = []
    for i, cell in enumerate(cells):
        if _is_empty(cell):
            empty.append(i)
            values.append(np.nan if spec.type == "numeric" else None)
            continue
        text = str(cell).strip()
        if spec.type == "numeric":
            try:
                number = float(text)
            except ValueError:
                problems.append(
                    DataProblem(path, rows[i], spec.name, f"expected a number, found {text!r}")
                )
                values.append(np.nan)
                continue
            if not math.isfinite(number):
                problems.append(
                    DataProblem(
                        path, rows[i], spec.name, f"expected a finite number, found {text!r}"
                    )
                )
            elif spec.min is not None and number < spec.min:
                problems.append(
                    DataProblem(
                        path, rows[i], spec.name, f"{number:g} is below the minimum {spec.min:g}"
                    )
                )
            elif spec.max is not None and number > spec.max:
                problems.append(
                    DataProblem(
                        path, rows[i], spec.name, f"{number:g} is above the maximum {spec.max:g}"
                    )
                )
            values.append(number)
        elif spec.type == "binary":
            word = text.lower()
            if word in TRUE_WORDS:
                values.append(1.0)
            elif word in FALSE_WORDS:
                values.append(0.0)
            else:
                problems.append(
                    DataProblem(
                        path, rows[i], spec.name, f"expected 0/1 (or true/false), found {text!r}"
                    )
                )
                values.append(None)
        else:
            if text not in spec.categories:
                problems.append(
                    DataProblem(
                        path,
                        rows[i],
                        spec.name,
                        f"unknown category {text!r}; expected one of {list(spec.categories)}",
                    )
                )
            values.append(text)
    return values, problems, empty


def _canonical_label(text: str) -> str:
    """'1.0' and '1' name the same class."""
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _check_label(
    cells: list, schema: SiteSchema, path: str
) -> tuple[list, list[DataProblem], list[int]]:
    labels: list = []
    problems: list[DataProblem] = []
    empty: list[int] = []
    for i, cell in enumerate(cells):
        row = i + 2
        if _is_empty(cell):
            empty.append(i)
            labels.append(None)
            continue
        text = str(cell).strip()
        if schema.task == "regression":
            try:
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError
            except ValueError:
                problems.append(
                    DataProblem(
                        path, row, schema.label, f"expected a finite number, found {text!r}"
                    )
                )
                value = math.nan
            labels.append(value)
        else:
            canonical = text if text in schema.classes else _canonical_label(text)
            if canonical not in schema.classes:
                problems.append(
                    DataProblem(
                        path,
                        row,
                        schema.label,
                        f"unknown label {text!r}; expected one of {list(schema.classes)}",
                    )
                )
            labels.append(canonical)
    if schema.missing == "reject":
        problems.extend(
            DataProblem(path, i + 2, schema.label, "empty label (missing = reject)") for i in empty
        )
    return labels, problems, empty
