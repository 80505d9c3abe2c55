"""Networks for per-patient time series (vital signs, lab values), valid for Opacus DP-SGD.

Input layout (one tensor per patient, so a ``TensorDataset`` and Opacus's Poisson
sampling work unchanged): a float tensor ``(batch, time, features + 1)``. The first
``features`` channels are the (standardized) measurements of each time step; the last
channel is 1 where the step is a real observation and 0 where it is padding. Shorter
series are padded (at the end, by :mod:`models.data.kinds.sequence`) with zeros and mask
0. ``ModelSpec.input_dim`` is the number of *features*, without the mask channel.

Families:

- ``gru`` / ``lstm``: recurrent layers built from ``Linear`` pieces
  (:class:`models.layers.Recurrent`, so per-sample gradients exist), then the hidden
  state of the last observed step (``pooling="last"``) or the mean over observed steps
  (``"mean"``).
- ``attention``: one self-attention encoder block (:class:`models.layers.SelfAttention`)
  with the padding as ``key_padding_mask``, fixed sinusoidal positions, masked mean
  pooling.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.layers import Recurrent, SelfAttention
from models.spec import ModelSpec


def split_mask(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, mask)`` of a packed ``(batch, time, features + 1)`` tensor."""
    if x.dim() != 3:
        raise ValueError(f"sequence models expect (batch, time, features+1), got {tuple(x.shape)}")
    return x[..., :-1], x[..., -1]


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h`` (batch, time, dim) over the steps where ``mask`` is 1."""
    weights = mask.unsqueeze(-1)
    return (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def last_observed(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``h`` at each row's last step with mask 1 (step 0 if there is none)."""
    steps = torch.arange(mask.shape[1], device=mask.device, dtype=h.dtype)
    last = (mask * (steps + 1)).argmax(dim=1)  # +1 so an all-zero row picks step 0
    return h[torch.arange(h.shape[0], device=h.device), last]


class RecurrentClassifier(nn.Module):
    """A DP recurrent network over the packed sequence, then a linear head.

    The mask channel is part of the recurrent input, so the network also sees gaps.

    Parameters
    ----------
    cell : str
        ``gru`` or ``lstm``.
    features : int
        Measurements per step (the input's width without the mask channel).
    output_dim : int
        Width of the output (see the task).
    hidden : int
        Width of the hidden state.
    num_layers : int
        Stacked recurrent layers.
    dropout : float
        Dropout between recurrent layers (ignored with one layer).
    pooling : str
        ``last`` (the last observed step's state) or ``mean`` (mean over observed steps).
    """

    def __init__(
        self,
        cell: str,
        features: int,
        output_dim: int,
        hidden: int = 32,
        num_layers: int = 1,
        dropout: float = 0.0,
        pooling: str = "last",
    ):
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"{cell}: pooling must be 'last' or 'mean', got {pooling!r}")
        self.features = int(features)
        self.pooling = pooling
        self.rnn = Recurrent(
            cell,
            self.features + 1,
            hidden,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(hidden, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for a packed ``(batch, time, features + 1)`` tensor."""
        _check_width(x, self.features)
        _, mask = split_mask(x)
        out = self.rnn(x)
        pooled = last_observed(out, mask) if self.pooling == "last" else masked_mean(out, mask)
        return self.head(pooled)


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """The fixed sinusoidal position table of "Attention Is All You Need".

    Parameters
    ----------
    max_len : int
        Number of positions.
    dim : int
        Width of each position's vector.

    Returns
    -------
    Tensor
        ``(max_len, dim)``: sines in the even columns, cosines in the odd ones.
    """
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
    return table


class AttentionClassifier(nn.Module):
    """One self-attention encoder block over the packed sequence, then a linear head.

    Linear embedding + fixed positions → one post-norm self-attention block with a
    feed-forward layer → masked mean over observed steps → linear head.

    Parameters
    ----------
    features : int
        Measurements per step (the input's width without the mask channel).
    output_dim : int
        Width of the output (see the task).
    d_model : int
        Width of the embedding.
    heads : int
        Attention heads (``d_model`` must be divisible by it).
    dropout : float
        Dropout on the attention weights and the residual branches.
    max_len : int
        The most steps a sequence may have.
    """

    positions: torch.Tensor  # the sinusoidal table, registered as a buffer

    def __init__(
        self,
        features: int,
        output_dim: int,
        d_model: int = 32,
        heads: int = 2,
        dropout: float = 0.0,
        max_len: int = 512,
    ):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"attention: d_model {d_model} is not divisible by heads {heads}")
        self.features = int(features)
        self.max_len = int(max_len)
        self.embed = nn.Linear(self.features + 1, d_model)
        self.register_buffer("positions", sinusoidal_positions(self.max_len, d_model))
        self.attn = SelfAttention(d_model, heads, dropout=dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.ReLU(), nn.Linear(2 * d_model, d_model)
        )
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(d_model, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for a packed ``(batch, time, features + 1)`` tensor (``time <= max_len``)."""
        _check_width(x, self.features)
        _, mask = split_mask(x)
        steps = x.shape[1]
        if steps > self.max_len:
            raise ValueError(f"attention: {steps} steps exceed max_len {self.max_len}")
        h = self.embed(x) + self.positions[:steps]
        padding = mask < 0.5
        # a row without any observed step attends to its first step instead of nothing
        padding[:, 0] = padding[:, 0] & (mask.sum(1) > 0)
        a, _ = self.attn(h, h, h, key_padding_mask=padding)
        h = self.norm1(h + self.drop(a))
        h = self.norm2(h + self.drop(self.ff(h)))
        return self.head(masked_mean(h, mask))


def _check_width(x: torch.Tensor, features: int) -> None:
    if x.dim() != 3 or x.shape[-1] != features + 1:
        raise ValueError(
            f"expected (batch, time, {features}+1) with the mask as last channel, "
            f"got {tuple(x.shape)}"
        )


def _recurrent(cell: str, spec: ModelSpec) -> nn.Module:
    o = spec.options
    return RecurrentClassifier(
        cell,
        spec.input_dim,
        spec.output_dim,
        hidden=int(o.get("hidden", 32)),
        num_layers=int(o.get("num_layers", 1)),
        dropout=float(o.get("dropout", 0.0)),
        pooling=str(o.get("pooling", "last")),
    )


def gru(spec: ModelSpec) -> nn.Module:
    """A GRU :class:`RecurrentClassifier` for a spec.

    Options: ``hidden`` (32), ``num_layers`` (1), ``dropout`` (0, between layers),
    ``pooling`` (``last`` | ``mean``).

    Parameters
    ----------
    spec : ModelSpec
        Its ``input_dim`` (measurements per step), ``output_dim`` and options.
    """
    return _recurrent("gru", spec)


def lstm(spec: ModelSpec) -> nn.Module:
    """An LSTM :class:`RecurrentClassifier` for a spec; options as :func:`gru`.

    Parameters
    ----------
    spec : ModelSpec
        Its ``input_dim`` (measurements per step), ``output_dim`` and options.
    """
    return _recurrent("lstm", spec)


def attention(spec: ModelSpec) -> nn.Module:
    """An :class:`AttentionClassifier` for a spec.

    Options: ``d_model`` (32), ``heads`` (2), ``dropout`` (0), ``max_len`` (512 steps).

    Parameters
    ----------
    spec : ModelSpec
        Its ``input_dim`` (measurements per step), ``output_dim`` and options.
    """
    o = spec.options
    return AttentionClassifier(
        spec.input_dim,
        spec.output_dim,
        d_model=int(o.get("d_model", 32)),
        heads=int(o.get("heads", 2)),
        dropout=float(o.get("dropout", 0.0)),
        max_len=int(o.get("max_len", 512)),
    )
