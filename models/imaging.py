"""A small convolutional network for 2D medical images, valid for Opacus DP-SGD.

DP-SGD needs a gradient per sample; batch normalization mixes the samples of a batch,
so this network normalizes with ``GroupNorm`` (per sample) instead. Every layer with
parameters is one Opacus computes per-sample gradients for (``Conv2d``, ``GroupNorm``,
``Linear``).

Input: a float tensor ``(batch, channels, size, size)`` with values in [0, 1] (what
:mod:`models.data.kinds.image` produces). ``(batch, size, size)`` for one channel and
flat rows ``(batch, channels * size * size)`` (as a JSON request carries them) are
reshaped.
"""

from __future__ import annotations

import torch
from torch import nn

from models.spec import ModelSpec


def image_input_dim(channels: int, image_size: int) -> int:
    """The ``input_dim`` of a :class:`ModelSpec` for images: channels × size × size."""
    return int(channels) * int(image_size) * int(image_size)


class SmallCNN(nn.Module):
    """A small CNN: conv blocks, global average pool, then a linear head.

    Each block is 3×3 conv → GroupNorm → ReLU → 2×2 max-pool (the pool only while the
    feature map is at least 2 pixels wide).

    Parameters
    ----------
    channels : int
        1 (grey) or 3 (RGB).
    image_size : int
        Side of the square image in pixels.
    output_dim : int
        Width of the output (see the task).
    widths : list[int]
        Output channels of each conv block.
    groups : int
        GroupNorm groups (each width must be divisible by it).
    dropout : float
        Dropout before the head.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        output_dim: int,
        widths: list[int] | tuple[int, ...] = (16, 32),
        groups: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"cnn: channels must be 1 or 3, got {channels}")
        self.channels = int(channels)
        self.image_size = int(image_size)
        blocks: list[nn.Module] = []
        width = self.channels
        size = self.image_size
        for out in widths:
            if out % groups:
                raise ValueError(f"cnn: width {out} is not divisible by groups={groups}")
            blocks += [
                nn.Conv2d(width, out, kernel_size=3, padding=1),
                nn.GroupNorm(groups, out),
                nn.ReLU(),
            ]
            if size >= 2:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            width = out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for images ``(n, c, s, s)``, ``(n, s, s)`` (one channel) or flat rows.

        Raises ``ValueError`` when the images are not of the configured shape.
        """
        n = x.shape[0]
        c, s = self.channels, self.image_size
        if x.dim() == 2:
            x = x.reshape(n, c, s, s)
        elif x.dim() == 3 and c == 1:
            x = x.unsqueeze(1)
        if tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(
                f"cnn expects images of shape ({c}, {s}, {s}), got {tuple(x.shape[1:])}"
            )
        h = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(h))


def small_cnn(spec: ModelSpec) -> nn.Module:
    """The :class:`SmallCNN` a spec describes.

    Options: ``channels`` (1 or 3, default 1), ``image_size`` (default 28),
    ``widths`` (default ``[16, 32]``), ``groups`` (GroupNorm groups, default 4),
    ``dropout`` (default 0).

    Parameters
    ----------
    spec : ModelSpec
        The network's description; its ``input_dim`` must equal channels × size × size.

    Raises
    ------
    ValueError
        ``input_dim`` does not match the image shape, ``channels`` is not 1 or 3, or a
        width is not divisible by ``groups``.
    """
    channels = int(spec.options.get("channels", 1))
    image_size = int(spec.options.get("image_size", 28))
    if spec.input_dim != image_input_dim(channels, image_size):
        raise ValueError(
            f"cnn: input_dim {spec.input_dim} != channels*image_size^2 = "
            f"{image_input_dim(channels, image_size)}"
        )
    return SmallCNN(
        channels=channels,
        image_size=image_size,
        output_dim=spec.output_dim,
        widths=[int(w) for w in spec.options.get("widths", [16, 32])],
        groups=int(spec.options.get("groups", 4)),
        dropout=float(spec.options.get("dropout", 0.0)),
    )
