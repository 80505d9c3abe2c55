"""Federated standardization and encoding: every site builds the same columns and scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.data.features import FeatureEncoder, FeatureStatistics, Standardization
from models.data.kinds.registry import load_schema


def _frame(ages: list[float], sexes: list[str]) -> pd.DataFrame:
    n = len(ages)
    return pd.DataFrame({"age": ages, "sex": sexes, "smoker": [0.0] * n, "outcome": ["0"] * n})


def test_pooled_statistics_equal_the_pooled_data(ward_schema_path):
    schema = load_schema(ward_schema_path)
    a = _frame([30, 40, 50], ["F", "F", "M"])
    b = _frame([60, 90], ["M", "M"])
    merged = FeatureStatistics.of_frame(a, schema).merge(FeatureStatistics.of_frame(b, schema))
    # what travels is flat numbers only
    merged = FeatureStatistics.from_flat(merged.to_flat())
    scale = Standardization.from_statistics(merged)
    pooled = np.array([30, 40, 50, 60, 90], dtype=float)
    assert scale.mean["age"] == pytest.approx(pooled.mean())
    assert scale.std["age"] == pytest.approx(pooled.std())
    assert merged.rows == 5


def test_one_hot_columns_come_from_the_schema_not_the_site(ward_schema_path):
    schema = load_schema(ward_schema_path)
    scale = Standardization(mean={"age": 50.0}, std={"age": 10.0})
    encoder = FeatureEncoder(schema, scale)
    only_women = encoder.transform(_frame([40, 60], ["F", "F"]))
    only_men = encoder.transform(_frame([40], ["M"]))
    assert only_women.shape[1] == only_men.shape[1] == encoder.input_dim == 4
    assert encoder.column_names == ["age", "sex=F", "sex=M", "smoker"]
    np.testing.assert_allclose(only_women[:, 0], [-1.0, 1.0])
    np.testing.assert_array_equal(only_women[:, 1:3], [[1, 0], [1, 0]])
    np.testing.assert_array_equal(only_men[:, 1:3], [[0, 1]])
