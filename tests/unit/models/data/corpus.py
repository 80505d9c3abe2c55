"""A corpus of bad site files, schemas and data folders, written by code.

Each :class:`BadCase` is a ``--data-dir`` folder (``schema.toml`` plus files) and the
substrings its messages must hold: the file, the row as a person counts it, the column,
what was expected and a hint where one is likely. ``site_file`` is the file
``fedcare site check --data`` is given (None: the case is about the folder, which only
``fedcare simulate --data-dir`` reads). :func:`write_case` lays a case out on disk.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tests.conftest import SCHEMA_TOML

HEADER = "age,sex,smoker,outcome\n"
GOOD_ROWS = "34,F,0,0\n61,M,1,1\n47,F,1,0\n52,M,0,1\n"
GOOD = HEADER + GOOD_ROWS
SITE = "site.csv"
Writer = Callable[[Path], None]


@dataclass(frozen=True)
class BadCase:
    """One bad input and what its messages must say.

    Parameters
    ----------
    id : str
        The case's name (its class first: ``numbers/underscore``).
    files : dict
        File name to its bytes, or to a function that makes it in the folder.
    expected : tuple of str
        Substrings of the messages (``{folder}`` is replaced by the case's folder).
    schema : str or None
        The schema's text (None: the folder has no schema.toml).
    site_file : str or None
        The file ``site check --data`` checks; None for folder-only cases.
    """

    id: str
    files: dict[str, bytes | Writer]
    expected: tuple[str, ...]
    schema: str | None = SCHEMA_TOML
    site_file: str | None = SITE
    simulate: bool = field(default=True)


def write_case(case: BadCase, folder: Path) -> Path:
    """Lay ``case`` out in ``folder`` (created) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    if case.schema is not None:
        (folder / "schema.toml").write_text(case.schema)
    for name, content in case.files.items():
        if callable(content):
            content(folder / name)
        else:
            (folder / name).write_bytes(content)
    return folder


def _csv(text: str) -> bytes:
    return text.encode()


def _cell(row: str) -> bytes:
    """A good file with one more row (it becomes row 6)."""
    return _csv(GOOD + row + "\n")


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _ward_frame(**columns) -> pd.DataFrame:
    base = {
        "age": pd.array([34, 61, 47, 52], dtype="Int64"),
        "sex": ["F", "M", "F", "M"],
        "smoker": [0, 1, 1, 0],
        "outcome": ["0", "1", "0", "1"],
    }
    return pd.DataFrame(base | columns)


def _schema(old: str, new: str) -> str:
    assert old in SCHEMA_TOML, old
    return SCHEMA_TOML.replace(old, new)


def _link(target: str) -> Writer:
    return lambda path: os.symlink(target, path)


def _folder(path: Path) -> None:
    path.mkdir()


INT_CODED = _schema('categories = ["F", "M"]', 'categories = ["1", "2"]')
MISSING_CODES = _schema('missing = "reject"', 'missing = "reject"\nmissing_values = ["", "-999"]')
DROP_ROW = _schema('missing = "reject"', 'missing = "drop_row"')
IMPUTE = _schema('missing = "reject"', 'missing = "impute_mean"')
REGRESSION = """
[dataset]
task = "regression"
label = "los"
label_min = 0
label_max = 365

[features.age]
type = "numeric"
min = 0
max = 120
"""
DEEP = 20_000  # rows before the bad one in the large files

CASES = [
    # ------------------------------------------------------------------ encoding
    BadCase(
        "encoding/latin1-byte-deep-in-a-large-file",
        {SITE: _csv(HEADER + "34,F,0,0\n" * DEEP) + b"34,\xe9,0,0\n" + _csv("34,M,1,1\n")},
        (f"{SITE}, row {DEEP + 2}: not UTF-8 text; save the file as UTF-8 CSV",),
    ),
    BadCase(
        "encoding/utf16",
        {SITE: GOOD.encode("utf-16")},
        (f"{SITE}, row 1: not UTF-8 text",),
    ),
    BadCase(
        "encoding/cp1252-quote-in-a-category",
        {SITE: _csv(HEADER + "34,F,0,0\n") + b"61,\x93M\x94,1,1\n"},
        (f"{SITE}, row 3: not UTF-8 text",),
    ),
    BadCase(
        "encoding/nul-byte",
        {SITE: _csv(HEADER + "34,F,0,0\n") + b"61,M\x00,1,1\n"},
        (f"{SITE}, row 3, column 'sex': expected one of ['F', 'M'], found 'M\\x00'",),
    ),
    # ---------------------------------------------------------------- delimiters
    BadCase(
        "delimiters/semicolons",
        {SITE: _csv(GOOD.replace(",", ";"))},
        (f"{SITE}, row 1: the header is one field holding semicolons: save the file as comma",),
    ),
    BadCase(
        "delimiters/tabs-in-a-csv",
        {SITE: _csv(GOOD.replace(",", "\t"))},
        ("row 1: the header is one field holding tabs: name a tab-separated file .tsv",),
    ),
    BadCase(
        "delimiters/vertical-bars",
        {SITE: _csv(GOOD.replace(",", "|"))},
        ("row 1: the header is one field holding vertical bars",),
    ),
    BadCase(
        "delimiters/commas-in-a-tsv",
        {"site.tsv": _csv(GOOD)},
        ("site.tsv, row 1: the header is one field holding commas: name a comma-separated file",),
        site_file="site.tsv",
    ),
    BadCase(
        "delimiters/decimal-commas-and-semicolons",
        {SITE: _csv("age;sex;smoker;outcome\n34,5;F;0;0\n61,2;M;1;1\n")},
        ("row 1: the header is one field holding semicolons",),
    ),
    BadCase(
        "delimiters/a-row-with-an-extra-field",
        {SITE: _csv(GOOD + "34,F,0,0,9\n")},
        (f"{SITE}, row 6: 5 fields, the header has 4",),
    ),
    # ------------------------------------------------------------------- headers
    BadCase(
        "headers/no-header-row",
        {SITE: _csv(GOOD_ROWS)},
        (f"{SITE}, row 1: none of the schema's 4 columns is in row 1: the file needs a header",),
    ),
    BadCase(
        "headers/duplicate",
        {SITE: _csv("age,sex,smoker,age,outcome\n34,F,0,34,0\n")},
        (f"{SITE}, row 1, column 'age': duplicate header: the column appears twice",),
    ),
    BadCase("headers/empty-file", {SITE: b""}, (f"{SITE}: the file is empty",)),
    BadCase("headers/header-only", {SITE: _csv(HEADER)}, (f"{SITE}: the file has no data rows",)),
    BadCase(
        "headers/blank-first-line",
        {SITE: _csv("\n" + GOOD)},
        (f"{SITE}, row 1: row 1 is blank: the header must be the file's first line",),
    ),
    BadCase(
        "headers/missing-column",
        {SITE: _csv("age,sex,outcome\n34,F,0\n61,M,1\n")},
        (f"{SITE}, row 1, column 'smoker': missing column (declared in the schema)",),
    ),
    # ---------------------------------------------------------- near-miss names
    BadCase(
        "near-miss/capitalized",
        {SITE: _csv(GOOD.replace("age,", "Age,", 1))},
        ("row 1, column 'age': missing column (declared in the schema); the file has 'Age'",),
    ),
    BadCase(
        "near-miss/trailing-space",
        {SITE: _csv(GOOD.replace("sex,", "sex ,", 1))},
        ("row 1, column 'sex': missing column", "the file has 'sex '"),
    ),
    BadCase(
        "near-miss/misspelt",
        {SITE: _csv(GOOD.replace("smoker", "smokr", 1))},
        ("row 1, column 'smoker': missing column", "the file has 'smokr'"),
    ),
    BadCase(
        "near-miss/label",
        {SITE: _csv(GOOD.replace("outcome", "Outcome", 1))},
        ("row 1, column 'outcome': missing column", "the file has 'Outcome'"),
    ),
    # ------------------------------------------------------------ decimal comma
    BadCase(
        "decimal-comma/quoted",
        {SITE: _cell('"34,5",F,0,0')},
        (
            f"{SITE}, row 6, column 'age': expected a number, found '34,5'; write decimals "
            "with a point (1.5), not a comma",
        ),
    ),
    BadCase(
        "decimal-comma/unquoted-splits-the-row",
        {SITE: _cell("34,5,F,0,0")},
        (f"{SITE}, row 6: 5 fields, the header has 4",),
    ),
    # ------------------------------------------------------------------- numbers
    BadCase(
        "numbers/underscore",
        {SITE: _csv(HEADER + "34,F,0,0\n\n\n1_20,M,1,1\n")},
        (f"{SITE}, row 5, column 'age': expected a number, found '1_20'",),
    ),
    BadCase(
        "numbers/hex",
        {SITE: _cell("0x10,F,0,0")},
        ("row 6, column 'age': expected a number, found '0x10'",),
    ),
    BadCase(
        "numbers/absurd",
        {SITE: _cell("1e200,F,0,0")},
        ("row 6, column 'age': expected a number at most 120 (max), found '1e200'",),
    ),
    BadCase(
        "numbers/infinite",
        {SITE: _cell("inf,F,0,0")},
        ("row 6, column 'age': expected a finite number, found 'inf'",),
    ),
    BadCase(
        "numbers/with-a-unit",
        {SITE: _cell("34 years,F,0,0")},
        ("row 6, column 'age': expected a number, found '34 years'",),
    ),
    BadCase(
        "numbers/two-points",
        {SITE: _cell("3.4.1,F,0,0")},
        ("row 6, column 'age': expected a number, found '3.4.1'",),
    ),
    BadCase(
        "numbers/arabic-indic-digits",
        {SITE: _cell("٣٤,F,0,0")},
        ("row 6, column 'age': expected a number, found '٣٤'",),
    ),
    BadCase(
        "numbers/sign-alone",
        {SITE: _cell("+,F,0,0")},
        ("row 6, column 'age': expected a number, found '+'",),
    ),
    BadCase(
        "numbers/bad-number-deep-in-a-large-file",
        {SITE: _csv(HEADER + "34,F,0,0\n61,M,1,1\n" * (DEEP // 2) + "thirty,F,0,0\n")},
        (f"row {DEEP + 2}, column 'age': expected a number, found 'thirty'",),
    ),
    BadCase(
        "numbers/many-problems-are-capped",
        {SITE: _csv(GOOD + "x,F,0,0\n" * 25)},
        ("25 problem(s)", "row 6, column 'age'", "… and 5 more"),
    ),
    # ---------------------------------------------------------- missing values
    BadCase(
        "missing/empty-cell-under-reject",
        {SITE: _cell(",F,0,0")},
        ("row 6, column 'age': empty cell (missing = reject)",),
    ),
    BadCase(
        "missing/nan-word-under-reject",
        {SITE: _cell("nan,F,0,0")},
        ("row 6, column 'age': empty cell (missing = reject)",),
    ),
    BadCase(
        "missing/undeclared-NA-category",
        {SITE: _cell("34,NA,0,0")},
        ("row 6, column 'sex': empty cell (missing = reject)",),
    ),
    BadCase(
        "missing/short-row-padded",
        {SITE: _cell("34,F")},
        ("row 6, column 'smoker': empty cell (missing = reject)",),
    ),
    BadCase(
        "missing/code-999-below-the-minimum",
        {SITE: _cell("-999,F,0,0")},
        (
            "row 6, column 'age': expected a number at least 0 (min), found '-999'",
            "column 'age': 1 cell(s) look like a missing-value code",
        ),
    ),
    BadCase(
        "missing/question-mark-category",
        {SITE: _cell("34,?,0,0")},
        (
            "row 6, column 'sex': expected one of ['F', 'M'], found '?'",
            "column 'sex': 1 cell(s) look like a missing-value code",
        ),
    ),
    BadCase(
        "missing/n-a-in-a-number",
        {SITE: _cell("N/A,F,0,0")},
        ("row 6, column 'age': expected a number, found 'N/A'",),
    ),
    BadCase(
        "missing/declared-code-under-reject",
        {SITE: _cell("-999,F,0,0")},
        ("row 6, column 'age': empty cell (missing = reject)",),
        schema=MISSING_CODES,
    ),
    BadCase(
        "missing/every-label-empty",
        {SITE: _csv(HEADER + "34,F,0,\n61,M,1,\n")},
        ("no usable rows left: all 2 have a missing value (missing = reject)",),
    ),
    BadCase(
        "missing/drop-row-leaves-nothing",
        {SITE: _csv(HEADER + ",F,0,0\n61,,1,1\n")},
        ("no usable rows left: all 2 have a missing value (missing = drop_row)",),
        schema=DROP_ROW,
    ),
    # --------------------------------------------------------------- categories
    BadCase(
        "categories/space-around",
        {SITE: _cell("34, M,0,0")},
        (
            "row 6, column 'sex': expected one of ['F', 'M'], found ' M'; did you mean 'M'? "
            "categories match exactly, without spaces around",
        ),
    ),
    BadCase(
        "categories/lower-case",
        {SITE: _cell("34,m,0,0")},
        ("row 6, column 'sex'", "did you mean 'M'? categories match exactly, case included"),
    ),
    BadCase(
        "categories/unknown",
        {SITE: _cell("34,X,0,0")},
        ("row 6, column 'sex': expected one of ['F', 'M'], found 'X'",),
    ),
    BadCase(
        "categories/integer-coded-unknown",
        {SITE: _csv(HEADER + "34,1,0,0\n61,2.0,1,1\n47,3,1,0\n")},
        ("row 4, column 'sex': expected one of ['1', '2'], found '3'",),
        schema=INT_CODED,
    ),
    # ------------------------------------------------------------------- binary
    BadCase(
        "binary/maybe",
        {SITE: _cell("34,F,maybe,0")},
        ("row 6, column 'smoker': expected 0/1, true/false, yes/no, y/n or t/f, found 'maybe'",),
    ),
    BadCase("binary/two", {SITE: _cell("34,F,2,0")}, ("row 6, column 'smoker': expected 0/1",)),
    BadCase("binary/half", {SITE: _cell("34,F,0.5,0")}, ("row 6, column 'smoker': expected 0/1",)),
    BadCase(
        "binary/another-language",
        {SITE: _cell("34,F,ja,0")},
        ("row 6, column 'smoker': expected 0/1", "found 'ja'"),
    ),
    # -------------------------------------------------------------------- label
    BadCase(
        "label/unknown-class",
        {SITE: _cell("34,F,0,2")},
        ("row 6, column 'outcome': expected one of ['0', '1'], found '2'",),
    ),
    BadCase(
        "label/a-word-for-a-class",
        {SITE: _cell("34,F,0,yes")},
        ("row 6, column 'outcome': expected one of ['0', '1'], found 'yes'",),
    ),
    BadCase(
        "label/one-class-only",
        {SITE: _csv(HEADER + "34,F,0,1\n61,M,1,1\n")},
        ("column 'outcome': the label has one class only ('1')",),
    ),
    # ------------------------------------------------------------------- ranges
    BadCase(
        "ranges/above-the-maximum",
        {SITE: _cell("121,F,0,0")},
        ("row 6, column 'age': expected a number at most 120 (max), found '121'",),
    ),
    BadCase(
        "ranges/far-outside-the-range",
        {SITE: _cell("3400,F,0,0")},
        (
            "row 6, column 'age': expected a number at most 120 (max)",
            "column 'age': 1 value(s) far outside the declared range [0, 120]",
        ),
    ),
    BadCase(
        "ranges/regression-label",
        {SITE: _csv("age,los\n34,3\n61,400\n")},
        ("row 3, column 'los': expected a number at most 365 (max), found '400'",),
        schema=REGRESSION,
    ),
    # ------------------------------------------------------------------- schema
    BadCase(
        "schema/misspelt-minimum",
        {SITE: _csv(GOOD)},
        ("[features.age] has unknown key 'minimum'; expected one of ['type', 'categories'",),
        schema=_schema("min = 0", "minimum = 0"),
    ),
    BadCase(
        "schema/misspelt-table",
        {SITE: _csv(GOOD)},
        ("the schema has unknown key 'featurez'; expected one of ['dataset', 'features']",),
        schema=_schema("[features.smoker]", "[featurez.smoker]"),
    ),
    BadCase(
        "schema/unknown-dataset-key",
        {SITE: _csv(GOOD)},
        ("[dataset] has unknown key 'labl'",),
        schema=_schema('missing = "reject"', 'missing = "reject"\nlabl = "x"'),
    ),
    BadCase(
        "schema/unknown-task",
        {SITE: _csv(GOOD)},
        ("[dataset].task is 'binray', expected one of ('binary', 'multiclass'",),
        schema=_schema('task = "binary"', 'task = "binray"'),
    ),
    BadCase(
        "schema/unknown-type",
        {SITE: _csv(GOOD)},
        ("[features.smoker].type is 'bool', expected one of ('numeric', 'categorical', 'binary')",),
        schema=_schema('type = "binary"', 'type = "bool"'),
    ),
    BadCase(
        "schema/unknown-kind",
        {SITE: _csv(GOOD)},
        ("[dataset].kind is 'tabel', expected one of ['image', 'sequence', 'table', 'text']",),
        schema=_schema('task = "binary"', 'task = "binary"\nkind = "tabel"'),
    ),
    BadCase(
        "schema/unknown-missing-policy",
        {SITE: _csv(GOOD)},
        ("[dataset].missing is 'drop', expected one of ('reject', 'drop_row', 'impute_mean')",),
        schema=_schema('missing = "reject"', 'missing = "drop"'),
    ),
    BadCase(
        "schema/one-category",
        {SITE: _csv(GOOD)},
        ("[features.sex].categories must list at least 2 allowed values",),
        schema=_schema('categories = ["F", "M"]', 'categories = ["F"]'),
    ),
    BadCase(
        "schema/min-above-max",
        {SITE: _csv(GOOD)},
        ("[features.age]: min 130 is above max 120",),
        schema=_schema("min = 0", "min = 130"),
    ),
    BadCase(
        "schema/range-as-text",
        {SITE: _csv(GOOD)},
        ("[features.age].max must be a number",),
        schema=_schema("max = 120", 'max = "120"'),
    ),
    BadCase(
        "schema/not-toml",
        {SITE: _csv(GOOD)},
        ("schema.toml: not valid TOML",),
        schema="[dataset\ntask = binary\n",
    ),
    BadCase(
        "schema/no-label",
        {SITE: _csv(GOOD)},
        ("[dataset] needs 'label'",),
        schema=_schema('label = "outcome"', ""),
    ),
    BadCase(
        "schema/label-also-a-feature",
        {SITE: _csv(GOOD)},
        ("the label 'age' is also declared as a feature",),
        schema=_schema('label = "outcome"', 'label = "age"'),
    ),
    BadCase(
        "schema/survival-without-event",
        {SITE: _csv(GOOD)},
        ("[dataset] needs 'event' (the column's name)",),
        schema=_schema('task = "binary"', 'task = "survival"').replace('classes = ["0", "1"]', ""),
    ),
    BadCase(
        "schema/missing-values-not-a-list",
        {SITE: _csv(GOOD)},
        ("[dataset].missing_values must be a list of texts",),
        schema=_schema('missing = "reject"', 'missing = "reject"\nmissing_values = "-999"'),
    ),
    BadCase(
        "schema/name-with-markup-brackets",
        {SITE: _csv(GOOD)},
        ("[features.[red]age].type is 'x', expected one of",),
        schema=_schema('[features.age]\ntype = "numeric"', '[features."[red]age"]\ntype = "x"'),
    ),
    BadCase(
        "schema/no-schema-file",
        {SITE: _csv(GOOD)},
        ("schema.toml: schema file not found",),
        schema=None,
    ),
    # ------------------------------------------------------------------ folders
    BadCase(
        "folders/one-site-in-two-formats",
        {SITE: _csv(GOOD), "site.parquet": _parquet(_ward_frame())},
        ("{folder}/site.csv and {folder}/site.parquet: two sources for one site name",),
        site_file=None,
    ),
    BadCase(
        "folders/names-differing-in-case",
        {"North.csv": _csv(GOOD), "north.csv": _csv(GOOD)},
        ("North.csv and {folder}/north.csv: two sources for one site name",),
        site_file=None,
    ),
    BadCase(
        "folders/two-test-sets",
        {SITE: _csv(GOOD), "test.csv": _csv(GOOD), "test.parquet": _parquet(_ward_frame())},
        ("test.csv and {folder}/test.parquet: two sources for one site name",),
        site_file=None,
    ),
    BadCase(
        "folders/a-file-of-another-type",
        {SITE: _csv(GOOD), "notes.txt": b"hello"},
        (
            "{folder}/notes.txt: a file of another type: a table data folder holds schema.toml "
            "and, per site, a .csv, .tsv or .parquet file",
        ),
        site_file=None,
    ),
    BadCase(
        "folders/a-spreadsheet",
        {SITE: _csv(GOOD), "south.xlsx": b"PK\x03\x04"},
        ("{folder}/south.xlsx: a file of another type",),
        site_file=None,
    ),
    BadCase(
        "folders/a-broken-link",
        {SITE: _csv(GOOD), "gone.csv": _link("/nonexistent/gone.csv")},
        ("{folder}/gone.csv: a broken link (it points at nothing)",),
        site_file=None,
    ),
    BadCase(
        "folders/a-link-loop",
        {SITE: _csv(GOOD), "loop.csv": _link("loop.csv")},
        ("{folder}/loop.csv: a broken link",),
        site_file=None,
    ),
    BadCase(
        "folders/a-folder-named-like-a-file",
        {SITE: _csv(GOOD), "east.csv": _folder},
        ("{folder}/east.csv: a folder: a table data folder holds schema.toml",),
        site_file=None,
    ),
    BadCase(
        "folders/no-site-file",
        {},
        ("no site files (table data: a .csv, .tsv or .parquet file per site)",),
        site_file=None,
    ),
    BadCase(
        "folders/a-folder-given-as-the-data-file",
        {"west.csv": _folder},
        ("west.csv: cannot be read (Is a directory)",),
        site_file="west.csv",
        simulate=False,
    ),
    BadCase(
        "folders/another-extension-given-as-the-data-file",
        {"site.xls": _csv(GOOD)},
        ("site.xls: expected a .csv, .tsv or .parquet file",),
        site_file="site.xls",
        simulate=False,
    ),
    BadCase(
        "folders/a-data-file-that-does-not-exist",
        {},
        ("site.csv: file not found",),
        simulate=False,
    ),
    # ------------------------------------------------------------------ parquet
    BadCase(
        "parquet/nullable-null-under-reject",
        {"site.parquet": _parquet(_ward_frame(age=pd.array([34, None, 47, 52], dtype="Int64")))},
        ("site.parquet, row 3, column 'age': empty cell (missing = reject)",),
        site_file="site.parquet",
    ),
    BadCase(
        "parquet/a-category-code-as-a-float",
        {"site.parquet": _parquet(_ward_frame(sex=[1.0, 2.0, 3.0, 1.0]))},
        ("site.parquet, row 4, column 'sex': expected one of ['1', '2'], found 3.0",),
        schema=INT_CODED,
        site_file="site.parquet",
    ),
    BadCase(
        "parquet/corrupt",
        {"site.parquet": b"PAR1 this is not a parquet file PAR1"},
        ("site.parquet: not a readable Parquet file",),
        site_file="site.parquet",
    ),
    BadCase(
        "parquet/text-in-a-number-column",
        {"site.parquet": _parquet(_ward_frame(age=["34", "61", "old", "52"]))},
        ("site.parquet, row 4, column 'age': expected a number, found 'old'",),
        site_file="site.parquet",
    ),
    BadCase(
        "parquet/absurd-float",
        {"site.parquet": _parquet(_ward_frame(age=[34.0, 1.5e200, 47.0, 52.0]))},
        ("site.parquet, row 3, column 'age': expected a number at most 120 (max), found 1.5e+200",),
        site_file="site.parquet",
    ),
    BadCase(
        "parquet/bool-in-a-number-column",
        {"site.parquet": _parquet(_ward_frame(age=[True, False, True, False]))},
        ("site.parquet, row 2, column 'age': expected a number, not true/false, found True",),
        site_file="site.parquet",
    ),
]
