"""Networks for tabular data: logistic regression and a small MLP.

Both use only layers Opacus computes per-sample gradients for (Linear, activations,
Dropout), so they train under DP-SGD unchanged.
"""

from __future__ import annotations

from torch import nn

from models.layers import hidden_layers
from models.spec import ModelSpec


def logistic_regression(spec: ModelSpec) -> nn.Module:
    """A single linear layer.

    With a sigmoid/softmax loss this is (multinomial) logistic regression, with MSE it is
    linear regression.

    Parameters
    ----------
    spec : ModelSpec
        Its ``input_dim`` and ``output_dim``.
    """
    return nn.Sequential(nn.Linear(spec.input_dim, spec.output_dim))


def multilayer_perceptron(spec: ModelSpec) -> nn.Module:
    """Linear layers with ReLU between them.

    Options: ``hidden`` (list of layer widths, default ``[32]``), ``dropout`` (default 0).

    Parameters
    ----------
    spec : ModelSpec
        Its ``input_dim``, ``output_dim`` and options.
    """
    layers, width = hidden_layers(spec)
    layers.append(nn.Linear(width, spec.output_dim))
    return nn.Sequential(*layers)
