"""Model weights in a message: one flat Array per dtype, split again by name and shape."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from protocol.federation import from_array_record, to_array_record


def test_weights_travel_as_one_array_per_dtype_and_come_back_by_name():
    weights = {
        "0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "bn.num_batches_tracked": np.array(4, dtype=np.int64),
        "0.bias": np.array([7.0, 8.0], dtype=np.float32),
    }
    record = to_array_record(weights)
    assert len(record) == 2  # float32 and int64
    back = from_array_record(record)
    assert set(back) == set(weights)
    for name, value in weights.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)


def test_an_elementwise_mean_of_records_is_the_mean_of_the_weights():
    a = {"w": np.ones((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    b = {"w": 3 * np.ones((2, 2), np.float32), "b": np.full(3, 2.0, np.float32)}
    ra, rb = to_array_record(a), to_array_record(b)
    assert list(ra) == list(rb)  # the same layout, so Flower's strategies pair them by key
    mean = ArrayRecord({k: Array((ra[k].numpy() + rb[k].numpy()) / 2) for k in ra})
    back = from_array_record(mean)
    np.testing.assert_array_equal(back["w"], 2 * np.ones((2, 2)))
    np.testing.assert_array_equal(back["b"], np.ones(3))


@pytest.mark.parametrize(
    ("key", "values", "message"),
    [
        ("0.weight", np.zeros(3), "not a weight layout"),
        ('[["w",[2,2]]]', np.zeros(3), "does not match its layout of 4"),
    ],
)
def test_a_record_of_another_layout_is_refused_by_name(key, values, message):
    with pytest.raises(ValueError, match=message):
        from_array_record(ArrayRecord({key: Array(values)}))
