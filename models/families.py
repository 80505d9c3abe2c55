"""The built-in model families and tasks by name.

As in Opacus's ``accountants/registry.py``: this module imports the implementations
(:mod:`models.tabular`, :mod:`models.imaging`, :mod:`models.sequences`,
:mod:`models.survival`, :mod:`models.tasks`); they import only :mod:`models.spec` and
:mod:`models.layers`. A new family is a builder function in one of them and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models import imaging, sequences, survival, tabular
from models.spec import ModelSpec
from models.tasks import BinaryClassification, MulticlassClassification, Regression, Task

FamilyBuilder = Callable[[ModelSpec], nn.Module]

FAMILIES: dict[str, FamilyBuilder] = {
    "logreg": tabular.logistic_regression,
    "mlp": tabular.multilayer_perceptron,
    "cnn": imaging.small_cnn,
    "gru": sequences.gru,
    "lstm": sequences.lstm,
    "attention": sequences.attention,
    "cox_linear": survival.cox_linear,
    "cox_mlp": survival.cox_mlp,
}

TASKS: dict[str, Callable[..., Task]] = {
    "binary": BinaryClassification,
    "multiclass": MulticlassClassification,
    "regression": Regression,
    "survival": survival.SurvivalTask,
}


def families() -> list[str]:
    """The names of the known model families, sorted."""
    return sorted(FAMILIES)


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """A fresh model for ``spec``.

    Parameters
    ----------
    spec : ModelSpec
        The network's description.
    seed : int, optional
        Makes its initial weights reproducible.

    Raises
    ------
    ValueError
        The family is not known; the message lists the known ones.
    """
    if spec.kind not in FAMILIES:
        raise ValueError(f"unknown model kind '{spec.kind}'; known: {sorted(FAMILIES)}")
    if seed is not None:
        torch.manual_seed(seed)
    return FAMILIES[spec.kind](spec)


def get_task(name: str, **options: Any) -> Task:
    """The task of that name (``binary``, ``multiclass``, ``regression``, ``survival``).

    Parameters
    ----------
    name : str
        The task's name.
    **options
        The task's own options (``class_weights`` for classification).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; known: {sorted(TASKS)}")
    return TASKS[name](**options)


def task_for(spec: ModelSpec) -> Task:
    """The task a model is trained for.

    Parameters
    ----------
    spec : ModelSpec
        Its ``task``, and its ``class_weights`` option (one loss weight per class, for
        imbalanced classes) when it has one.
    """
    weights = spec.options.get("class_weights")
    return get_task(spec.task, **({"class_weights": weights} if weights else {}))
