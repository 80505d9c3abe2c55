"""Refuse table values far outside what the model was fitted on, before predicting.

A numeric value is refused with ``out_of_range`` when it lies outside the schema's
declared ``min``/``max`` or more than :data:`MAX_STANDARD_SCORE` standard deviations from
the federation's mean (the registered preprocessing statistics: pooled over every site,
never one site's minimum or maximum), on the feature's encoded scale (after its declared
transform). Values of the wrong type are left to the data kind, which refuses them with
``invalid_input``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from models.data.transforms import transformed
from models.predictor import Predictor
from protocol import inference as wire

# How many federated standard deviations from the mean a value may be.
MAX_STANDARD_SCORE = 100.0


def check_ranges(predictor: Predictor, rows: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`ApiError` ``out_of_range`` for the first value far out of range.

    Parameters
    ----------
    predictor : Predictor
        The model's schema and standardization.
    rows : sequence of mapping
        The request's rows, as :func:`protocol.inference.parse_rows` returns them.
    """
    schema, scale = predictor.schema, predictor.standardization
    if schema.kind != "table":
        return
    numeric = [spec for spec in schema.features if spec.type == "numeric"]
    for row, values in enumerate(rows):
        for spec in numeric:
            value = values.get(spec.name) if isinstance(values, Mapping) else None
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            number = float(value)
            low, high = spec.min, spec.max
            if (low is not None and number < low) or (high is not None and number > high):
                bounds = (
                    "-inf" if low is None else f"{low:g}",
                    "inf" if high is None else f"{high:g}",
                )
                expected = "a value within the declared range [{}, {}]".format(*bounds)
            else:
                mean, std = scale.mean.get(spec.name, 0.0), scale.std.get(spec.name, 1.0)
                if math.isfinite(number):  # within any declared range: its transform applies
                    number = transformed(spec.transform, number, spec.max)
                if math.isfinite(number) and abs(number - mean) <= MAX_STANDARD_SCORE * std:
                    continue
                expected = (
                    f"a value within {MAX_STANDARD_SCORE:g} standard deviations of the "
                    "federation's mean"
                )
            raise wire.OUT_OF_RANGE.error(
                f"row {row}, feature '{spec.name}': expected {expected}",
                row=row,
                feature=spec.name,
            )
