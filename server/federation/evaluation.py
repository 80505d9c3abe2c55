"""The global model's metrics: on held-out data, and pooled over the sites' replies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.data.features import FeatureEncoder, Standardization
from models.data.kinds.registry import get_kind
from models.data.schema import SiteSchema
from models.families import build_model, task_for
from models.spec import ModelSpec, set_weights
from privacy.dp_sgd import evaluate_outputs
from protocol.federation import NUM_EXAMPLES, SITE_FIGURES


def evaluate_on_table(
    weights: dict[str, np.ndarray],
    spec: ModelSpec,
    schema: SiteSchema,
    standardization: Standardization,
    path: Path,
) -> dict[str, float]:
    """The global model's metrics on held-out data, read by the schema's data kind.

    Parameters
    ----------
    weights : dict of str to ndarray
        The global model.
    spec : ModelSpec
        Its network.
    schema : SiteSchema
        The federation's schema.
    standardization : Standardization
        The federated feature scaling.
    path : Path
        The held-out data (the simulation's global test set).
    """
    examples = get_kind(schema).load(path, schema)
    encoded = examples.encode(np.arange(examples.num_examples), standardization)
    encoder = FeatureEncoder(schema, standardization)
    model = build_model(spec)
    set_weights(model, weights)
    outputs = encoder.decode_outputs(evaluate_outputs(model, encoded.inputs))
    targets = encoder.decode_outputs(encoded.targets)
    metrics = task_for(spec).metrics(targets, outputs)
    metrics[NUM_EXAMPLES] = float(examples.num_examples)
    return metrics


def weighted_mean(per_site: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over the sites, weighted by their examples.

    Parameters
    ----------
    per_site : dict of str to dict
        Each site's metrics, with :data:`NUM_EXAMPLES`.
    """
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics in per_site.values():
        n = metrics.get(NUM_EXAMPLES, 0.0)
        for key, value in metrics.items():
            if key in SITE_FIGURES or value is None or not np.isfinite(value):
                continue
            totals[key] = totals.get(key, 0.0) + n * value
            weights[key] = weights.get(key, 0.0) + n
    return {k: totals[k] / weights[k] for k in totals if weights[k] > 0}
