"""Local training at a site, with DP-SGD (Opacus) or without it.

With DP, Opacus clips each example's gradient to ``max_grad_norm``, adds Gaussian noise
of ``noise_multiplier × max_grad_norm`` to the sum, and draws batches by Poisson sampling
(each record joins each step with probability ``sample_rate``), which is what the
accountant assumes. Without DP the same loop runs with ordinary shuffled batches of the
same size: that is the baseline the DP overhead is measured against.

The trained weights are returned under the plain module's names (no ``_module.``).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.spec import get_weights
from models.tasks import Task

# The accountant Opacus composes with; the ledger composes the same way (privacy/ledger.py).
ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class DPSettings:
    """How much noise and clipping a DP-SGD session uses.

    Parameters
    ----------
    noise_multiplier : float
        σ relative to the clipping norm (from the site's ledger plan).
    max_grad_norm : float
        Per-example gradient clipping norm C.
    """

    noise_multiplier: float
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class LocalTrainingResult:
    """What one local training session produced.

    Parameters
    ----------
    weights : dict[str, ndarray]
        The trained plain state dict.
    num_examples : int
        Records in the site's training split.
    steps : int
        Optimizer steps taken (the accountant's step count).
    sample_rate : float
        Poisson sampling rate with DP; batch_size / n without.
    mean_loss : float
        Mean training loss over the non-empty batches.
    seconds : float
        Wall time of the training loop.
    """

    weights: dict[str, np.ndarray]
    num_examples: int
    steps: int
    sample_rate: float
    mean_loss: float
    seconds: float


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps per epoch; with Poisson sampling the sample rate is its inverse (as Opacus sets it)."""
    return max(1, -(-num_examples // batch_size))


def dp_sample_rate(num_examples: int, batch_size: int) -> float:
    """The Poisson sampling rate Opacus uses for this expected batch size.

    Parameters
    ----------
    num_examples : int
        The site's training examples.
    batch_size : int
        The expected batch size.
    """
    return 1.0 / batches_per_epoch(num_examples, batch_size)


def _backward(loss: torch.Tensor) -> None:
    """``loss.backward()`` without torch's warning about Opacus's hooks, once per step.

    Opacus's per-sample-gradient hooks are full backward hooks on each layer; the first
    layer's input is data, which needs no gradient, so torch warns on every backward pass
    (in every forked child of the site executor, i.e. every round) that the hook fires on
    the module's outputs, which is what Opacus relies on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Full backward hook is firing", category=UserWarning
        )
        loss.backward()


def train_locally(
    model: nn.Module,
    inputs: np.ndarray,
    targets: np.ndarray,
    task: Task,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    dp: DPSettings | None,
    proximal_mu: float = 0.0,
    global_weights: Mapping[str, np.ndarray] | None = None,
    seed: int | None = None,
) -> LocalTrainingResult:
    """Train ``model`` in place on one site's data and return its new weights.

    Parameters
    ----------
    model : nn.Module
        Starts from the global weights; must be Opacus-compatible when ``dp`` is set.
    inputs, targets : ndarray
        The encoded training split.
    task : Task
        Gives the loss.
    epochs, batch_size, learning_rate :
        Plain SGD settings; ``batch_size`` is the *expected* batch size under Poisson
        sampling.
    dp : DPSettings or None
        DP-SGD settings, or None for non-private training.
    proximal_mu : float
        FedProx's μ. Applied after each step as ``w -= lr·μ·(w − w_global)``: a function
        of public values only, so it keeps the DP guarantee (Opacus would not see a
        loss term that bypasses its per-sample hooks).
    global_weights : mapping, optional
        The round's global weights (needed when ``proximal_mu > 0``).
    seed : int, optional
        Seeds batch sampling and noise, for reproducible simulations. Without one (a
        deployment) both come from 64 bits of the operating system's entropy, drawn
        afresh for every session: never from a value the coordinator sent, and never
        from torch's default generator, whose seed is the same constant in every new
        process. (Opacus's ``secure_mode`` needs ``torchcsprng``, which does not install
        with this torch.)
    """
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    torch.manual_seed(seed)
    dataset = TensorDataset(torch.as_tensor(inputs), torch.as_tensor(targets))
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    sample_rate = dp_sample_rate(len(dataset), batch_size)
    if dp is not None:
        with warnings.catch_warnings():
            # Opacus warns that secure_mode is off; the CSPRNG is for hardened deployments.
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant=ACCOUNTANT)
            model, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm,
                poisson_sampling=True,
                noise_generator=generator,
            )
    anchors = _proximal_anchors(model, global_weights) if proximal_mu > 0 else None

    model.train()
    start = time.perf_counter()
    steps, losses = 0, []
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            if len(x) > 0:
                loss = task.loss(model(x), y)
                _backward(loss)
                losses.append(float(loss.detach()))
            # An empty Poisson batch still takes a (noise-only) step: the accountant
            # counts every sampled step.
            optimizer.step()
            steps += 1
            if anchors is not None:
                with torch.no_grad():
                    for param, anchor in anchors:
                        param.sub_(learning_rate * proximal_mu * (param - anchor))
    seconds = time.perf_counter() - start
    return LocalTrainingResult(
        weights=get_weights(model),
        num_examples=len(dataset),
        steps=steps,
        sample_rate=sample_rate,
        mean_loss=float(np.mean(losses)) if losses else float("nan"),
        seconds=seconds,
    )


def _proximal_anchors(
    model: nn.Module, global_weights: Mapping[str, np.ndarray] | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if global_weights is None:
        raise ValueError("FedProx needs the round's global weights")
    module = getattr(model, "_module", model)
    return [
        (param, torch.as_tensor(np.asarray(global_weights[name]), dtype=param.dtype))
        for name, param in module.named_parameters()
    ]


def evaluate_outputs(model: nn.Module, inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's raw outputs on ``inputs`` (no gradient, eval mode)."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            chunk = torch.as_tensor(inputs[start : start + batch_size])
            outputs.append(model(chunk).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 1))
