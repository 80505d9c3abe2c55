"""Scoring a registered model on local files: metrics per file and pooled, rows by number."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.tables import load_site_table
from models.families import task_for
from models.predictor import Predictor
from server.registry import ModelRegistry, RegistryError
from server.scoring import ScoringError, find_version, score_files
from tests.conftest import ward_registry, write_csv

NORTH = """
    age,sex,smoker,outcome
    30,F,0,0
    70,M,1,1
    45,F,1,0
    62,M,0,1
"""
SOUTH = """
    age,sex,smoker,outcome
    55,M,1,1
    25,F,0,0
    80,F,1,1
"""


@pytest.fixture
def registry(tmp_path, ward_schema_path) -> ModelRegistry:
    return ward_registry(tmp_path / "registry", ward_schema_path, (0, 1))


def test_metrics_per_file_match_the_task_on_the_version_s_own_encoding(tmp_path, registry):
    north = write_csv(tmp_path / "north.csv", NORTH)
    south = write_csv(tmp_path / "south.csv", SOUTH)
    version = find_version(registry.root, "ward@1")
    scores = score_files(version, [north, south])
    predictor = Predictor.from_version(version)
    table = load_site_table(north, predictor.schema)
    outputs = predictor.outputs(predictor.encoder.transform(table.frame))
    expected = task_for(version.spec).metrics(predictor.encoder.labels(table.frame), outputs)
    assert (scores.model, scores.version, scores.signed) == ("ward", 1, False)
    assert [s.file for s in scores.files] == [str(north), str(south)]
    for key, value in expected.items():
        assert scores.files[0].metrics[key] == pytest.approx(value, abs=1e-12)
    assert scores.files[0].metrics["num-examples"] == 4.0
    assert scores.overall["num-examples"] == 7.0
    assert scores.to_dict()["files"][str(south)] == scores.files[1].metrics


def test_overall_metrics_pool_the_examples_rather_than_average_the_files(tmp_path, registry):
    north = write_csv(tmp_path / "north.csv", NORTH)
    south = write_csv(tmp_path / "south.csv", SOUTH)
    both = write_csv(tmp_path / "both.csv", NORTH + "\n".join(SOUTH.splitlines()[2:]))
    version = find_version(registry.root, "ward")
    assert score_files(version, [north, south]).overall == score_files(version, [both]).overall


def test_predictions_carry_the_file_and_its_row_number_only(tmp_path, registry):
    text = "age,sex,smoker,outcome\n30,F,0,0\n70,M,1,1\n45,F,1,0\n"
    path = tmp_path / "ward.csv"
    path.write_text(text)
    scores = score_files(find_version(registry.root, "ward"), [path])
    assert [(p.file, p.row) for p in scores.predictions] == [(str(path), r) for r in (2, 3, 4)]
    assert set(scores.predictions[0].prediction) == {"label", "probability"}
    assert np.isfinite([p.prediction["probability"] for p in scores.predictions]).all()


def test_the_newest_version_unless_one_is_named(registry):
    assert find_version(registry.root, "ward").version == 2
    assert find_version(registry.root, "ward@v1").version == 1
    with pytest.raises(RegistryError, match="'ward' has no version 9"):
        find_version(registry.root, "ward@9")
    with pytest.raises(ScoringError, match="expected NAME or NAME@VERSION"):
        find_version(registry.root, "ward@latest")


def test_every_bad_file_is_named_with_its_row_and_column(tmp_path, registry):
    good = write_csv(tmp_path / "good.csv", NORTH)
    bad = write_csv(tmp_path / "bad.csv", "age,sex,smoker,outcome\n30,F,0,0\n400,X,0,1\n")
    with pytest.raises(ScoringError) as caught:
        score_files(find_version(registry.root, "ward"), [good, bad, tmp_path / "none.csv"])
    message = str(caught.value)
    assert "bad.csv, row 3, column 'age'" in message
    assert "bad.csv, row 3, column 'sex': expected one of ['F', 'M'], found 'X'" in message
    assert "none.csv: file not found" in message
    assert "good.csv" not in message
