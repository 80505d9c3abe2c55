"""Why did the model say that: per-input attributions by integrated gradients (Captum).

Integrated gradients (Sundararajan et al., 2017) attributes the difference between the
model's output at an input and at a *baseline* input to the input's coordinates. Its
*completeness* property: the attributions add up to ``output(x) - output(baseline)``
(up to the error of the path integral's quadrature, reported as ``convergence_delta``).

What is explained, per task: the positive class's logit (binary), the logit of the
predicted class (multiclass; or of a class the caller names), the predicted value in the
label's units (regression) and the risk score, i.e. the log hazard ratio (survival).

Baselines, per data kind (each is a "nothing notable" input):

- tables and notes: all zeros, i.e. every numeric feature at the federation's mean (its
  standardized value is 0), binary and categorical features off; an empty note;
- images: a black image;
- sequences: the same observed steps with every measurement at the federation's mean
  (the mask channel is kept, so the explanation is about values, not about which steps
  were recorded).

Attributions are computed on the encoded input and then shown per feature, pixel,
time step or word by the data kind (``DataKind.present_attributions``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from captum.attr import IntegratedGradients

if TYPE_CHECKING:
    from models.predictor import Predictor

METHOD = "integrated_gradients"
DEFAULT_STEPS = 128


@dataclass(frozen=True)
class Attribution:
    """Integrated-gradients attributions of one instance.

    Parameters
    ----------
    target : int
        Index of the model output explained.
    output, baseline_output : float
        The explained output at the instance and at the baseline (in the label's units
        for regression).
    values : ndarray
        One attribution per coordinate of the encoded input (same shape as it).
    convergence_delta : float
        ``values.sum() - (output - baseline_output)``: the quadrature error.
    """

    target: int
    output: float
    baseline_output: float
    values: np.ndarray
    convergence_delta: float


def baselines_for(kind: str, inputs: np.ndarray) -> np.ndarray:
    """The baseline of each encoded input (see the module docstring)."""
    baselines = np.zeros_like(inputs)
    if kind == "sequence":
        baselines[..., -1] = inputs[..., -1]  # keep the mask channel
    return baselines


def integrated_gradients(
    predictor: Predictor,
    inputs: np.ndarray,
    targets: Sequence[int] | None = None,
    steps: int = DEFAULT_STEPS,
) -> list[Attribution]:
    """Attributions of encoded ``inputs`` for a predictor's model.

    Parameters
    ----------
    predictor : Predictor
        The model, its task and its data kind.
    inputs : ndarray
        Encoded instances (what ``Predictor.encode_rows`` returns).
    targets : sequence of int, optional
        The output index to explain per instance; by default the task's (see the module
        docstring).
    steps : int
        Points of the Gauss–Legendre path integral; more is more exact and slower.
    """
    model = predictor.model
    model.eval()
    x = torch.as_tensor(inputs, dtype=torch.float32)
    base = torch.as_tensor(baselines_for(predictor.kind.name, inputs), dtype=torch.float32)
    with torch.no_grad():
        raw = model(x).reshape(len(x), -1)
        raw_base = model(base).reshape(len(x), -1)
    if targets is None:
        multiclass = predictor.spec.task == "multiclass"
        targets = raw.argmax(dim=1).tolist() if multiclass else [0] * len(x)
    chosen = list(targets)
    values, delta = IntegratedGradients(model).attribute(
        x,
        baselines=base,
        target=chosen,
        n_steps=steps,
        method="gausslegendre",
        internal_batch_size=8 * steps,  # bounds memory: 8 instances per pass
        return_convergence_delta=True,
    )
    # Regression outputs are standardized; the decoding is affine, so its slope turns
    # attributions (differences of outputs) into the label's units.
    scale = float(
        predictor.encoder.decode_outputs(np.ones(1))[0]
        - predictor.encoder.decode_outputs(np.zeros(1))[0]
    )
    decoded = predictor.encoder.decode_outputs(raw.numpy())
    decoded_base = predictor.encoder.decode_outputs(raw_base.numpy())
    return [
        Attribution(
            target=int(t),
            output=float(decoded[i, t]),
            baseline_output=float(decoded_base[i, t]),
            values=values[i].detach().numpy() * scale,
            convergence_delta=float(delta[i]) * scale,
        )
        for i, t in enumerate(chosen)
    ]


def explain_rows(
    predictor: Predictor,
    rows: Sequence[Mapping[str, Any]],
    steps: int = DEFAULT_STEPS,
) -> list[dict[str, Any]]:
    """Check request instances and explain the model's output for each, JSON-able.

    Each explanation holds ``method``, ``explains`` (what output), ``output``,
    ``baseline_output``, ``convergence_delta`` and ``attributions`` as the data kind
    shows them (per feature, a pixel map, per time step, per word). Raises ``RowError``
    for an instance that does not match the schema.
    """
    inputs = predictor.encode_rows(rows)
    explained = []
    for attribution, row in zip(
        integrated_gradients(predictor, inputs, steps=steps), rows, strict=True
    ):
        explained.append(
            {
                "method": METHOD,
                "explains": _what(predictor, attribution.target),
                "output": attribution.output,
                "baseline_output": attribution.baseline_output,
                "convergence_delta": attribution.convergence_delta,
                "attributions": predictor.kind.present_attributions(
                    predictor.schema, attribution.values, row
                ),
            }
        )
    return explained


def _what(predictor: Predictor, target: int) -> str:
    task, classes = predictor.spec.task, predictor.schema.classes
    if task == "binary":
        return f"logit of class '{classes[1]}'"
    if task == "multiclass":
        return f"logit of class '{classes[target]}'"
    if task == "survival":
        return "risk score (log hazard ratio)"
    return f"predicted '{predictor.schema.label}'"
