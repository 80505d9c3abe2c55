"""A declared log scale: its values, its bounds, its statistics and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.data.features import (
    FeatureEncoder,
    FeatureStatistics,
    Standardization,
    declared_bounds,
    on_encoded_scale,
)
from models.data.kinds.registry import load_schema
from models.data.schema import FeatureSpec, SchemaError
from models.data.transforms import LOG_OFFSET_FRACTION, transformed
from tests.conftest import SCHEMA_TOML

LOG_AGE = SCHEMA_TOML.replace("max = 120\n", 'max = 120\ntransform = "log"\n')


def _log_schema(tmp_path, text: str = LOG_AGE):
    path = tmp_path / "schema.toml"
    path.write_text(text)
    return load_schema(path)


def _frame(ages: list[float]) -> pd.DataFrame:
    n = len(ages)
    return pd.DataFrame({"age": ages, "sex": ["F"] * n, "smoker": [0.0] * n, "outcome": ["0"] * n})


def test_the_offset_is_a_twentieth_of_the_declared_max():
    assert LOG_OFFSET_FRACTION == 1 / 20
    assert transformed("log", 0.0, 120.0) == pytest.approx(math.log(6.0))
    assert transformed("log", 114.0, 120.0) == pytest.approx(math.log(120.0))
    assert transformed(None, 114.0, 120.0) == 114.0
    assert math.isnan(transformed("log", math.nan, 120.0))


def test_a_log_feature_is_encoded_on_the_log_of_its_declared_range(tmp_path):
    schema = _log_schema(tmp_path)
    assert schema.feature("age").transform == "log"
    assert declared_bounds(schema)["age"] == pytest.approx((math.log(6.0), math.log(126.0)))
    # no statistics released: the log range's midpoint and a quarter of its width
    scale = Standardization.from_statistics(FeatureStatistics(), declared_bounds(schema))
    encoded = FeatureEncoder(schema, scale).transform(_frame([0.0, 120.0, 54.0]))
    centre = (math.log(6.0) + math.log(126.0)) / 2
    expected = [-2.0, 2.0, (math.log(60.0) - centre) / ((math.log(126.0) - math.log(6.0)) / 4)]
    np.testing.assert_allclose(encoded[:, 0], expected, rtol=1e-6)


def test_the_statistics_of_a_log_feature_are_of_its_logs(tmp_path):
    schema = _log_schema(tmp_path)
    stats = FeatureStatistics.of_frame(_frame([0.0, 14.0, 114.0]), schema)
    logs = np.log([6.0, 20.0, 120.0])
    assert stats.total["age"] == pytest.approx(logs.sum())
    assert stats.total_sq["age"] == pytest.approx(np.square(logs).sum())


def test_a_schema_round_trips_its_transform_and_one_without_keeps_its_text(tmp_path):
    schema = _log_schema(tmp_path)
    assert 'transform = "log"' in schema.to_toml()
    assert "transform" not in _log_schema(tmp_path, SCHEMA_TOML).to_toml()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('transform = "log"', 'transform = "sqrt"'), "transform is 'sqrt', expected one of"),
        (("min = 0", "min = -1"), "needs a declared min ≥ 0 and max > min"),
        (("min = 0\n", ""), "needs a declared min ≥ 0 and max > min"),
        (("max = 120\n", ""), "needs a declared min ≥ 0 and max > min"),
        (("min = 0", "min = 120"), "needs a declared min ≥ 0 and max > min"),
    ],
)
def test_a_transform_the_range_does_not_allow_names_file_and_feature(tmp_path, change, expected):
    path = tmp_path / "schema.toml"
    path.write_text(LOG_AGE.replace(*change))
    with pytest.raises(SchemaError, match=expected) as refused:
        load_schema(path)
    assert str(refused.value).startswith(f"{path}: [features.age].transform")


def test_only_a_numeric_feature_takes_a_transform(tmp_path):
    path = tmp_path / "schema.toml"
    path.write_text(SCHEMA_TOML.replace('type = "binary"', 'type = "binary"\ntransform = "log"'))
    with pytest.raises(SchemaError, match=r"\[features.smoker\].transform: only a numeric"):
        load_schema(path)


def test_the_encoder_column_transform_is_the_per_value_formula():
    spec = FeatureSpec("area", "numeric", min=0.0, max=4254.0, transform="log")
    values = np.random.default_rng(0).uniform(0.0, 4254.0, 50_000)
    values[:3] = (0.0, 4254.0, math.nan)
    column = on_encoded_scale(spec, values)
    each = np.array([transformed("log", v, 4254.0) for v in values])
    assert math.isnan(column[2]) and math.isnan(each[2])
    # numpy's log and math.log may differ in the last bit, never more
    np.testing.assert_array_max_ulp(np.delete(column, 2), np.delete(each, 2), maxulp=1)
