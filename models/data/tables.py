"""Loading a site's table and checking it against the federation's schema.

Every problem is reported with the file, the row (as a spreadsheet shows it: the header
is row 1) and the column, and what was expected. All problems of a file are collected
before failing, so a data manager can fix them in one pass.
"""

from __future__ import annotations

import csv
import difflib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import pandas as pd

from models.data.schema import SiteSchema
from models.data.values import MissingValues, ValueRefused, ValueRule

MAX_REPORTED_PROBLEMS = 20
# A public summary lists at most this many rows per kind of problem.
MAX_PUBLIC_ROWS = 5


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
    DUPLICATE_SITE = "duplicate_site"
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


# The table files a site may bring, and the delimiter of each text format.
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
TABLE_FILE = "a .csv, .tsv or .parquet file"
_DELIMITERS = {".csv": ",", ".tsv": "\t"}
# A one-field header holding one of these was written with another delimiter.
_SEPARATORS = {
    ";": ("semicolons", "save the file as comma-separated CSV"),
    "\t": ("tabs", "name a tab-separated file .tsv, or save it as comma-separated CSV"),
    "|": ("vertical bars", "save the file as comma-separated CSV"),
    ",": ("commas", "name a comma-separated file .csv"),
}


@dataclass(frozen=True)
class RawTable:
    """A table file's rows as read, before the schema's checks.

    Parameters
    ----------
    frame : pandas.DataFrame
        The rows, indexed by file row; every CSV cell as text.
    problems : list of DataProblem
        Rows that could not be read (more fields than the header), left out of ``frame``.
    """

    frame: pd.DataFrame
    problems: list[DataProblem]


def read_table(path: str | Path, expected: Sequence[str] = ()) -> pd.DataFrame:
    """Read a table file whole (see :func:`read_raw_table`); any unreadable row is an error.

    Parameters
    ----------
    path : str or Path
        A ``.csv``, ``.tsv`` (tab-separated) or ``.parquet`` file.
    expected : sequence of str
        The columns the caller needs (see :func:`read_raw_table`).

    Raises
    ------
    SiteDataError
        As :func:`read_raw_table`, and listing every row that could not be read.
    """
    raw = read_raw_table(path, expected)
    if raw.problems:
        raise SiteDataError(raw.problems)
    return raw.frame


def read_raw_table(path: str | Path, expected: Sequence[str] = ()) -> RawTable:
    """Read a CSV, TSV or Parquet file, every CSV cell as text, indexed by file row.

    The index is each row's line number as a person counts lines (the header is row 1,
    blank lines count), so messages point at the line an editor shows. A row with more
    fields than the header is left out and listed in ``problems``, so a caller can report
    it beside every other problem of the file.

    Parameters
    ----------
    path : str or Path
        A ``.csv``, ``.tsv`` (tab-separated) or ``.parquet`` file.
    expected : sequence of str
        The columns the caller needs: a header holding none of them is a file without a
        header row (its first row's values would otherwise be reported as headers).

    Raises
    ------
    SiteDataError
        The file is missing, of another type, not UTF-8 (naming the line), not
        readable, empty, written with another delimiter, without a header row, or its
        header repeats a name.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise SiteDataError(
            [
                DataProblem(
                    str(path),
                    None,
                    None,
                    f"expected {TABLE_FILE}",
                    ProblemKind.WRONG_FILE_TYPE,
                )
            ]
        )
    if not path.exists():
        raise SiteDataError(
            [DataProblem(str(path), None, None, "file not found", ProblemKind.FILE_NOT_FOUND)]
        )
    try:
        if suffix == ".parquet":
            return RawTable(_read_parquet(path, expected), [])
        return _read_csv(path, _DELIMITERS[suffix], expected)
    except OSError as err:  # a folder, a link loop, no permission …
        reason = err.strerror or type(err).__name__
        raise SiteDataError(
            [
                DataProblem(
                    str(path),
                    None,
                    None,
                    f"cannot be read ({reason})",
                    ProblemKind.UNREADABLE_FILE,
                )
            ]
        ) from err


def _read_parquet(path: Path, expected: Sequence[str]) -> pd.DataFrame:
    """A Parquet file with its rows numbered as a spreadsheet would (header = row 1)."""
    path.open("rb").close()  # an unreadable path is an OSError, whatever pyarrow says
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise SiteDataError(
            [
                DataProblem(
                    str(path),
                    None,
                    None,
                    "not a readable Parquet file",
                    ProblemKind.UNREADABLE_FILE,
                )
            ]
        ) from err
    _check_header(str(path), [str(c) for c in frame.columns], expected)
    frame = frame.astype(object).where(frame.notna(), None)  # nullable nulls become None
    frame.index = pd.RangeIndex(2, len(frame) + 2)
    return frame


def _read_csv(path: Path, sep: str, expected: Sequence[str]) -> RawTable:
    """The csv module rather than pandas: pandas skips blank lines and loses line numbers.

    A row with more fields than the header is left out and reported; a shorter one is
    padded with empty cells, which the missing-value policy then judges.
    """
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
    if header == [] and records:
        raise SiteDataError(
            [
                DataProblem(
                    str(path),
                    1,
                    None,
                    "row 1 is blank: the header must be the file's first line",
                    ProblemKind.MALFORMED_ROW,
                )
            ]
        )
    if not header or all(not h.strip() for h in header):
        raise SiteDataError(
            [DataProblem(str(path), None, None, "the file is empty", ProblemKind.EMPTY_FILE)]
        )
    _check_header(str(path), header, expected)
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
    kept = [(r, line) for r, line in zip(records, lines, strict=True) if len(r) <= width]
    padded = [record + [""] * (width - len(record)) for record, _ in kept]
    index = pd.Index([line for _, line in kept])
    return RawTable(pd.DataFrame(padded, columns=header, index=index, dtype=str), too_long)


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


def _check_header(path: str, header: list[str], expected: Sequence[str]) -> None:
    """Refuse a header written with another delimiter, a missing header row, or a repeat.

    A header of one field holding ``;``, a tab, ``|`` or ``,`` is a file with another
    delimiter than its name says; a header without any ``expected`` column is a file
    without a header row.
    """
    separators = [sep for sep in _SEPARATORS if len(header) == 1 and sep in header[0]]
    if separators:
        name, hint = _SEPARATORS[separators[0]]
        message = f"the header is one field holding {name}: {hint}"
        raise SiteDataError([DataProblem(path, 1, None, message, ProblemKind.MALFORMED_ROW)])
    if expected and not set(expected) & set(header):
        message = (
            f"none of the schema's {len(expected)} columns is in row 1: the file needs a "
            "header row naming its columns, as the schema does"
        )
        raise SiteDataError([DataProblem(path, 1, None, message, ProblemKind.MISSING_COLUMN)])
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
    expected = [*schema.feature_names, schema.label, *passthrough]
    read = read_raw_table(path, expected)
    raw = read.frame
    absent = [c for c in expected if c not in raw.columns]
    if absent:
        header = [str(c) for c in raw.columns]
        raise SiteDataError(_missing_columns(path_text, absent, header))
    if len(raw) == 0:
        raise SiteDataError(
            read.problems
            or [
                DataProblem(
                    path_text, None, None, "the file has no data rows", ProblemKind.NO_DATA_ROWS
                )
            ]
        )
    file_rows = [int(r) for r in raw.index]  # as a person counts lines: header is row 1
    missing = schema.missing_values
    problems: list[DataProblem] = list(read.problems)  # rows that could not be split
    columns: dict[str, list] = {}
    drop: set[int] = set()
    for spec in schema.features:
        checked = _check_column(
            raw[spec.name].tolist(), spec.rule, missing, spec.name, path_text, file_rows
        )
        problems.extend(checked.problems)
        columns[spec.name] = checked.values
        if schema.missing == "reject":
            problems.extend(_empty_problems(checked, spec.name, path_text, file_rows))
        elif schema.missing == "drop_row" or spec.type != "numeric":
            drop.update(checked.empty)
    labels = _check_column(
        raw[schema.label].tolist(),
        _label_rule(schema),
        missing,
        schema.label,
        path_text,
        file_rows,
        label=True,
    )
    problems.extend(labels.problems)
    drop.update(labels.empty)  # a row without its label cannot be used, whatever the policy
    if problems:
        raise SiteDataError(problems)
    keep = [i for i in range(len(raw)) if i not in drop]
    if not keep:
        raise SiteDataError(
            [
                DataProblem(
                    path_text,
                    None,
                    None,
                    f"no usable rows left: all {len(raw)} have a missing value "
                    f"(missing = {schema.missing})",
                    ProblemKind.NO_USABLE_ROWS,
                )
            ]
        )
    frame = pd.DataFrame({name: [_model_value(columns[name][i]) for i in keep] for name in columns})
    frame[schema.label] = [labels.values[i] for i in keep]
    for name in passthrough:
        cells = raw[name].tolist()
        frame[name] = ["" if missing.is_missing(cells[i]) else str(cells[i]) for i in keep]
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


def _model_value(value: float | str | None) -> float | str:
    """A kept cell as the frame holds it: a missing number (``impute_mean``) is NaN."""
    return math.nan if value is None else value


def _missing_columns(path: str, absent: list[str], header: list[str]) -> list[DataProblem]:
    """A problem per declared column the header lacks, suggesting a near-miss header.

    A header name that differs only in case or spacing, or is a close spelling, is named.
    """
    problems = []
    for name in absent:
        near = _near_header(name, header)
        hint = f"; the file has '{near}' — headers match exactly" if near else ""
        problems.append(
            DataProblem(
                path,
                1,
                name,
                f"missing column (declared in the schema){hint}",
                ProblemKind.MISSING_COLUMN,
            )
        )
    return problems


def _near_header(name: str, header: list[str]) -> str | None:
    """A header that differs from ``name`` only in case/spacing, or is a close spelling."""
    folded = {h.strip().casefold().replace(" ", "_"): h for h in header}
    key = name.strip().casefold().replace(" ", "_")
    if key in folded:
        return folded[key]
    close = difflib.get_close_matches(key, list(folded), n=1, cutoff=0.8)
    return folded[close[0]] if close else None


def _found(value: object) -> str:
    """A cell as a site's own message quotes it (spaces included: they may be the fault)."""
    return repr(value)


def _value_problem(
    path: str, row: int, column: str, value: object, refused: ValueRefused
) -> DataProblem:
    """A refused value as a problem: what was expected, what was found, and a hint."""
    hint = f"; {refused.hint}" if refused.hint else ""
    message = f"expected {refused.expected}, found {_found(value)}{hint}"
    return DataProblem(path, row, column, message, ProblemKind(refused.kind))


@dataclass
class _CheckedColumn:
    """One column's values read by its rule, what was refused and which rows are empty."""

    values: list
    problems: list[DataProblem]
    empty: list[int]


def _check_column(
    cells: list,
    rule: ValueRule,
    missing: MissingValues,
    column: str,
    path: str,
    rows: list[int],
    label: bool = False,
) -> _CheckedColumn:
    """Read every cell of a column with ``rule``; missing cells are left as None.

    A refused class of the ``label`` column is an ``unknown_label``.
    """
    checked = _CheckedColumn([], [], [])
    for i, cell in enumerate(cells):
        if missing.is_missing(cell, rule.categories):
            checked.empty.append(i)
            checked.values.append(None)
            continue
        try:
            checked.values.append(rule.read(cell))
        except ValueRefused as refused:
            problem = _value_problem(path, rows[i], column, cell, refused)
            if label and problem.kind == ProblemKind.UNKNOWN_CATEGORY:
                problem = replace(problem, kind=ProblemKind.UNKNOWN_LABEL)
            checked.problems.append(problem)
            checked.values.append(None)
    return checked


def _label_rule(schema: SiteSchema) -> ValueRule:
    """A label is read as a number (regression) or as one of the classes."""
    if schema.task == "regression":
        low, high = schema.label_range
        return ValueRule("numeric", min=low, max=high)
    return ValueRule("categorical", schema.classes)


def _empty_problems(
    checked: _CheckedColumn, column: str, path: str, rows: list[int]
) -> list[DataProblem]:
    """The empty cells of a feature's column under ``missing = reject``."""
    return [
        DataProblem(path, rows[i], column, "empty cell (missing = reject)", ProblemKind.EMPTY_CELL)
        for i in checked.empty
    ]
