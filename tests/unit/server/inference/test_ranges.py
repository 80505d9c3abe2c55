"""The service's range check reads a log feature's standard score on its log scale."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from models.data.features import Standardization
from models.data.kinds.registry import load_schema
from protocol.inference import ApiError
from server.inference.ranges import check_ranges
from tests.conftest import SCHEMA_TOML


def _predictor(tmp_path, transform: str):
    path = tmp_path / "schema.toml"
    path.write_text(SCHEMA_TOML.replace("max = 120\n", f"max = 120\n{transform}"))
    # the log-scale mean of ages around 34, and a standard deviation of 0.5 on that scale
    scale = Standardization({"age": math.log(40.0)}, {"age": 0.5})
    return SimpleNamespace(schema=load_schema(path), standardization=scale)


def test_a_log_features_value_is_scored_on_its_log_scale(tmp_path):
    # 100 is 0.97 from log(40) on the log scale (2 standard deviations), 96 on the raw one
    check_ranges(_predictor(tmp_path, 'transform = "log"\n'), [{"age": 100}])
    with pytest.raises(ApiError) as refused:
        check_ranges(_predictor(tmp_path, ""), [{"age": 100}])
    assert refused.value.code == "out_of_range"
