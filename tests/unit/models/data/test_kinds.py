"""Each data kind reads its files, names every bad file/row/field, and encodes requests
exactly as it encodes site data."""

from __future__ import annotations

import base64
import io
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data.features import FeatureStatistics, Standardization
from models.data.kinds.base import RowError
from models.data.kinds.registry import get_kind, load_schema, parse_schema
from models.data.schema import SchemaError
from models.data.tables import SiteDataError
from server.federation.setup import balanced_class_weights

IMAGE_SCHEMA = """
[dataset]
name = "xray"
kind = "image"
task = "binary"
label = "label"
classes = ["normal", "pneumonia"]
channels = 1
image_size = 8
"""

SEQUENCE_SCHEMA = """
[dataset]
name = "ward"
kind = "sequence"
task = "binary"
label = "outcome"
patient = "pid"
time = "hour"
max_steps = 3

[features.hr]
type = "numeric"

[features.alert]
type = "binary"
"""

TEXT_SCHEMA = """
[dataset]
name = "notes"
kind = "text"
task = "binary"
label = "dx"
classes = ["other", "pneumonia"]
text = "note"
n_features = 64
"""

SURVIVAL_SCHEMA = """
[dataset]
name = "cohort"
task = "survival"
label = "T"
event = "E"

[features.age]
type = "numeric"
"""


def _schema(tmp_path: Path, text: str):
    path = tmp_path / "schema.toml"
    path.write_text(textwrap.dedent(text))
    return load_schema(path)


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _png(path: Path, pixels: np.ndarray, mode: str = "L") -> Path:
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(path)
    return path


def _problems(err: pytest.ExceptionInfo) -> list[str]:
    return [str(p) for p in err.value.problems]


# --- schemas -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (IMAGE_SCHEMA.replace("channels = 1", "channels = 2"), "channels is 2, expected 1 or 3"),
        (IMAGE_SCHEMA + "\n[features.age]\ntype = 'numeric'\n", "image data takes no"),
        (IMAGE_SCHEMA.replace('task = "binary"', 'task = "regression"'), "does not fit image"),
        (IMAGE_SCHEMA.replace('kind = "image"', 'kind = "video"'), "kind is 'video'"),
        (SEQUENCE_SCHEMA.replace('patient = "pid"\n', ""), "needs 'patient'"),
        (SEQUENCE_SCHEMA.replace('time = "hour"', 'time = "hr"'), "also the label or a feature"),
        (TEXT_SCHEMA.replace("n_features = 64", "n_features = 'many'"), "n_features is 'many'"),
        (SURVIVAL_SCHEMA.replace('event = "E"\n', ""), "needs 'event'"),
    ],
)
def test_each_kind_checks_its_schema_keys(tmp_path, text, message):
    with pytest.raises(SchemaError, match=message):
        _schema(tmp_path, text)


# --- images ------------------------------------------------------------------------------


def test_npz_images_load_as_scaled_channel_first_arrays(tmp_path):
    schema = _schema(tmp_path, IMAGE_SCHEMA)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    path = tmp_path / "site.npz"
    np.savez(path, train_images=images, train_labels=np.array([[0], [1]] * 3))
    examples = get_kind(schema).load(path, schema)
    encoded = examples.encode(np.arange(6), Standardization({}, {}))
    assert encoded.inputs.shape == (6, 1, 8, 8)
    assert np.allclose(encoded.inputs[:, 0] * 255, images)
    assert encoded.targets.tolist() == [0, 1] * 3
    assert examples.statistics(np.arange(6)).label_counts == {"normal": 3.0, "pneumonia": 3.0}


def test_npz_problems_name_the_array_and_the_image(tmp_path):
    schema = _schema(tmp_path, IMAGE_SCHEMA)
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    path = tmp_path / "bad.npz"
    np.savez(
        path,
        train_images=images,
        train_labels=np.array([0, 1, 5, 1]),
        val_images=np.zeros((2, 9, 8)),
        val_labels=np.array([0, 1]),
        test_images=np.zeros((1, 8, 8, 3)),
        test_labels=np.array([0]),
    )
    with pytest.raises(SiteDataError) as err:
        get_kind(schema).load(path, schema)
    problems = _problems(err)
    assert any("row 2, column 'train_labels'" in p and "unknown label 5" in p for p in problems)
    assert any(
        "column 'val_images'" in p and "8×9 (width×height) pixels; expected 8×8" in p
        for p in problems
    )
    assert any("column 'test_images'" in p and "3 channel(s); expected 1" in p for p in problems)


def test_png_folder_problems_name_the_file_and_the_labels_row(tmp_path):
    schema = _schema(tmp_path, IMAGE_SCHEMA)
    site = tmp_path / "site"
    site.mkdir()
    _png(site / "a.png", np.zeros((8, 8)))
    _png(site / "b.png", np.full((8, 8), 255))
    _png(site / "big.png", np.zeros((10, 8)))
    _png(site / "rgb.png", np.zeros((8, 8, 3)), mode="RGB")
    (site / "broken.png").write_bytes(b"not a png at all")
    _write(
        site / "labels.csv",
        """
        file,label
        a.png,normal
        b.png,pneumonia
        big.png,normal
        rgb.png,pneumonia
        broken.png,normal
        missing.png,normal
        a.png,flu
        """,
    )
    with pytest.raises(SiteDataError) as err:
        get_kind(schema).load(site, schema)
    problems = _problems(err)
    assert len(problems) == 5
    big = str(site / "big.png")
    assert any(p.startswith(big) and "row 4" in p and "8×10 (width×height)" in p for p in problems)
    assert any(p.startswith(str(site / "rgb.png")) and "mode RGB" in p for p in problems)
    assert any(
        p.startswith(str(site / "broken.png")) and "not a readable image" in p for p in problems
    )
    assert any(p.startswith(str(site / "missing.png")) and "file not found" in p for p in problems)
    assert any("row 8" in p and "unknown label 'flu'" in p for p in problems)


def test_png_class_folders_and_requests_encode_like_the_files(tmp_path):
    schema = _schema(tmp_path, IMAGE_SCHEMA)
    site = tmp_path / "site"
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (4, 8, 8))
    for i, cls in enumerate(["normal", "pneumonia"] * 2):
        (site / cls).mkdir(parents=True, exist_ok=True)
        _png(site / cls / f"{i}.png", pixels[i])
    kind = get_kind(schema)
    examples = kind.load(site, schema)
    assert examples.num_examples == 4
    png = io.BytesIO()
    Image.fromarray(pixels[0].astype(np.uint8)).save(png, format="PNG")
    request = [
        {"png": base64.b64encode(png.getvalue()).decode()},
        {"image": pixels[0].tolist()},
    ]
    encoded = kind.encode_request(schema, Standardization({}, {}), request)
    assert np.allclose(encoded[0], encoded[1])
    assert np.allclose(encoded[0, 0] * 255, pixels[0])
    with pytest.raises(RowError, match="row 0, feature 'image'.*8×7 \\(width×height\\) pixels"):
        kind.encode_request(schema, Standardization({}, {}), [{"image": pixels[0][:7].tolist()}])
    with pytest.raises(RowError, match="row 0, feature 'png'.*base64"):
        kind.encode_request(schema, Standardization({}, {}), [{"png": "%%%"}])


# --- sequences ---------------------------------------------------------------------------


def test_sequences_are_ordered_padded_masked_and_truncated(tmp_path):
    schema = _schema(tmp_path, SEQUENCE_SCHEMA)
    path = _write(
        tmp_path / "site.csv",
        """
        pid,hour,hr,alert,outcome
        p1,2,90,0,1
        p1,0,70,0,1
        p1,1,80,1,1
        p1,3,100,1,1
        p2,0,60,0,0
        """,
    )
    examples = get_kind(schema).load(path, schema)
    stats = examples.statistics(np.arange(2))
    assert stats.count["hr"] == 4.0  # p1's first hour is dropped (max_steps = 3)
    assert stats.label_counts == {"1": 1.0, "0": 1.0}
    standardization = Standardization({"hr": 80.0}, {"hr": 10.0})
    encoded = examples.encode(np.arange(2), standardization)
    assert encoded.inputs.shape == (2, 3, 3)  # 3 steps × (hr, alert, mask)
    assert encoded.inputs[0].tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [2.0, 1.0, 1.0]]
    assert encoded.inputs[1].tolist() == [[-2.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert encoded.targets.tolist() == [1, 0]
    request = {
        "steps": [
            {"hour": 3, "hr": 100, "alert": 1},
            {"hour": 1, "hr": 80, "alert": True},
            {"hour": 2, "hr": 90, "alert": 0},
            {"hour": 0, "hr": 70, "alert": 0},
        ]
    }
    assert np.array_equal(
        get_kind(schema).encode_request(schema, standardization, [request])[0], encoded.inputs[0]
    )
    columnar = {"hour": [3, 1, 2, 0], "hr": [100, 80, 90, 70], "alert": [1, 1, 0, 0]}
    assert np.array_equal(
        get_kind(schema).encode_request(schema, standardization, [columnar])[0], encoded.inputs[0]
    )
    with pytest.raises(RowError, match="same number of steps"):
        get_kind(schema).encode_request(schema, standardization, [{"hour": [0], "hr": [1, 2]}])


def test_sequence_problems_name_rows_and_requests_name_steps(tmp_path):
    schema = _schema(tmp_path, SEQUENCE_SCHEMA)
    path = _write(
        tmp_path / "site.csv",
        """
        pid,hour,hr,alert,outcome
        p1,0,70,0,1
        p1,0,71,0,1
        p2,0,60,0,0
        p2,1,61,0,1
        ,0,60,0,0
        """,
    )
    with pytest.raises(SiteDataError) as err:
        get_kind(schema).load(path, schema)
    problems = _problems(err)
    assert any("row 6, column 'pid'" in p and "empty id" in p for p in problems)
    with pytest.raises(RowError, match=r"row 0, feature 'steps\[1\]\.spo2'.*unknown feature"):
        get_kind(schema).encode_request(
            schema,
            Standardization({}, {}),
            [
                {
                    "steps": [
                        {"hour": 0, "hr": 1, "alert": 0},
                        {"hour": 1, "hr": 1, "alert": 0, "spo2": 9},
                    ]
                }
            ],
        )
    fixed = path.read_text().replace("\n,0,60,0,0", "\np3,0,60,0,0")
    path.write_text(fixed)
    with pytest.raises(SiteDataError) as err:
        get_kind(schema).load(path, schema)
    problems = _problems(err)
    assert any(
        "row 3, column 'hour'" in p and "already has a row at time 0 (row 2)" in p for p in problems
    )
    assert any("row 5, column 'outcome'" in p and "one label" in p for p in problems)


# --- notes and survival ------------------------------------------------------------------


def test_notes_are_hashed_and_empty_notes_named(tmp_path):
    schema = _schema(tmp_path, TEXT_SCHEMA)
    kind = get_kind(schema)
    good = _write(
        tmp_path / "site.csv",
        """
        note,dx
        "Fever, productive cough",pneumonia
        Chest clear,other
        """,
    )
    encoded = kind.load(good, schema).encode(np.arange(2), Standardization({}, {}))
    assert encoded.inputs.shape == (2, 64) and encoded.targets.tolist() == [1, 0]
    request = kind.encode_request(schema, Standardization({}, {}), [{"note": "Chest clear"}])
    assert np.array_equal(request[0], encoded.inputs[1])
    bad = _write(tmp_path / "bad.csv", 'note,dx\n"  ",other\nok,pneumonia\n')
    with pytest.raises(SiteDataError, match="row 2, column 'note': empty note"):
        kind.load(bad, schema)
    with pytest.raises(RowError, match="expected"):
        kind.encode_request(schema, Standardization({}, {}), [{"text": "x"}])


def test_survival_tables_give_time_and_event_targets(tmp_path):
    schema = _schema(tmp_path, SURVIVAL_SCHEMA)
    kind = get_kind(schema)
    path = _write(tmp_path / "site.csv", "age,T,E\n50,100,1\n60,20.5,0\n70,3,1\n")
    examples = kind.load(path, schema)
    encoded = examples.encode(np.arange(3), Standardization({"age": 60.0}, {"age": 10.0}))
    assert encoded.targets.tolist() == [[100.0, 1.0], [20.5, 0.0], [3.0, 1.0]]
    assert encoded.inputs[:, 0].tolist() == [-1.0, 0.0, 1.0]
    assert examples.strata().tolist() == [1.0, 0.0, 1.0]
    assert kind.families(schema) == ("cox_linear", "cox_mlp")
    bad = _write(tmp_path / "bad.csv", "age,T,E\n50,-1,1\n60,20,maybe\n")
    with pytest.raises(SiteDataError) as err:
        kind.load(bad, schema)
    problems = _problems(err)
    assert any("row 3, column 'E'" in p for p in problems)
    bad.write_text("age,T,E\n50,-1,1\n60,20,0\n")
    with pytest.raises(SiteDataError, match="row 2, column 'T': follow-up time -1 is negative"):
        kind.load(bad, schema)


def test_balanced_class_weights_come_from_pooled_counts():
    schema = parse_schema(
        {"dataset": {"task": "binary", "label": "y"}, "features": {"a": {"type": "numeric"}}}
    )
    site_a = FeatureStatistics.of_values({}, labels=["0", "0", "0", "1"], rows=4)
    site_b = FeatureStatistics.of_values({}, labels=["0", "0", "0", "0"], rows=4)
    pooled = FeatureStatistics.from_flat(site_a.to_flat()).merge(site_b)
    assert pooled.label_counts == {"0": 7.0, "1": 1.0}
    assert balanced_class_weights(schema, pooled) == pytest.approx([8 / 14, 8 / 2])
