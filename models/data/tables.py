"""Loading a site's table and checking it against the federation's schema.

Every problem is reported with the file, the row (as a spreadsheet shows it: the header
is row 1) and the column, and what was expected. All problems of a file are collected
before failing, so a data manager can fix them in one pass.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

from models.data.schema import FeatureSpec, SiteSchema

TRUE_WORDS = {"1", "1.0", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "0.0", "false", "no", "n", "f"}
MAX_REPORTED_PROBLEMS = 20
# A public summary lists at most this many rows per kind of problem.
MAX_PUBLIC_ROWS = 5
# Cells read as missing. A declared category (e.g. ``NA``) is never missing in its column.
EMPTY_WORDS = frozenset({"", "NA", "NaN", "nan", "null"})
# A decimal number as a spreadsheet writes it: Python's ``1_20`` or ``0x10`` are not.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.I)


class ProblemKind(StrEnum):
    """What is wrong, as a word from a closed vocabulary (safe to send off the site)."""

    FILE_NOT_FOUND = "file_not_found"
    WRONG_FILE_TYPE = "wrong_file_type"
    NOT_UTF8 = "not_utf8"
    UNREADABLE_FILE = "unreadable_file"
    MALFORMED_ROW = "malformed_row"
    EMPTY_FILE = "empty_file"
    NO_DATA_ROWS = "no_data_rows"
    NO_USABLE_ROWS = "no_usable_rows"
    MISSING_COLUMN = "missing_column"
    DUPLICATE_HEADER = "duplicate_header"
    NOT_A_NUMBER = "not_a_number"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    NOT_BINARY = "not_binary"
    UNKNOWN_CATEGORY = "unknown_category"
    UNKNOWN_LABEL = "unknown_label"
    EMPTY_CELL = "empty_cell"
    ONE_CLASS = "one_class"
    OTHER = "other"


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a site's table.

    Parameters
    ----------
    file : str
        The site's file (stays at the site).
    row : int or None
        The file row, counted as a person counts lines (the header is row 1).
    column : str or None
        The column's header as the file writes it (may be a cell value when the file has
        no header row, so it stays at the site unless the schema declares it).
    message : str
        What was found and what was expected (may quote a cell; stays at the site).
    kind : ProblemKind
        The problem as a word of the closed vocabulary that :func:`public_summary` sends.
    """

    file: str
    row: int | None
    column: str | None
    message: str
    kind: ProblemKind = ProblemKind.OTHER

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


def public_summary(problems: Sequence[DataProblem], declared: Iterable[str]) -> str:
    """The problems in words that reveal no cell value, identifier or file name.

    Only problem kinds, counts and row numbers, and a column's name when the schema
    declares it (a header that is not the schema's may be a patient's value), e.g.
    ``4 problem(s): 3 × not_a_number in column 'age' (rows 4, 9, 12), 1 × duplicate_header``.

    Parameters
    ----------
    problems : sequence of DataProblem
        What loading found.
    declared : iterable of str
        The column names the schema itself declares (public to the federation).
    """
    public = set(declared)
    groups: dict[tuple[ProblemKind, str | None], list[int | None]] = {}
    for problem in problems:
        column = problem.column if problem.column in public else None
        groups.setdefault((ProblemKind(problem.kind), column), []).append(problem.row)
    parts = []
    for (kind, column), rows in groups.items():
        text = f"{len(rows)} × {kind.value}"
        if column is not None:
            text += f" in column '{column}'"
        numbers = sorted({r for r in rows if r is not None})
        if numbers:
            shown = ", ".join(str(r) for r in numbers[:MAX_PUBLIC_ROWS])
            more = ", …" if len(numbers) > MAX_PUBLIC_ROWS else ""
            text += f" ({'row' if len(numbers) == 1 else 'rows'} {shown}{more})"
        parts.append(text)
    return f"{len(problems)} problem(s): {', '.join(parts)}"


def schema_columns(schema: SiteSchema) -> list[str]:
    """Every column name a schema declares: features, label and its kind's named columns.

    Parameters
    ----------
    schema : SiteSchema
        The federation's schema.
    """
    named = [v for v in schema.extra.values() if isinstance(v, str)]
    return [*schema.feature_names, schema.label, *named]


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
    """Read a CSV or Parquet file, every CSV cell as text, indexed by file row.

    The index is each row's line number as a person counts lines (the header is row 1,
    blank lines count), so messages point at the line an editor shows.

    Parameters
    ----------
    path : str or Path
        A ``.csv``, ``.tsv``, ``.txt`` or ``.parquet`` file.

    Raises
    ------
    SiteDataError
        The file is missing, of another type, not UTF-8 (naming the line), not
        readable, empty, or its header repeats a name.
    """
    path = Path(path)
    if not path.is_file():
        raise SiteDataError(
            [DataProblem(str(path), None, None, "file not found", ProblemKind.FILE_NOT_FOUND)]
        )
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise SiteDataError(
                [
                    DataProblem(
                        str(path),
                        None,
                        None,
                        f"not a readable Parquet file ({err})",
                        ProblemKind.UNREADABLE_FILE,
                    )
                ]
            ) from err
        _check_header(str(path), [str(c) for c in frame.columns])
        frame.index = pd.RangeIndex(2, len(frame) + 2)
        return frame
    if suffix not in (".csv", ".tsv", ".txt"):
        raise SiteDataError(
            [
                DataProblem(
                    str(path),
                    None,
                    None,
                    "expected a .csv or .parquet file",
                    ProblemKind.WRONG_FILE_TYPE,
                )
            ]
        )
    return _read_csv(path, "\t" if suffix == ".tsv" else ",")


def _read_csv(path: Path, sep: str) -> pd.DataFrame:
    """The csv module rather than pandas: pandas skips blank lines and loses line numbers."""
    records: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=sep)
        try:
            for record in reader:
                if header is None:
                    header = record
                elif record:  # a blank line is counted but holds no row
                    records.append(record)
                    lines.append(reader.line_num)
        except UnicodeDecodeError as err:
            problem = DataProblem(
                str(path),
                _first_undecodable_line(path),
                None,
                "not UTF-8 text; save the file as UTF-8 CSV",
                ProblemKind.NOT_UTF8,
            )
            raise SiteDataError([problem]) from err
        except csv.Error as err:
            problem = DataProblem(
                str(path),
                reader.line_num,
                None,
                f"malformed CSV ({err})",
                ProblemKind.MALFORMED_ROW,
            )
            raise SiteDataError([problem]) from err
    if not header or all(not h.strip() for h in header):
        raise SiteDataError(
            [DataProblem(str(path), None, None, "the file is empty", ProblemKind.EMPTY_FILE)]
        )
    _check_header(str(path), header)
    width = len(header)
    too_long = [
        DataProblem(
            str(path),
            line,
            None,
            f"{len(record)} fields, the header has {width}",
            ProblemKind.MALFORMED_ROW,
        )
        for record, line in zip(records, lines, strict=True)
        if len(record) > width
    ]
    if too_long:
        raise SiteDataError(too_long)
    # a short row is padded with empty cells, which the missing-value policy then judges
    padded = [record + [""] * (width - len(record)) for record in records]
    return pd.DataFrame(padded, columns=header, index=pd.Index(lines), dtype=str)


def _first_undecodable_line(path: Path) -> int:
    """The line holding the first byte that is not UTF-8.

    Text is decoded in chunks, so the csv reader's own line count is already past it.
    """
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _check_header(path: str, header: list[str]) -> None:
    counts = Counter(header)
    duplicates = [name for name, n in counts.items() if n > 1]
    if duplicates:
        raise SiteDataError(
            [
                DataProblem(
                    path,
                    1,
                    name,
                    "duplicate header: the column appears twice",
                    ProblemKind.DUPLICATE_HEADER,
                )
                for name in duplicates
            ]
        )


def load_site_table(
    path: str | Path, schema: SiteSchema, passthrough: Sequence[str] = ()
) -> SiteTable:
    """Read a site's file and check every row against ``schema``.

    Parameters
    ----------
    path : str or Path
        The site's CSV or Parquet file.
    schema : SiteSchema
        The federation's schema.
    passthrough : sequence of str
        More columns that must be present and are copied unchecked, as text, into the
        frame (a patient id, a clinical note): the caller checks them.

    Raises
    ------
    SiteDataError
        Listing every problem found.
    """
    path_text = str(path)
    raw = read_table(path)
    problems: list[DataProblem] = []
    expected = [*schema.feature_names, schema.label, *passthrough]
    missing_columns = [c for c in expected if c not in raw.columns]
    for name in missing_columns:
        problems.append(
            DataProblem(
                path_text,
                1,
                name,
                "missing column (declared in the schema)",
                ProblemKind.MISSING_COLUMN,
            )
        )
    if problems:
        raise SiteDataError(problems)
    if len(raw) == 0:
        raise SiteDataError(
            [
                DataProblem(
                    path_text, None, None, "the file has no data rows", ProblemKind.NO_DATA_ROWS
                )
            ]
        )

    file_rows = [int(r) for r in raw.index]  # as a person counts lines: header is row 1
    columns: dict[str, list] = {}
    drop: set[int] = set()
    for spec in schema.features:
        values, bad, empty = _check_feature(raw[spec.name].tolist(), spec, path_text, file_rows)
        problems.extend(bad)
        columns[spec.name] = values
        if empty:
            if schema.missing == "reject":
                problems.extend(
                    DataProblem(
                        path_text,
                        file_rows[i],
                        spec.name,
                        "empty cell (missing = reject)",
                        ProblemKind.EMPTY_CELL,
                    )
                    for i in empty
                )
            elif schema.missing == "drop_row" or spec.type != "numeric":
                drop.update(empty)
    labels, bad_labels, empty_labels = _check_label(
        raw[schema.label].tolist(), schema, path_text, file_rows
    )
    problems.extend(bad_labels)
    drop.update(empty_labels)  # a row without its label cannot be used
    if problems:
        raise SiteDataError(problems)

    keep = [i for i in range(len(raw)) if i not in drop]
    if not keep:
        raise SiteDataError(
            [DataProblem(path_text, None, None, "no usable rows left", ProblemKind.NO_USABLE_ROWS)]
        )
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
                        ProblemKind.ONE_CLASS,
                    )
                ]
            )
    return table


def _is_empty(value: object, declared: Sequence[str] = ()) -> bool:
    """Whether a cell is missing; a word the schema declares as a value never is."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text in EMPTY_WORDS and text not in declared


def parse_number(text: str) -> float:
    """A number as a spreadsheet writes it (``1.5``, ``-2e3``); ``1_20`` is not one.

    Parameters
    ----------
    text : str
        The cell's text.

    Raises
    ------
    ValueError
        ``text`` is not a decimal number (``inf`` and ``nan`` are read, to be refused as
        not finite).
    """
    if not _NUMBER.fullmatch(text.strip()):
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def _check_feature(
    cells: list, spec: FeatureSpec, path: str, rows: list[int]
) -> tuple[list, list[DataProblem], list[int]]:
    values: list = []
    problems: list[DataProblem] = []
    empty: list[int] = []
    for i, cell in enumerate(cells):
        if _is_empty(cell, spec.categories):
            empty.append(i)
            values.append(np.nan if spec.type == "numeric" else None)
            continue
        text = str(cell).strip()
        if spec.type == "numeric":
            try:
                number = parse_number(text)
            except ValueError:
                problems.append(
                    DataProblem(
                        path,
                        rows[i],
                        spec.name,
                        f"expected a number, found {text!r}",
                        ProblemKind.NOT_A_NUMBER,
                    )
                )
                values.append(np.nan)
                continue
            problem = _range_problem(number, text, spec.min, spec.max)
            if problem is not None:
                problems.append(DataProblem(path, rows[i], spec.name, *problem))
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
                        path,
                        rows[i],
                        spec.name,
                        f"expected 0/1 (or true/false), found {text!r}",
                        ProblemKind.NOT_BINARY,
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
                        ProblemKind.UNKNOWN_CATEGORY,
                    )
                )
            values.append(text)
    return values, problems, empty


def _range_problem(
    number: float, text: str, low: float | None, high: float | None
) -> tuple[str, ProblemKind] | None:
    """Why ``number`` is refused (not finite, or outside ``[low, high]``), or None."""
    if not math.isfinite(number):
        return f"expected a finite number, found {text!r}", ProblemKind.NOT_FINITE
    if low is not None and number < low:
        return f"{number:g} is below the minimum {low:g}", ProblemKind.OUT_OF_RANGE
    if high is not None and number > high:
        return f"{number:g} is above the maximum {high:g}", ProblemKind.OUT_OF_RANGE
    return None


def _canonical_label(text: str) -> str:
    """'1.0' and '1' name the same class."""
    try:
        number = parse_number(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _check_label(
    cells: list, schema: SiteSchema, path: str, rows: list[int]
) -> tuple[list, list[DataProblem], list[int]]:
    labels: list = []
    problems: list[DataProblem] = []
    empty: list[int] = []
    low, high = schema.label_range
    for i, cell in enumerate(cells):
        if _is_empty(cell, schema.classes):
            empty.append(i)
            labels.append(None)
            continue
        text = str(cell).strip()
        if schema.task == "regression":
            try:
                value = parse_number(text)
            except ValueError:
                problems.append(
                    DataProblem(
                        path,
                        rows[i],
                        schema.label,
                        f"expected a number, found {text!r}",
                        ProblemKind.NOT_A_NUMBER,
                    )
                )
                value = math.nan
            else:
                problem = _range_problem(value, text, low, high)
                if problem is not None:
                    problems.append(DataProblem(path, rows[i], schema.label, *problem))
            labels.append(value)
        else:
            canonical = text if text in schema.classes else _canonical_label(text)
            if canonical not in schema.classes:
                problems.append(
                    DataProblem(
                        path,
                        rows[i],
                        schema.label,
                        f"unknown label {text!r}; expected one of {list(schema.classes)}",
                        ProblemKind.UNKNOWN_LABEL,
                    )
                )
            labels.append(canonical)
    if schema.missing == "reject":
        problems.extend(
            DataProblem(
                path,
                rows[i],
                schema.label,
                "empty label (missing = reject)",
                ProblemKind.EMPTY_CELL,
            )
            for i in empty
        )
    return labels, problems, empty
