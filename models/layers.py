"""Building blocks made only of layers Opacus computes per-sample gradients for.

Opacus has per-sample gradients for ``Linear`` (also applied to every time step of a
sequence, or several times in one forward pass: it adds up the contributions),
``LayerNorm``, ``Conv2d``, ``GroupNorm`` and ``Embedding``, but not for ``nn.GRU``,
``nn.LSTM`` or ``nn.MultiheadAttention``. The recurrent cells and the attention here are
written with ``Linear`` pieces, so every family trains under DP-SGD unchanged and
``models`` needs nothing from Opacus.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.spec import ModelSpec


def hidden_layers(spec: ModelSpec) -> tuple[list[nn.Module], int]:
    """The ReLU (and optional dropout) stack of ``spec.options`` ``hidden``/``dropout``.

    Parameters
    ----------
    spec : ModelSpec
        Its ``input_dim`` and the options ``hidden`` (layer widths, default ``[32]``) and
        ``dropout`` (default 0).

    Returns
    -------
    tuple of (list of nn.Module, int)
        The layers, and the width of the last one, for a head to be put on top.
    """
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


class GRUCell(nn.Module):
    """One GRU layer (PyTorch's gate equations) over a whole batch-first sequence.

    Parameters
    ----------
    input_size, hidden_size : int
        Widths of each step's input and of the hidden state.
    """

    gates = 3

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, self.gates * hidden_size)
        self.hh = nn.Linear(hidden_size, self.gates * hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden state of every step, ``(batch, time, hidden)``."""
        inputs = self.ih(x)  # all steps at once: only the recurrence is step by step
        h = x.new_zeros(x.shape[0], self.hidden_size)
        outputs = []
        for step in range(x.shape[1]):
            ir, iz, i_n = inputs[:, step].chunk(3, dim=-1)
            hr, hz, h_n = self.hh(h).chunk(3, dim=-1)
            reset = torch.sigmoid(ir + hr)
            update = torch.sigmoid(iz + hz)
            candidate = torch.tanh(i_n + reset * h_n)
            h = (1 - update) * candidate + update * h
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class LSTMCell(GRUCell):
    """One LSTM layer (PyTorch's gate equations) over a whole batch-first sequence."""

    gates = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden state of every step, ``(batch, time, hidden)``."""
        inputs = self.ih(x)
        h = x.new_zeros(x.shape[0], self.hidden_size)
        c = torch.zeros_like(h)
        outputs = []
        for step in range(x.shape[1]):
            i, f, g, o = (inputs[:, step] + self.hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class Recurrent(nn.Module):
    """Stacked GRU or LSTM layers, batch first, with dropout between layers.

    Parameters
    ----------
    cell : str
        ``gru`` or ``lstm``.
    input_size, hidden_size : int
        Widths of each step's input and of the hidden state.
    num_layers : int
        How many layers are stacked.
    dropout : float
        Dropout on the outputs of every layer but the last.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        kind = {"gru": GRUCell, "lstm": LSTMCell}[cell]
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(kind(size, hidden_size) for size in sizes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's hidden state at every step, ``(batch, time, hidden)``."""
        for index, layer in enumerate(self.layers):
            if index:
                x = self.dropout(x)
            x = layer(x)
        return x


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention, batch first, from four ``Linear`` layers.

    Parameters
    ----------
    embed_dim : int
        Width of the queries, keys and values.
    num_heads : int
        Number of heads (``embed_dim`` must be divisible by it).
    dropout : float
        Dropout on the attention weights.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.qlinear = nn.Linear(embed_dim, embed_dim)
        self.klinear = nn.Linear(embed_dim, embed_dim)
        self.vlinear = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention output ``(batch, time, embed)`` and, if asked, the head-averaged weights.

        ``key_padding_mask`` is True at the key steps to ignore.
        """
        bsz, tgt_len, embed = query.shape
        src_len = key.shape[1]
        heads, head_dim = self.num_heads, self.head_dim
        q = self.qlinear(query) * head_dim**-0.5
        k = self.klinear(key)
        v = self.vlinear(value)
        q = q.reshape(bsz, tgt_len, heads, head_dim).transpose(1, 2)
        k = k.reshape(bsz, src_len, heads, head_dim).transpose(1, 2)
        v = v.reshape(bsz, src_len, heads, head_dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2)  # (batch, heads, tgt, src)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        weights = self.dropout(F.softmax(scores, dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(bsz, tgt_len, embed)
        return self.out_proj(out), (weights.mean(dim=1) if need_weights else None)
