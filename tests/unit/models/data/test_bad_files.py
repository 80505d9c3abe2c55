"""Bad site files at the loader: row numbers, problem kinds, missing-value policies.

The full corpus (``corpus.py``) goes through the `fedcare` commands in
``tests/unit/cli/test_bad_files.py``.
"""

from __future__ import annotations

import pandas as pd
import pytest

from models.data.kinds.registry import load_schema
from models.data.schema import SchemaError
from models.data.tables import (
    ProblemKind,
    SiteDataError,
    SiteTable,
    load_site_table,
    public_summary,
)
from tests.conftest import SCHEMA_TOML

HEADER = "age,sex,smoker,outcome\n"


@pytest.mark.parametrize(
    ("body", "expected", "kind"),
    [
        (
            HEADER + "34,F,0,0\n\n\n1_20,M,1,1\n",
            "row 5, column 'age': expected a number",
            "not_a_number",
        ),
        (
            HEADER + "0x10,F,0,0\n34,M,1,1\n",
            "row 2, column 'age': expected a number",
            "not_a_number",
        ),
        (
            HEADER + "1e200,F,0,0\n34,M,1,1\n",
            "row 2, column 'age': expected a number at most 120 (max), found '1e200'",
            "out_of_range",
        ),
        (HEADER + "34,F,0,0,9\n34,M,1,1\n", "row 2: 5 fields, the header has 4", "malformed_row"),
    ],
)
def test_bad_cells_name_the_row_as_a_person_counts_it(
    tmp_path, ward_schema_path, body, expected, kind
):
    path = tmp_path / "site.csv"
    path.write_text(body)
    with pytest.raises(SiteDataError) as caught:
        load_site_table(path, load_schema(ward_schema_path))
    assert expected in str(caught.value)
    assert caught.value.problems[0].kind == ProblemKind(kind)


def test_a_non_utf8_byte_deep_in_a_file_names_the_line(tmp_path, ward_schema_path):
    path = tmp_path / "site.csv"
    path.write_bytes((HEADER + "34,F,0,0\n" * 5000).encode() + b"34,\xff,0,0\n")
    with pytest.raises(SiteDataError, match="row 5002: not UTF-8"):
        load_site_table(path, load_schema(ward_schema_path))


def test_a_declared_na_category_is_a_category(tmp_path):
    schema_path = tmp_path / "schema.toml"
    schema_path.write_text(SCHEMA_TOML.replace('["F", "M"]', '["F", "M", "NA"]'))
    path = tmp_path / "site.csv"
    path.write_text(HEADER + "34,NA,0,0\n40,M,1,1\n")
    assert load_site_table(path, load_schema(schema_path)).frame["sex"].tolist() == ["NA", "M"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("max = 120", "maximum = 120"), "unknown key 'maximum'; expected one of"),
        (('missing = "reject"', 'missing = "reject"\nlabl = "x"'), "unknown key 'labl'"),
        (("[features.smoker]", "[featurez.smoker]"), "unknown key 'featurez'"),
        (('task = "binary"', 'task = "binray"'), "task is 'binray', expected one of"),
        (('type = "binary"', 'type = "bool"'), "type is 'bool', expected one of"),
    ],
)
def test_unknown_schema_keys_are_errors_naming_the_key(tmp_path, change, expected):
    path = tmp_path / "schema.toml"
    path.write_text(SCHEMA_TOML.replace(*change))
    with pytest.raises(SchemaError, match=expected):
        load_schema(path)


def test_a_headerless_file_reveals_no_value_in_its_public_summary(tmp_path, ward_schema_path):
    path = tmp_path / "site.csv"
    path.write_text("MRN-1,F,0,0\nMRN-1,F,0,0\n")
    with pytest.raises(SiteDataError) as caught:
        load_site_table(path, load_schema(ward_schema_path))
    summary = public_summary(caught.value.problems, ["age", "sex", "smoker", "outcome"])
    assert summary == "1 problem(s): 1 × missing_column (row 1)"


def _ward_parquet(path, schema_text: str) -> SiteTable:
    frame = pd.DataFrame(
        {
            "age": pd.array([34, None, 47, 52, 60], dtype="Int64"),
            "sex": ["F", "M", None, "M", "F"],
            "smoker": pd.array([0, 1, 1, None, 1], dtype="Int64"),
            "outcome": ["0", "1", "0", "1", "1"],
        }
    )
    frame.to_parquet(path / "site.parquet", index=False)
    schema_path = path / "schema.toml"
    schema_path.write_text(schema_text)
    return load_site_table(path / "site.parquet", load_schema(schema_path))


def test_parquet_nullable_nulls_follow_each_missing_policy(tmp_path):
    with pytest.raises(SiteDataError) as caught:
        _ward_parquet(tmp_path, SCHEMA_TOML)
    assert [(p.row, p.column, p.kind) for p in caught.value.problems] == [
        (3, "age", ProblemKind.EMPTY_CELL),
        (4, "sex", ProblemKind.EMPTY_CELL),
        (5, "smoker", ProblemKind.EMPTY_CELL),
    ]
    dropped = _ward_parquet(tmp_path, SCHEMA_TOML.replace('"reject"', '"drop_row"'))
    assert (dropped.source_rows, dropped.dropped_rows) == ([2, 6], [3, 4, 5])
    # impute_mean: a numeric null stays (NaN, the pooled mean after scaling); others drop
    imputed = _ward_parquet(tmp_path, SCHEMA_TOML.replace('"reject"', '"impute_mean"'))
    assert (imputed.source_rows, imputed.dropped_rows) == ([2, 3, 6], [4, 5])
    assert imputed.frame["age"].isna().tolist() == [False, True, False]


def test_an_empty_label_drops_its_row_under_every_policy_as_documented(tmp_path):
    schema_path = tmp_path / "schema.toml"
    for policy in ("reject", "drop_row", "impute_mean"):
        schema_path.write_text(SCHEMA_TOML.replace('"reject"', f'"{policy}"'))
        path = tmp_path / "site.csv"
        path.write_text(HEADER + "34,F,0,0\n40,M,1,\n\n50,M,1,1\n")
        table = load_site_table(path, load_schema(schema_path))
        assert (table.source_rows, table.dropped_rows) == ([2, 5], [3]), policy


def test_integer_coded_categories_and_binary_spellings_are_one_rule(tmp_path):
    schema_path = tmp_path / "schema.toml"
    schema_path.write_text(SCHEMA_TOML.replace('["F", "M"]', '["1", "2"]'))
    path = tmp_path / "site.csv"
    path.write_text(HEADER + "34,1,y,0\n40,2.0,T,1.0\n41,2,1.0,1\n42,1,No,0\n")
    frame = load_site_table(path, load_schema(schema_path)).frame
    assert frame["sex"].tolist() == ["1", "2", "2", "1"]
    assert frame["smoker"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert frame["outcome"].tolist() == ["0", "1", "1", "0"]


def test_declared_missing_codes_replace_the_default_list(tmp_path):
    schema_path = tmp_path / "schema.toml"
    schema_path.write_text(
        SCHEMA_TOML.replace('"reject"', '"drop_row"\nmissing_values = ["-999", "?"]')
    )
    path = tmp_path / "site.csv"
    path.write_text(HEADER + "34,F,0,0\n-999.0,M,1,1\n40,?,1,1\n41,M,1,1\n")
    table = load_site_table(path, load_schema(schema_path))
    assert table.dropped_rows == [3, 4]
    path.write_text(HEADER + "34,F,0,0\nNA,M,1,1\n")  # NA is no longer a missing word
    with pytest.raises(SiteDataError, match="row 3, column 'age': expected a number"):
        load_site_table(path, load_schema(schema_path))


def test_a_row_that_cannot_be_split_is_listed_with_every_other_problem(tmp_path, ward_schema_path):
    path = tmp_path / "site.csv"
    path.write_text(HEADER + "34,F,0,0\n34,5,F,0,1\nold,M,1,1\n40,X,1,0\n")
    with pytest.raises(SiteDataError) as caught:
        load_site_table(path, load_schema(ward_schema_path))
    assert [(p.row, p.kind) for p in caught.value.problems] == [
        (3, ProblemKind.MALFORMED_ROW),
        (4, ProblemKind.NOT_A_NUMBER),
        (5, ProblemKind.UNKNOWN_CATEGORY),
    ]
