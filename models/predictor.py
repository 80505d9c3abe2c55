"""A registered model made ready to answer: request instances in, predictions out.

The same code computes predictions for the inference service and for local checks (the
demo prints the service's answers beside this class's own), so both agree by
construction. Instances are checked and encoded by the schema's data kind
(``models.data.kinds``): for tables, dicts by feature name; for images, sequences and notes,
the shapes their modules describe. Errors name the instance (``row``) and the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from models.data.features import FeatureEncoder, Standardization
from models.data.kinds.base import RowError
from models.data.kinds.registry import get_kind, parse_schema
from models.data.kinds.table import check_rows
from models.data.schema import SiteSchema
from models.families import build_model, task_for
from models.spec import ModelSpec, set_weights

__all__ = ["Predictor", "RowError", "check_rows"]


class Predictor:
    """A rebuilt model with its encoder.

    Parameters
    ----------
    spec : ModelSpec
        How to build the network.
    weights : mapping of str to ndarray
        Its plain state dict.
    schema : SiteSchema
        What requests must carry (its data kind checks and encodes them).
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
        self.standardization = standardization
        self.kind = get_kind(schema)
        self.encoder = FeatureEncoder(schema, standardization)
        self.task = task_for(spec)
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

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Check request instances and encode them as model inputs (raises :class:`RowError`)."""
        return self.kind.encode_request(self.schema, self.standardization, rows)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Check and predict request instances (raises :class:`RowError`)."""
        return self.task.predict(self.outputs(self.encode_rows(rows)), self.schema.classes)
