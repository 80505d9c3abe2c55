"""Networks for tabular data: logistic regression and a small MLP.

Both use only layers Opacus computes per-sample gradients for (Linear, activations,
Dropout), so they train under DP-SGD unchanged.
"""

from __future__ import annotations

from torch import nn

from models.spec import ModelSpec, register_family


@register_family("logreg")
def logistic_regression(spec: ModelSpec) -> nn.Module:
    """A single linear layer; with a sigmoid/softmax loss this is (multinomial) logistic
    regression, with MSE it is linear regression."""
    return nn.Sequential(nn.Linear(spec.input_dim, spec.output_dim))


@register_family("mlp")
def multilayer_perceptron(spec: ModelSpec) -> nn.Module:
    """Linear layers with ReLU between them.

    Options: ``hidden`` (list of layer widths, default ``[32]``), ``dropout`` (default 0).
    """
    layers, width = hidden_layers(spec)
    layers.append(nn.Linear(width, spec.output_dim))
    return nn.Sequential(*layers)


def hidden_layers(spec: ModelSpec) -> tuple[list[nn.Module], int]:
    """The ReLU (and optional dropout) stack of ``spec.options`` ``hidden``/``dropout``,
    and the width of its last layer, for a head to be put on top."""
    hidden = [int(h) for h in spec.options.get("hidden", [32])]
    dropout = float(spec.options.get("dropout", 0.0))
    layers: list[nn.Module] = []
    width = spec.input_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return layers, width
