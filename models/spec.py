"""How a model is described, so the registry and the inference service can rebuild it.

A :class:`ModelSpec` is a small JSON-able record: which family of network (``kind``), the
task, input and output sizes and the family's own options.
``models.families.build_model(spec)`` makes a fresh, Opacus-compatible ``torch.nn.Module``
from it; the registry stores the spec in the version's manifest beside the weights, so no
training argument is needed to serve it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """A description of a network, enough to rebuild it.

    Parameters
    ----------
    kind : str
        The model family, e.g. ``logreg`` or ``mlp`` (see :func:`families`).
    task : str
        ``binary``, ``multiclass``, ``regression`` (or a family-specific task such as
        ``survival``); decides the loss and how outputs become predictions.
    input_dim : int
        Width of the encoded input (for tabular models, the encoder's column count).
    output_dim : int
        Number of outputs: 1 for binary and regression, the class count for multiclass.
    options : dict
        Family options (hidden sizes, dropout …), JSON values only.
    """

    kind: str
    task: str
    input_dim: int
    output_dim: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able dict (the registry manifest's ``model``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelSpec:
        """The spec from :meth:`to_dict`'s dict (``options`` may be absent)."""
        return cls(
            kind=str(raw["kind"]),
            task=str(raw["task"]),
            input_dim=int(raw["input_dim"]),
            output_dim=int(raw["output_dim"]),
            options=dict(raw.get("options", {})),
        )


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters and buffers by plain name (no Opacus ``_module.`` prefix)."""
    module = getattr(model, "_module", model)
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def set_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load plain-named weights; raises ``ValueError`` naming a missing or misshapen array."""
    module = getattr(model, "_module", model)
    state = module.state_dict()
    missing = set(state) - set(weights)
    if missing:
        raise ValueError(f"weights lack {sorted(missing)}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(np.shape(weights[name])):
            raise ValueError(
                f"weight '{name}' has shape {np.shape(weights[name])}, model expects "
                f"{tuple(tensor.shape)}"
            )
    module.load_state_dict({k: torch.as_tensor(np.asarray(weights[k])) for k in state})
