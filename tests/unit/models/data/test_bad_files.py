"""A corpus of bad site files and schemas, written by the test, each with its message."""

from __future__ import annotations

import pytest

from models.data.kinds.registry import load_schema
from models.data.schema import SchemaError
from models.data.tables import ProblemKind, SiteDataError, load_site_table, public_summary
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
            "row 2, column 'age': 1e+200 is above the maximum",
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
    assert summary == "1 problem(s): 1 × duplicate_header (row 1)"
