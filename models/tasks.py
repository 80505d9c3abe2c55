"""What a model is trained for: the loss, how outputs become predictions, the metrics.

One small interface (:class:`Task`) with one implementation per task, looked up by name
with :func:`get_task`. Training, federated evaluation and the inference service all go
through it, so a prediction means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn


class Task(Protocol):
    """The interface every task implements."""

    name: str

    def output_dim(self, num_classes: int) -> int:
        """Width of the model's output for this task."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch (per-sample gradients come from Opacus)."""

    def predict(self, outputs: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
        """One JSON-able prediction per row."""

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """Evaluation metrics of raw outputs against targets."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


class BinaryClassification:
    """One logit; binary cross-entropy; predicts the positive class's probability.

    Parameters
    ----------
    class_weights : sequence of 2 floats, optional
        Loss weight of the negative and positive class (class-imbalance option).
    """

    name = "binary"

    def __init__(self, class_weights: Sequence[float] | None = None):
        self.pos_weight = None
        if class_weights is not None:
            self.pos_weight = torch.tensor([class_weights[1] / class_weights[0]])

    def output_dim(self, num_classes: int) -> int:
        """One logit."""
        return 1

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy on the logits, positives weighted by the class weights."""
        return nn.functional.binary_cross_entropy_with_logits(
            outputs.reshape(-1), targets.float().reshape(-1), pos_weight=self.pos_weight
        )

    def predict(self, outputs: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
        """Per row ``{"label", "probability"}``: the positive class's probability, cut at 0.5."""
        probs = _sigmoid(outputs.reshape(-1))
        return [{"label": classes[int(p >= 0.5)], "probability": float(p)} for p in probs]

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """Accuracy, balanced accuracy, F1; ROC AUC and PR AUC when both classes occur."""
        probs = _sigmoid(outputs.reshape(-1))
        pred = (probs >= 0.5).astype(int)
        y = targets.astype(int)
        out = {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
            "f1": float(skm.f1_score(y, pred, zero_division=0)),
        }
        if len(np.unique(y)) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y, probs))
            out["pr_auc"] = float(skm.average_precision_score(y, probs))
        return out


class MulticlassClassification:
    """One logit per class; cross-entropy; predicts the class probabilities.

    Parameters
    ----------
    class_weights : sequence of float, optional
        Loss weight of each class, in class-index order (class-imbalance option).
    """

    name = "multiclass"

    def __init__(self, class_weights: Sequence[float] | None = None):
        self.weight = None if class_weights is None else torch.tensor(list(class_weights))

    def output_dim(self, num_classes: int) -> int:
        """One logit per class."""
        return num_classes

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the logits, weighted by the class weights."""
        weight = None if self.weight is None else self.weight.to(outputs.dtype)
        return nn.functional.cross_entropy(outputs, targets.long().reshape(-1), weight=weight)

    def predict(self, outputs: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
        """Per row ``{"label", "probabilities"}``: the likeliest class and every class's."""
        probs = _softmax(outputs)
        return [
            {
                "label": classes[int(row.argmax())],
                "probabilities": {c: float(p) for c, p in zip(classes, row, strict=True)},
            }
            for row in probs
        ]

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """Accuracy, balanced accuracy, macro F1; one-vs-rest ROC AUC when every class occurs."""
        probs = _softmax(outputs)
        pred = probs.argmax(axis=1)
        y = targets.astype(int)
        out = {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
            "f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        }
        labels = list(range(probs.shape[1]))
        if len(np.unique(y)) == probs.shape[1]:
            out["roc_auc"] = float(skm.roc_auc_score(y, probs, multi_class="ovr", labels=labels))
        return out


class Regression:
    """One output; mean squared error; predicts the value."""

    name = "regression"

    def output_dim(self, num_classes: int) -> int:
        """One output."""
        return 1

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared error."""
        return nn.functional.mse_loss(outputs.reshape(-1), targets.float().reshape(-1))

    def predict(self, outputs: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
        """Per row ``{"value": output}`` (``classes`` is unused)."""
        return [{"value": float(v)} for v in outputs.reshape(-1)]

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """MSE, MAE and R² (R² is 0 for a single row)."""
        pred = outputs.reshape(-1)
        return {
            "mse": float(skm.mean_squared_error(targets, pred)),
            "mae": float(skm.mean_absolute_error(targets, pred)),
            "r2": float(skm.r2_score(targets, pred)) if len(targets) > 1 else 0.0,
        }
