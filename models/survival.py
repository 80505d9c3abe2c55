"""Cox proportional-hazards models, their partial-likelihood loss and the concordance index.

A Cox model outputs one number per patient, the log hazard ratio ``eta = f(x)`` (the
"risk score"); the baseline hazard is left unspecified. Targets are a float tensor of
shape ``(n, 2)``: ``[time, event]`` with ``event`` 1 for an observed event (death) and 0
for a censored follow-up.

Families: ``cox_linear`` (``eta = w·x``, no intercept: the partial likelihood does not
see one) and ``cox_mlp`` (an MLP with a single output, "DeepSurv"-style). Task:
``survival`` (:class:`SurvivalTask`).

DP-SGD and the partial likelihood
---------------------------------
The Cox partial likelihood is not a sum of independent per-patient terms: each event's
term divides by a sum over its *risk set* (everyone still under observation at that
time). In a mini-batch we use the batch as the population, i.e. the risk set of an event
is the batch's patients with a time at or after it (Breslow's handling of ties):

    L(batch) = -(1/n) · Σ_{i: event_i=1} [ eta_i - log Σ_{j in batch: t_j >= t_i} exp(eta_j) ]

Opacus computes per-sample gradients with hooks on each layer: the gradient it assigns
to patient ``i`` is ``dL/d eta_i · d eta_i/d theta`` (the backpropagated gradient at
``i``'s own output times ``i``'s own activations), and these terms add up to the true
batch gradient. It clips each term to ``max_grad_norm`` and adds Gaussian noise, and the
accountant reports ε as if each patient influenced only its own clipped term.

**Caveat.** That last assumption does not hold exactly for Cox: ``dL/d eta_i`` also
depends on the other patients of the batch through the risk-set denominators, so adding
or removing one patient changes the other patients' (clipped) terms too, not just its
own. The reported ε is therefore the ε of the per-patient *gradient contributions*, not a
rigorous record-level guarantee; the true sensitivity of the summed gradient to one
patient is larger than ``max_grad_norm`` (in the worst case it grows with the batch
size). This is the usual practice for DP-SGD on Cox models and the honest statement is
that the guarantee is approximate. A loss that decomposes per patient (a discrete-time
survival model with a per-interval logistic hazard) would give an exact guarantee; it
is not implemented here. The loss is averaged over the batch's *patients* ``n`` (not its
events) so that Opacus's ``loss_reduction="mean"`` rescaling by the batch size yields
exactly the per-patient terms above. A batch without an event has loss 0 and gradient 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from models.layers import hidden_layers
from models.spec import ModelSpec


def _check_targets(targets: torch.Tensor | np.ndarray) -> None:
    if targets.ndim != 2 or targets.shape[1] != 2:
        raise ValueError(
            f"survival targets must have shape (n, 2) = [time, event], got {tuple(targets.shape)}"
        )


def cox_partial_likelihood_sum(risk: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative Cox log partial likelihood (Breslow ties), *summed* over the events.

    ``risk``: (n,) or (n, 1) log hazard ratios; ``targets``: (n, 2) ``[time, event]``.
    The risk set of an event at ``t_i`` is every row with ``t_j >= t_i`` (tied times are
    in each other's risk sets: Breslow). O(n²) memory, meant for batches.
    """
    _check_targets(targets)
    eta = risk.reshape(-1)
    time = targets[:, 0].to(eta.dtype)
    event = targets[:, 1].to(eta.dtype)
    if eta.numel() == 0:
        return eta.sum()
    at_risk = time.unsqueeze(0) >= time.unsqueeze(1)  # [i, j]: j is at risk when i fails
    scores = eta.unsqueeze(0).expand(eta.numel(), -1)
    log_denominator = torch.logsumexp(scores.masked_fill(~at_risk, float("-inf")), dim=1)
    return -(event * (eta - log_denominator)).sum()


def cox_loss(risk: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss: :func:`cox_partial_likelihood_sum` divided by the batch size.

    See the module docstring for why the batch size (not the event count) and for what
    this means under DP-SGD.
    """
    n = max(int(risk.shape[0]), 1)
    return cox_partial_likelihood_sum(risk, targets) / n


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index: of all comparable pairs, the share ordered correctly.

    A pair (i, j) is comparable when ``i`` had an event and ``t_i < t_j``, or
    ``t_i == t_j`` and ``j`` is censored (an event before a censoring at the same time,
    the convention of lifelines and scikit-survival). It is concordant when
    ``risk_i > risk_j``; tied risks count 1/2. Returns 0.5 when no pair is comparable
    (and NaN for no rows).
    """
    time = np.asarray(time, dtype=float).reshape(-1)
    event = np.asarray(event).astype(bool).reshape(-1)
    risk = np.asarray(risk, dtype=float).reshape(-1)
    if not (len(time) == len(event) == len(risk)):
        raise ValueError("time, event and risk must have the same length")
    if len(time) == 0:
        return float("nan")
    concordant = 0.0
    comparable = 0
    for i in np.flatnonzero(event):
        later = (time > time[i]) | ((time == time[i]) & ~event)
        later[i] = False
        count = int(later.sum())
        if count == 0:
            continue
        comparable += count
        others = risk[later]
        concordant += float((risk[i] > others).sum()) + 0.5 * float((risk[i] == others).sum())
    return concordant / comparable if comparable else 0.5


class SurvivalTask:
    """Cox proportional hazards: one output (the log hazard ratio).

    ``loss`` is :func:`cox_loss`; ``predict`` gives each row's risk score and hazard
    ratio (relative to a patient whose risk score is 0: for standardized inputs and a
    linear model, the average patient); ``metrics`` gives Harrell's C-index and the mean
    negative log partial likelihood per event over the whole evaluation set.
    """

    name = "survival"

    def __init__(self, **_: Any):
        pass

    def output_dim(self, num_classes: int) -> int:
        """One output, the log hazard ratio."""
        return 1

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """:func:`cox_loss` of the batch."""
        return cox_loss(outputs, targets)

    def predict(self, outputs: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
        """Per row ``{"risk_score", "hazard_ratio"}`` (``exp`` of the score clipped to ±50)."""
        scores = np.asarray(outputs, dtype=float).reshape(-1)
        return [
            {"risk_score": float(s), "hazard_ratio": float(np.exp(np.clip(s, -50, 50)))}
            for s in scores
        ]

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """C-index, negative log partial likelihood per event, and the event count."""
        targets = np.asarray(targets, dtype=float)
        _check_targets(targets)
        risk = np.asarray(outputs, dtype=float).reshape(-1)
        events = float(targets[:, 1].sum())
        nll = float(
            cox_partial_likelihood_sum(
                torch.as_tensor(risk, dtype=torch.float64), torch.as_tensor(targets)
            )
        )
        return {
            "c_index": concordance_index(targets[:, 0], targets[:, 1], risk),
            "neg_log_partial_likelihood": nll / events if events else 0.0,
            "events": events,
        }


def cox_linear(spec: ModelSpec) -> nn.Module:
    """``eta = w·x`` (one ``Linear`` without bias).

    Parameters
    ----------
    spec : ModelSpec
        Its ``input_dim``; ``output_dim`` must be 1.
    """
    _check_single_output(spec)
    return nn.Sequential(nn.Linear(spec.input_dim, 1, bias=False))


def cox_mlp(spec: ModelSpec) -> nn.Module:
    """An MLP with one output; its last layer has no bias (it cancels in the likelihood).

    Options: ``hidden`` (default ``[32]``), ``dropout`` (default 0).

    Parameters
    ----------
    spec : ModelSpec
        Its ``input_dim`` and options; ``output_dim`` must be 1.
    """
    _check_single_output(spec)
    layers, width = hidden_layers(spec)
    layers.append(nn.Linear(width, 1, bias=False))
    return nn.Sequential(*layers)


def _check_single_output(spec: ModelSpec) -> None:
    if spec.output_dim != 1:
        raise ValueError(f"{spec.kind}: a Cox model has one output, not {spec.output_dim}")
