"""A registered model made ready to answer: rows in, predictions out.

The same code computes predictions for the inference service and for local checks (the
demo prints the service's answers beside this class's own), so both agree by
construction. Rows are dicts by feature name, checked against the schema with errors
naming the row and the feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from client.schema import SiteSchema, parse_schema
from models.features import FeatureEncoder, Standardization
from models.spec import ModelSpec, build_model, set_weights
from models.tasks import get_task

_BOOL_WORDS = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0, "1": 1.0, "0": 0.0}


class RowError(ValueError):
    """A request row does not match the schema; ``row`` and ``feature`` say where."""

    def __init__(self, row: int, feature: str | None, message: str):
        self.row = row
        self.feature = feature
        where = f"row {row}" + (f", feature '{feature}'" if feature else "")
        super().__init__(f"{where}: {message}")


def check_rows(schema: SiteSchema, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Check request rows against the schema and return them as a typed frame.

    Every declared feature must be present with a value of its type; numbers must be
    finite and within the declared range; extra keys are refused (a misspelt feature
    name would otherwise be silently ignored).
    """
    names = schema.feature_names
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise RowError(i, None, "expected an object of feature values")
        unknown = sorted(set(row) - set(names))
        if unknown:
            raise RowError(i, unknown[0], "unknown feature (not in the model's schema)")
        for spec in schema.features:
            if spec.name not in row or row[spec.name] is None:
                raise RowError(i, spec.name, "missing value")
            value = row[spec.name]
            if spec.type == "numeric":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise RowError(i, spec.name, "expected a number")
                number = float(value)
                if not math.isfinite(number):
                    raise RowError(i, spec.name, "expected a finite number")
                if spec.min is not None and number < spec.min:
                    raise RowError(i, spec.name, f"below the minimum {spec.min:g}")
                if spec.max is not None and number > spec.max:
                    raise RowError(i, spec.name, f"above the maximum {spec.max:g}")
                columns[spec.name].append(number)
            elif spec.type == "binary":
                if isinstance(value, bool):
                    columns[spec.name].append(float(value))
                elif isinstance(value, int | float) and value in (0, 1):
                    columns[spec.name].append(float(value))
                elif isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
                    columns[spec.name].append(_BOOL_WORDS[value.strip().lower()])
                else:
                    raise RowError(i, spec.name, "expected 0/1 or true/false")
            else:
                if not isinstance(value, str) or value not in spec.categories:
                    raise RowError(i, spec.name, f"expected one of {list(spec.categories)}")
                columns[spec.name].append(value)
    return pd.DataFrame(columns)


class Predictor:
    """A rebuilt model with its encoder.

    Parameters
    ----------
    spec : ModelSpec
        How to build the network.
    weights : mapping of str to ndarray
        Its plain state dict.
    schema : SiteSchema
        The features requests must carry.
    standardization : Standardization
        The federated scaling of numeric features.
    """

    def __init__(
        self,
        spec: ModelSpec,
        weights: Mapping[str, np.ndarray],
        schema: SiteSchema,
        standardization: Standardization,
    ):
        self.spec = spec
        self.schema = schema
        self.encoder = FeatureEncoder(schema, standardization)
        self.task = get_task(spec.task)
        self.model = build_model(spec)
        set_weights(self.model, dict(weights))
        self.model.eval()

    @classmethod
    def from_version(
        cls, version: Any, weights: Mapping[str, np.ndarray] | None = None
    ) -> Predictor:
        """Build from a registry ``ModelVersion``; ``weights`` overrides reading them."""
        import tomllib

        schema = parse_schema(tomllib.loads(version.schema_text()), source=str(version.path))
        return cls(
            spec=version.spec,
            weights=weights if weights is not None else version.load_weights(),
            schema=schema,
            standardization=version.standardization(),
        )

    def outputs(self, inputs: np.ndarray) -> np.ndarray:
        """Raw model outputs for an encoded input matrix (label units for regression)."""
        with torch.no_grad():
            raw = self.model(torch.as_tensor(inputs, dtype=torch.float32)).numpy()
        return self.encoder.decode_outputs(raw)

    def predict_frame(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        return self.task.predict(self.outputs(self.encoder.transform(frame)), self.schema.classes)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Check and predict request rows (raises :class:`RowError`)."""
        return self.predict_frame(check_rows(self.schema, rows))
