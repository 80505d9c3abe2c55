"""`fedcare evaluate`: a table of metrics, JSON and predictions files, clear errors."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from cli.evaluate import _file_labels
from cli.main import app
from server.registry import ModelRegistry
from tests.conftest import ward_registry, write_csv

runner = CliRunner()
WARD = """
    age,sex,smoker,outcome
    30,F,0,0
    70,M,1,1
    45,F,1,0
"""


@pytest.fixture
def registry(tmp_path, ward_schema_path) -> ModelRegistry:
    return ward_registry(tmp_path / "registry", ward_schema_path, (0,))


def _evaluate(registry: ModelRegistry, *args: str):
    return runner.invoke(app, ["evaluate", "--registry", str(registry.root), *args])


def test_metrics_are_printed_and_written_with_predictions_by_row(tmp_path, registry):
    data = write_csv(tmp_path / "ward.csv", WARD)
    out, predictions = tmp_path / "metrics.json", tmp_path / "predictions.csv"
    result = _evaluate(
        registry, "--model", "ward@1", "--data", str(data),
        "--out", str(out), "--predictions", str(predictions),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "unsigned" in text and "overall" in text and "roc_auc" in text
    assert "│ ward.csv │" in text and "│ 3 │" in text  # the file's name; rows as a count
    metrics = json.loads(out.read_text())
    assert (metrics["model"], metrics["version"], metrics["signed"]) == ("ward", 1, False)
    assert metrics["files"][str(data)]["num-examples"] == 3.0
    assert metrics["overall"] == metrics["files"][str(data)]
    with predictions.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["file"], r["row"]) for r in rows] == [(str(data), str(n)) for n in (2, 3, 4)]
    assert set(rows[0]) == {"file", "row", "label", "probability"}  # no feature, no label


def test_files_are_shown_by_name_unless_two_share_one():
    assert _file_labels(["/x/a.csv", "/y/b.csv"]) == ["a.csv", "b.csv"]
    assert _file_labels(["/x/a.csv", "/y/a.csv"]) == ["/x/a.csv", "/y/a.csv"]


def test_a_bad_row_is_named_and_exits_1_without_a_traceback(tmp_path, registry):
    data = write_csv(tmp_path / "ward.csv", "age,sex,smoker,outcome\n30,F,0,0\n40,M,2,1\n")
    result = _evaluate(registry, "--model", "ward", "--data", str(data))
    assert result.exit_code == 1
    assert "ward.csv, row 3, column 'smoker'" in " ".join(result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unknown_model_or_version_exits_1_naming_it(tmp_path, registry):
    data = write_csv(tmp_path / "ward.csv", WARD)
    result = _evaluate(registry, "--model", "ward@3", "--data", str(data))
    assert result.exit_code == 1
    assert "'ward' has no version 3" in result.output
    result = _evaluate(registry, "--model", "icu", "--data", str(data))
    assert result.exit_code == 1
    assert "no model named 'icu'" in result.output
