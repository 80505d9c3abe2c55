"""Every bad site file gets a message naming the file, row, column and what was expected."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from models.data.kinds.registry import load_schema, parse_schema
from models.data.schema import SchemaError
from models.data.tables import SiteDataError, load_site_table
from tests.conftest import write_csv

GOOD = """
age,sex,smoker,outcome
34,F,0,0
61,M,1,1
47,F,yes,1
"""


def _problems(path: Path, schema_path: Path) -> list[str]:
    with pytest.raises(SiteDataError) as caught:
        load_site_table(path, load_schema(schema_path))
    assert all(str(path) == p.file for p in caught.value.problems)
    return [str(p) for p in caught.value.problems]


def test_a_good_file_loads_with_rows_and_labels(tmp_path, ward_schema_path):
    table = load_site_table(write_csv(tmp_path / "a.csv", GOOD), load_schema(ward_schema_path))
    assert table.num_rows == 3
    assert table.label_counts() == {"0": 1, "1": 2}
    assert list(table.frame["smoker"]) == [0.0, 1.0, 1.0]


def test_parquet_is_read_like_csv(tmp_path, ward_schema_path):
    frame = pd.DataFrame(
        {"age": [34.0, 61.0], "sex": ["F", "M"], "smoker": [0, 1], "outcome": [0, 1]}
    )
    frame.to_parquet(tmp_path / "a.parquet")
    table = load_site_table(tmp_path / "a.parquet", load_schema(ward_schema_path))
    assert table.num_rows == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("age,sex,outcome\n34,F,0\n61,M,1\n", "row 1, column 'smoker': missing column"),
        (
            "age,sex,smoker,outcome\n34,X,0,0\n61,M,1,1\n",
            "row 2, column 'sex': expected one of ['F', 'M'], found 'X'",
        ),
        (
            "age,sex,smoker,outcome\n34,F,0,0\nold,M,1,1\n",
            "row 3, column 'age': expected a number, found 'old'",
        ),
        (
            "age,sex,smoker,outcome\n34,F,0,0\n161,M,1,1\n",
            "row 3, column 'age': expected a number at most 120 (max), found '161'",
        ),
        (
            "age,sex,smoker,outcome\n34,F,0,0\n61,M,1,2\n",
            "row 3, column 'outcome': expected one of ['0', '1'], found '2'",
        ),
        (
            "age,sex,smoker,outcome\n34,F,0,0\n,M,1,1\n",
            "row 3, column 'age': empty cell (missing = reject)",
        ),
        (
            "age,sex,smoker,age,outcome\n34,F,0,34,0\n",
            "row 1, column 'age': duplicate header",
        ),
        ("age,sex,smoker,outcome\n34,F,0,1\n61,M,1,1\n", "the label has one class only ('1')"),
        ("", "the file is empty"),
        ("age,sex,smoker,outcome\n", "the file has no data rows"),
        (
            "age,sex,smoker,outcome\n34,F,maybe,0\n61,M,1,1\n",
            "row 2, column 'smoker': expected 0/1, true/false, yes/no, y/n or t/f, found 'maybe'",
        ),
        ("age,sex,smoker,outcome\ninf,F,0,0\n61,M,1,1\n", "expected a finite number"),
    ],
)
def test_bad_files_name_file_row_column_and_expectation(tmp_path, ward_schema_path, text, expected):
    path = tmp_path / "site.csv"
    path.write_text(text)
    messages = _problems(path, ward_schema_path)
    assert any(expected in m for m in messages), messages


def test_all_problems_of_a_file_are_listed_not_just_the_first(tmp_path, ward_schema_path):
    path = write_csv(
        tmp_path / "site.csv",
        """
        age,sex,smoker,outcome
        old,F,0,0
        40,Q,0,1
        200,M,1,1
        """,
    )
    messages = _problems(path, ward_schema_path)
    assert len(messages) == 3
    assert [m.split(", ")[1] for m in messages] == ["row 2", "row 3", "row 4"]


def test_missing_file_and_wrong_suffix(tmp_path, ward_schema_path):
    assert "file not found" in _problems(tmp_path / "none.csv", ward_schema_path)[0]
    odd = tmp_path / "site.xlsx"
    odd.write_bytes(b"PK")
    assert "expected a .csv, .tsv or .parquet file" in _problems(odd, ward_schema_path)[0]


def test_drop_row_policy_drops_and_reports_rows(tmp_path):
    schema = parse_schema(
        {
            "dataset": {"task": "binary", "label": "y", "missing": "drop_row"},
            "features": {"x": {"type": "numeric"}},
        }
    )
    path = write_csv(tmp_path / "s.csv", "x,y\n1,0\n,1\n3,1\n")
    table = load_site_table(path, schema)
    assert table.num_rows == 2
    assert table.dropped_rows == [3]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, "missing [dataset] table"),
        ({"dataset": {"task": "binary"}}, "[dataset] needs 'label'"),
        ({"dataset": {"task": "survival?", "label": "y"}}, "[dataset].task is 'survival?'"),
        (
            {"dataset": {"task": "binary", "label": "y"}, "features": {"x": {"type": "text?"}}},
            "[features.x].type is 'text?'",
        ),
        (
            {
                "dataset": {"task": "binary", "label": "y"},
                "features": {"x": {"type": "categorical", "categories": ["a"]}},
            },
            "[features.x].categories must list at least 2",
        ),
        (
            {
                "dataset": {"task": "binary", "label": "y"},
                "features": {"x": {"type": "numeric", "min": 5, "max": 1}},
            },
            "min 5 is above max 1",
        ),
        ({"dataset": {"task": "multiclass", "label": "y"}, "features": {"x": {}}}, "classes"),
    ],
)
def test_bad_schemas_name_the_key(raw, expected):
    with pytest.raises(SchemaError, match=None) as caught:
        parse_schema(raw, source="fed.toml")
    assert str(caught.value).startswith("fed.toml: ")
    assert expected in str(caught.value)


def test_schema_file_errors_name_the_file(tmp_path):
    with pytest.raises(SchemaError, match="schema file not found"):
        load_schema(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[dataset\n")
    with pytest.raises(SchemaError, match=f"{broken}: not valid TOML"):
        load_schema(broken)


def test_schema_round_trips_through_toml_with_the_same_hash(tmp_path, ward_schema_path):
    schema = load_schema(ward_schema_path)
    copy = tmp_path / "copy.toml"
    schema.save(copy)
    again = load_schema(copy)
    assert again.feature_names == schema.feature_names
    assert again.sha256 == schema.sha256
