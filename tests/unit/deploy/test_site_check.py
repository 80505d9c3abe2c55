"""`fedcare site check --data F --schema S`: δ, the row minimum, dropped rows, warnings.

Through the real command (Typer's CliRunner, in this process) and without a site.toml.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from deploy.site_check import DEFAULT_MIN_ROWS, check_site_data, training_rows
from tests.conftest import SCHEMA_TOML

runner = CliRunner(env={"COLUMNS": "2000"})
HEADER = "age,sex,smoker,outcome\n"


def _files(tmp_path: Path, rows: list[str], schema: str = SCHEMA_TOML) -> tuple[Path, Path]:
    data, schema_path = tmp_path / "site.csv", tmp_path / "schema.toml"
    data.write_text(HEADER + "\n".join(rows) + "\n")
    schema_path.write_text(schema)
    return data, schema_path


def _rows(n: int) -> list[str]:
    return [f"{20 + i % 60},{'FM'[i % 2]},{i % 3 % 2},{i % 2}" for i in range(n)]


def _check(data: Path, schema: Path, *extra: str):
    args = ["site", "check", "--data", str(data), "--schema", str(schema), *extra]
    return runner.invoke(app, args)


def test_a_good_file_passes_without_a_site_toml(tmp_path):
    data, schema = _files(tmp_path, _rows(60))
    done = _check(data, schema, "--json")
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    assert found["ok"] and found["rows"] == 60 and found["label_counts"] == {"0": 30, "1": 30}
    assert found["budget"] == {} and found["warnings"] == []


def test_too_few_rows_is_a_problem_with_a_documented_default(tmp_path):
    data, schema = _files(tmp_path, _rows(DEFAULT_MIN_ROWS - 1))
    done = _check(data, schema)
    assert done.exit_code == 1
    assert f"{DEFAULT_MIN_ROWS - 1} example(s); a site needs at least {DEFAULT_MIN_ROWS}" in (
        done.output
    )
    assert _check(data, schema, "--min-rows", "5").exit_code == 0


def test_delta_must_be_below_one_over_the_training_rows(tmp_path):
    data, schema = _files(tmp_path, _rows(50))
    assert training_rows(50, 0.2) == 40
    done = _check(data, schema, "--delta", "0.03")
    assert done.exit_code == 1
    assert "δ=0.03 must be below 1/n = 2.50e-02 for the site's 40 training examples" in (
        done.output
    )
    assert _check(data, schema, "--delta", "0.02").exit_code == 0


def test_dropped_rows_are_reported_by_number(tmp_path):
    rows = _rows(30)
    rows[3] = ",F,0,1"  # file row 5
    rows[10] = "40,,1,0"  # file row 12
    data, schema = _files(tmp_path, rows, SCHEMA_TOML.replace('"reject"', '"drop_row"'))
    done = _check(data, schema)
    assert done.exit_code == 0, done.output
    assert "dropped: 2 row(s) with a missing value (missing = drop_row): rows 5, 12" in done.output
    assert "rows: 28" in done.output


def test_quality_warnings_are_counts_never_values(tmp_path):
    rows = [f"{20 + i},F,0,{i % 2}" for i in range(30)]  # sex and smoker are constant
    rows[4] = "9999,F,0,0"  # a code far outside [0, 120]: an error and two warnings
    data, schema = _files(tmp_path, rows)
    found = check_site_data(data, schema)
    assert found.problems == [
        f"{data}, row 6, column 'age': expected a number at most 120 (max), found '9999'"
    ]
    assert found.warnings == [
        "column 'age': 1 cell(s) look like a missing-value code (such as -999, 9999 or ?); "
        "if they mean missing, list them in [dataset].missing_values",
        "column 'age': 1 value(s) far outside the declared range [0, 120] (beyond it by more "
        "than its width): another unit, or a code?",
        "column 'sex': all 30 filled cells hold one value: the column tells the model nothing",
        "column 'smoker': all 30 filled cells hold one value: the column tells the model nothing",
    ]
    done = _check(data, schema)
    assert done.exit_code == 1
    for warning in found.warnings:
        assert f"warning: {warning}" in done.output
    assert all("9999" not in w.replace("9999 or ?", "") for w in found.warnings)


def test_site_check_needs_a_site_toml_or_data_and_schema(tmp_path):
    data, _ = _files(tmp_path, _rows(30))
    done = runner.invoke(app, ["site", "check", "--data", str(data)])
    assert done.exit_code == 1
    assert "give --config site.toml, or --data FILE and --schema schema.toml" in done.output
