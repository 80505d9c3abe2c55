"""Which training methods buy utility at ε = 1 per site: measured, one change at a time.

Breast Cancer Wisconsin, 5 sites (IID and Dirichlet α = 0.5), ε = 1 per site with the
statistics release included. Each candidate changes the settings before this work
(:data:`BEFORE`) or, below them, today's defaults (:data:`DEFAULTS`); most are run
settings, a few are *probes*: a change inside the code made for this measurement only
(weight decay, a larger bias learning rate, other feature scalings, a zero initial model,
FedAvgM at the server, a public log scaling of the features), to learn whether the method
is worth building. Two probes are not private and never a setting: DP-SGD without its
noise, and features centred by the data set's true means; with the no-DP rows they tell
what limits the defaults. Every
federation goes through the real round loop and ClientApp (DP-SGD, ledgers) in this
process (``simulations.in_process``). Averaging the last k rounds' global models
(post-processing: no ε) is scored for every run from the round models.

Every row runs on the Breast Cancer schema it was measured on (:data:`SCHEMAS`): the rows
before ``log-defaults`` on all 30 features each declared ``[0, max]`` and scaled linearly,
``log-defaults`` and the rows after it on the 30 features' published ranges with
``transform = "log"`` (which the public log-scaling probe led to), or the subset a row
names. The schema shipped now is ``log-defaults+mean+worst20``'s: the 20 means and
worsts, without the standard errors. 20-seed rows are also paired seed by seed with the
row they change (:func:`paired_baseline`).

The target is judged on seeds 0-4 (every seed ROC-AUC ≥ 0.98, median accuracy ≥ 0.965);
the settings compared with the defaults also run on seeds 5-19, and their 20-seed means
tell a method's gain from five seeds' luck.

Each run prints one line (its ROC-AUC / accuracy for k = 1, 3, 5) and is appended, with
every round's global model's accuracy (``round_accuracy``; runs from before it was kept
have none), to
``results/utility_methods_runs.jsonl`` (skipped when started again); the summary per
candidate, partition and k is printed and written to ``results/utility_methods.{json,md}``.

    .venv/bin/python benchmarks/utility_methods.py                     # every candidate
    .venv/bin/python benchmarks/utility_methods.py --only ranges full  # some
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg, FedAvgM
from sklearn.datasets import load_breast_cancer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runs_log import load_runs, record_run  # noqa: E402

import privacy.budget as budget  # noqa: E402
import privacy.dp_sgd as dp_sgd  # noqa: E402
import server.federation.rounds as rounds  # noqa: E402
import simulations.datasets as datasets  # noqa: E402
from models.data.features import FeatureEncoder, Standardization, declared_bounds  # noqa: E402
from models.data.schema import FeatureSpec  # noqa: E402
from server.federation.evaluation import evaluate_on_table  # noqa: E402
from server.settings import RunSettings  # noqa: E402
from simulations.datasets import BuiltinDataset, breast_cancer  # noqa: E402
from simulations.in_process import run_in_process  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PARTITIONS = ("iid", "dirichlet")
SEEDS = 5
MANY_SEEDS = 20
TAILS = (1, 3, 5, 10)
TARGET_ROC_AUC_MIN = 0.98
TARGET_ACCURACY_MEDIAN = 0.965
# The settings before this work: what every candidate changes.
BEFORE: dict[str, Any] = {
    "statistics_epsilon_share": 0.2,
    "learning_rate": 0.1,
    "batch_size": 16,
    "num_server_rounds": 10,
    "local_epochs": 1,
    "strategy": "fedavg",
}
# RDP's ε for the σ Opacus's PRV accountant plans at ε = 1 for the DP-SGD plan of the
# row it was tried on, full+lr2 (q = 0.2, 50 steps, δ = 1e-5: σ 5.557 against RDP's
# 5.981), printed by `prv_equivalent_epsilon`; running at this RDP ε trains with PRV's σ.
PRV_EQUIVALENT_EPSILON = 1.087

Probe = Callable[[], Iterator[None]]


@dataclass(frozen=True)
class Candidate:
    """One method tried.

    Parameters
    ----------
    name : str
        Row name.
    what : str
        The change, in words.
    changes : dict
        ``RunSettings`` values changed from :data:`BEFORE`.
    probe : callable, optional
        A context manager changing code for the measurement only.
    seeds : int
        Seeds run per partition (the target is judged on the first :data:`SEEDS`; more
        seeds give a mean that tells small differences from the seed's luck).
    schema : str
        The Breast Cancer schema it runs on, a key of :data:`SCHEMAS`: ``linear`` (all 30
        features, each ``[0, max]``, linear: every row before ``log-defaults``) or
        ``log30`` (all 30, published ranges, ``transform = "log"``; a probe may take a
        subset).
    """

    name: str
    what: str
    changes: dict[str, Any] = field(default_factory=dict)
    probe: Probe | None = None
    seeds: int = SEEDS
    schema: str = "linear"


# The standard errors' published ranges (the table ``simulations.datasets`` copies), for
# the rows measured while the schema declared all 30 measurements.
STANDARD_ERROR_RANGES: dict[str, tuple[str, str]] = {
    "radius error": ("0.112", "2.873"),
    "texture error": ("0.36", "4.885"),
    "perimeter error": ("0.757", "21.98"),
    "area error": ("6.802", "542.2"),
    "smoothness error": ("0.002", "0.031"),
    "compactness error": ("0.002", "0.135"),
    "concavity error": ("0.0", "0.396"),
    "concave points error": ("0.0", "0.053"),
    "symmetry error": ("0.008", "0.079"),
    "fractal dimension error": ("0.001", "0.03"),
}


def thirty_features() -> BuiltinDataset:
    """Breast Cancer as shipped before the standard errors were left out: 30 features."""
    published = {**datasets.BREAST_CANCER_PUBLISHED_RANGES, **STANDARD_ERROR_RANGES}
    return breast_cancer({name: published[name] for name in load_breast_cancer().feature_names})


def linear_breast_cancer() -> BuiltinDataset:
    """The 30 features on the schema before the log scale: each ``[0, data max]``, linear."""
    dataset = thirty_features()
    features = tuple(
        FeatureSpec(f.name, "numeric", min=0.0, max=float(dataset.examples[f.name].max()))
        for f in dataset.schema.features
    )
    return replace(dataset, schema=replace(dataset.schema, features=features))


# The schema a candidate runs on: every row before ``log-defaults`` on the linear one,
# ``log-defaults`` and the rows after it on the 30 log-scaled features (shipped until the
# standard errors were left out) or the subset a row's probe names
# (``log-defaults+mean+worst20``: the schema as shipped now).
SCHEMAS: dict[str, Callable[[], BuiltinDataset]] = {
    "linear": linear_breast_cancer,
    "log30": thirty_features,
}


def on_schema(name: str) -> AbstractContextManager[Any]:
    """Federations on Breast Cancer's schema ``name`` (a key of :data:`SCHEMAS`)."""
    return _as_breast_cancer(SCHEMAS[name])


def _as_breast_cancer(build: Callable[[], BuiltinDataset]) -> AbstractContextManager[Any]:
    """Federations on ``build()``'s data set wherever they load ``breast_cancer``."""
    return patch.dict(datasets.DATASETS, {"breast_cancer": build})


# The three features of the separating plane published with the data set (UCI's
# wdbc.names: "Worst Area, Worst Smoothness and Mean Texture", 97.5 % estimated accuracy by
# repeated 10-fold cross-validation, Street, Wolberg and Mangasarian 1993): public
# knowledge, no site's data. DP-SGD's noise grows with the model's dimension (31 → 4).
PUBLISHED_PLANE = ("mean_texture", "worst_area", "worst_smoothness")
WORST = tuple(f"worst_{m}" for m in (
    "radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
    "concave_points", "symmetry", "fractal_dimension",
))  # fmt: skip


MEAN = tuple(w.replace("worst_", "mean_") for w in WORST)


def feature_subset(names: tuple[str, ...]) -> Probe:
    """Federations on the 30 log-scaled features restricted to ``names``."""

    def subset() -> BuiltinDataset:
        dataset = thirty_features()
        features = tuple(f for f in dataset.schema.features if f.name in names)
        assert len(features) == len(names), [f.name for f in dataset.schema.features]
        columns = [f.name for f in features] + [dataset.schema.label]
        return replace(
            dataset,
            schema=replace(dataset.schema, features=features),
            examples=dataset.examples[columns],
        )

    return lambda: _as_breast_cancer(subset)


@contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def _both(first: Probe, second: Probe) -> Iterator[None]:
    """Two probes at once."""
    with first(), second():
        yield


def weight_decay(decay: float) -> Probe:
    """Local SGD with weight decay (applied to the noisy gradient: post-processing)."""
    sgd = dp_sgd.torch.optim.SGD

    def make(params, lr, **kw):
        return sgd(params, lr=lr, weight_decay=decay, **kw)

    return lambda: _patched(dp_sgd.torch.optim, "SGD", make)


def bias_learning_rate(factor: float) -> Probe:
    """The bias (1-d parameters) learns ``factor`` times faster than the weights."""
    sgd = dp_sgd.torch.optim.SGD

    def make(params, lr, **kw):
        params = list(params)
        groups = [
            {"params": [p for p in params if p.ndim != 1]},
            {"params": [p for p in params if p.ndim == 1], "lr": lr * factor},
        ]
        return sgd(groups, lr=lr, **kw)

    return lambda: _patched(dp_sgd.torch.optim, "SGD", make)


def zero_initial_model() -> Probe:
    """The run's initial model all zeros instead of a seeded random draw."""
    build = rounds.build_model

    def make(spec, seed=None):
        model = build(spec, seed=seed)
        for parameter in model.parameters():
            dp_sgd.torch.nn.init.zeros_(parameter)
        return model

    return lambda: _patched(rounds, "build_model", make)


def range_scaling(kind: str) -> Probe:
    """Features scaled by their declared ranges otherwise: to [-1, 1] or to [0, 1]."""

    def scaled(schema, statistics):
        bounds = declared_bounds(schema)
        if kind == "unit":
            centre = {n: (lo + hi) / 2 for n, (lo, hi) in bounds.items()}
            return Standardization(centre, {n: (hi - lo) / 2 for n, (lo, hi) in bounds.items()})
        return Standardization(
            {n: lo for n, (lo, _) in bounds.items()}, {n: hi - lo for n, (lo, hi) in bounds.items()}
        )

    return lambda: _patched(rounds, "standardization_for", scaled)


def _every_site(settings: RunSettings) -> dict[str, Any]:
    """The sampling arguments fedcare's own strategies take: every site, every round."""
    return {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": settings.min_sites,
        "min_evaluate_nodes": settings.min_sites,
        "min_available_nodes": settings.min_sites,
    }


def server_momentum(momentum: float) -> Probe:
    """FedAvgM: the server applies the averaged update with heavy-ball momentum."""

    def make(settings, num_sites):
        return FedAvgM(server_momentum=momentum, **_every_site(settings))

    return lambda: _patched(rounds, "make_strategy", make)


def damped_steps(damping: float) -> Probe:
    """Each global step is the averaged update minus ``damping`` × the previous step.

    Post-processing at the server (no ε). Flower's FedAvgM takes no negative momentum.
    """

    class Damped(FedAvg):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.current: list[np.ndarray] | None = None
            self.last_step: list[np.ndarray] | None = None

        def configure_train(self, server_round, arrays, config, grid):
            if self.current is None:
                self.current = arrays.to_numpy_ndarrays()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            arrays, metrics = super().aggregate_train(server_round, replies)
            if arrays is None or self.current is None:
                return arrays, metrics
            names = list(arrays.keys())
            step = [
                new - old for new, old in zip(arrays.to_numpy_ndarrays(), self.current, strict=True)
            ]
            if self.last_step is not None:
                step = [s - damping * last for s, last in zip(step, self.last_step, strict=True)]
            self.last_step = step
            self.current = [old + s for old, s in zip(self.current, step, strict=True)]
            return ArrayRecord(dict(zip(names, map(Array, self.current), strict=True))), metrics

    def make(settings, num_sites):
        return Damped(**_every_site(settings))

    return lambda: _patched(rounds, "make_strategy", make)


def server_step_decay(final: float) -> Probe:
    """The server applies round t's averaged update scaled from 1 down to ``final`` (linear).

    Post-processing of what the sites released (no ε); damps the global model's swing
    between rounds, whose offset moves by several logits a round at the defaults.
    """

    class Decaying(FedAvgM):
        def __init__(self, rounds_in_run: int, **kw):
            super().__init__(**kw)
            self.server_opt = True  # FedAvgM turns it on only for a step other than 1
            self.rounds_in_run = rounds_in_run

        def aggregate_train(self, server_round, replies):
            progress = (server_round - 1) / max(1, self.rounds_in_run - 1)
            self.server_learning_rate = 1.0 - (1.0 - final) * progress
            return super().aggregate_train(server_round, replies)

    def make(settings, num_sites):
        return Decaying(settings.num_server_rounds, **_every_site(settings))

    return lambda: _patched(rounds, "make_strategy", make)


def noise_free() -> Probe:
    """DP-SGD with its clipping and sampling but no noise: what the noise alone costs.

    Not private (the ledger still books the planned σ): a diagnostic, never a setting.
    """
    train = budget.train_locally

    def without_noise(*args, dp, **kw):
        return train(*args, dp=dp and dp_sgd.DPSettings(0.0, dp.max_grad_norm), **kw)

    return lambda: _patched(budget, "train_locally", without_noise)


def pooled_standardization(scale: str) -> Probe:
    """Every feature centred by the whole data set's true mean.

    Not private (figures no site released): the upper bound of what centring buys.
    ``scale`` is ``std`` (divided by the true std too) or ``range`` (by a quarter of the
    declared range's width, as the defaults do).
    """
    frame = linear_breast_cancer().examples

    def exact(schema, statistics):
        bounds = declared_bounds(schema)
        return Standardization(
            {n: float(frame[n].mean()) for n in bounds},
            {
                n: float(frame[n].std()) if scale == "std" else (hi - lo) / 4
                for n, (lo, hi) in bounds.items()
            },
        )

    return lambda: _patched(rounds, "standardization_for", exact)


def log_scaling(offset_fraction: float, published_min: bool, log: bool = True) -> Probe:
    """Each feature as ``log(x + offset_fraction × max)``, scaled to [-2, 2] over its range.

    Public preprocessing (no ε, never the data's own statistics): the offset and the
    range mapped to [-2, 2] (the log of the declared ``[min, max]``, around its midpoint)
    come from each feature's declared range alone. The schema declares ``[0, max]``;
    ``published_min`` declares the minimum the data set's description publishes instead
    of 0 (sklearn's ``DESCR`` table gives min and max per feature; the data's own min,
    equal to it up to the table's rounding, as the declared max is the data's max).
    ``log=False`` keeps the linear scaling, with that range.
    """
    dataset = linear_breast_cancer()
    declared = declared_bounds(dataset.schema)
    published = dataset.examples[list(declared)].min()
    ranges = {
        name: (float(published[name]) if published_min else low, high)
        for name, (low, high) in declared.items()
    }

    def forward(name: str, values: np.ndarray) -> np.ndarray:
        return np.log(values + offset_fraction * ranges[name][1]) if log else values

    ends = {
        n: (forward(n, np.float64(lo)), forward(n, np.float64(hi)))
        for n, (lo, hi) in ranges.items()
    }
    scale = Standardization(
        {n: float(lo + hi) / 2 for n, (lo, hi) in ends.items()},
        {n: float(hi - lo) / 4 for n, (lo, hi) in ends.items()},
    )
    encode = FeatureEncoder.transform

    def transformed(self: FeatureEncoder, table: Any) -> np.ndarray:
        table = table.copy()
        for name in ranges:
            table[name] = forward(name, table[name].to_numpy(dtype=float))
        return encode(self, table)

    @contextmanager
    def both() -> Iterator[None]:
        with _patched(rounds, "standardization_for", lambda schema, statistics: scale):
            with _patched(FeatureEncoder, "transform", transformed):
                yield

    return both


# The row whose settings and features are shipped now.
SHIPPED = "log-defaults+mean+worst20"
RANGES = {"statistics_epsilon_share": 0.0}
FULL = {**RANGES, "batch_size": 128, "learning_rate": 0.5}
DEFAULTS = {**FULL, "learning_rate": 2.0}
CANDIDATES = [
    Candidate("before", "the settings before this work (statistics share 0.2)"),
    Candidate(
        "ranges",
        "no statistics released (share 0): features scaled by their declared ranges",
        RANGES,
    ),
    Candidate("ranges+unit", "ranges, probe: scaled to [-1, 1]", RANGES, range_scaling("unit")),
    Candidate("ranges+zero-one", "ranges, probe: scaled to [0, 1]", RANGES, range_scaling("01")),
    Candidate("ranges+wd0.1", "ranges, probe: weight decay 0.1", RANGES, weight_decay(0.1)),
    Candidate("ranges+wd0.3", "ranges, probe: weight decay 0.3", RANGES, weight_decay(0.3)),
    Candidate("ranges+zero-init", "ranges, probe: initial model 0", RANGES, zero_initial_model()),
    Candidate(
        "ranges+bias-lr5", "ranges, probe: bias learning rate ×5", RANGES, bias_learning_rate(5)
    ),
    Candidate(
        "full",
        "ranges, one full batch per round (batch 128 ≥ a site's rows: 10 noisy steps in all), "
        "learning rate 0.5",
        FULL,
    ),
    Candidate("full+lr1", "full, learning rate 1.0", {**FULL, "learning_rate": 1.0}),
    Candidate("full+lr2", "full, learning rate 2.0 (the defaults)", DEFAULTS, seeds=MANY_SEEDS),
    Candidate("full+lr4", "full, learning rate 4.0", {**FULL, "learning_rate": 4.0}),
    Candidate(
        "full+lr2+rounds20",
        "full, learning rate 2.0, 20 rounds",
        {**FULL, "learning_rate": 2.0, "num_server_rounds": 20},
    ),
    Candidate("full+epochs3", "full, 3 local epochs (30 steps)", {**FULL, "local_epochs": 3}),
    Candidate(
        "full+lr2+prv",
        "full, learning rate 2.0, with the σ Opacus's PRV accountant plans for ε = 1 (run at "
        f"RDP ε {PRV_EQUIVALENT_EPSILON}, which gives that σ)",
        {**FULL, "learning_rate": 2.0, "epsilon": PRV_EQUIVALENT_EPSILON},
    ),
    # Below: the settings tried against the defaults (full+lr2) on 20 seeds; probes on 5.
    Candidate(
        "defaults, probe: no noise",
        "the defaults, probe: DP-SGD's clipping without its noise (not private)",
        DEFAULTS,
        noise_free(),
    ),
    Candidate(
        "defaults, probe: true means/stds",
        "the defaults, probe: features centred by the whole data set's true means and scaled "
        "by its true stds (not private: the most centring and scaling could buy)",
        DEFAULTS,
        pooled_standardization("std"),
    ),
    Candidate(
        "defaults, probe: true means",
        "the defaults, probe: features centred by the whole data set's true means, scaled by "
        "their declared ranges as now (not private: what centring alone could buy)",
        DEFAULTS,
        pooled_standardization("range"),
    ),
    Candidate(
        "defaults+fedadam0.3",
        "the defaults, FedAdam at the server (η = 0.3, β = 0.9 / 0.99, τ = 1e-3)",
        {**DEFAULTS, "strategy": "fedadam", "server_learning_rate": 0.3},
        seeds=MANY_SEEDS,
    ),
    Candidate(
        "defaults+fedavgm0.5",
        "the defaults, probe: FedAvgM at the server (momentum 0.5)",
        DEFAULTS,
        server_momentum(0.5),
        seeds=MANY_SEEDS,
    ),
    *(
        Candidate(
            f"defaults+damped{damping:g}",
            f"the defaults, probe: the server adds −{damping:g} × its last step to each "
            "round's averaged update (negative momentum: damps a swing from round to round)",
            DEFAULTS,
            damped_steps(damping),
        )
        for damping in (0.3, 0.5)
    ),
    *(
        Candidate(
            f"defaults+server-decay{final:g}",
            f"the defaults, probe: the server's step on each round's averaged update falls "
            f"linearly from 1 to {final:g} over the rounds",
            DEFAULTS,
            server_step_decay(final),
        )
        for final in (0.1, 0.3)
    ),
    Candidate(
        "defaults+epochs2+lr1",
        "the defaults, 2 local full-batch steps per round (20 in all), learning rate 1.0",
        {**DEFAULTS, "local_epochs": 2, "learning_rate": 1.0},
        seeds=MANY_SEEDS,
    ),
    *(
        Candidate(
            f"defaults+share{share:g}",
            f"the defaults with a statistics release at share {share:g}: features scaled by "
            "the sites' noisy means and stds instead of the declared ranges",
            {**DEFAULTS, "statistics_epsilon_share": share},
        )
        for share in (0.2, 0.3)
    ),
    Candidate(
        "defaults+unit",
        "the defaults, probe: features scaled to [-1, 1] (half-widths) instead of [-2, 2]",
        DEFAULTS,
        range_scaling("unit"),
    ),
    Candidate(
        "defaults+unit+lr4",
        "the defaults, probe: features scaled to [-1, 1], learning rate 4.0",
        {**DEFAULTS, "learning_rate": 4.0},
        range_scaling("unit"),
    ),
    *(
        Candidate(
            f"defaults+rounds{n}+lr{lr:g}",
            f"the defaults with {n} rounds (σ planned for all of them) at learning rate {lr:g}",
            {**DEFAULTS, "num_server_rounds": n, "learning_rate": lr},
        )
        for n, lr in ((40, 0.5), (40, 1.0), (40, 2.0), (80, 1.0), (20, 1.0))
    ),
    Candidate(
        "defaults, no DP",
        "the defaults without DP (no clipping, no noise)",
        {**DEFAULTS, "dp": False},
        seeds=MANY_SEEDS,
    ),
    Candidate(
        "defaults, no DP, 50 rounds",
        "the defaults without DP, 50 rounds: the federated model trained to the end",
        {**DEFAULTS, "dp": False, "num_server_rounds": 50},
    ),
    # Public preprocessing (no ε): the published minimum declared, then log-scaled.
    Candidate(
        "defaults+min0+log0.1",
        "the defaults, probe: log(x + max/10), scaled to [-2, 2] over the log of the declared "
        "range [0, max] as now",
        DEFAULTS,
        log_scaling(0.1, published_min=False),
    ),
    Candidate(
        "defaults+pubmin",
        "the defaults, probe: the published minimum declared instead of 0 (linear scaling)",
        DEFAULTS,
        log_scaling(0.0, published_min=True, log=False),
    ),
    *(
        Candidate(
            f"defaults+pubmin+log{fraction:g}",
            f"the defaults, probe: the published minimum declared, log(x + {fraction:g} max) "
            "scaled to [-2, 2] over the log of the declared range",
            DEFAULTS,
            log_scaling(fraction, published_min=True),
            seeds=MANY_SEEDS if fraction == 0.05 else SEEDS,
        )
        for fraction in (0.01, 0.03, 0.05)
    ),
    *(
        Candidate(
            f"defaults+pubmin+log0.05+{tag}",
            f"defaults+pubmin+log0.05, {what}",
            {**DEFAULTS, **change},
            log_scaling(0.05, published_min=True),
            seeds=MANY_SEEDS if tag == "rounds15+lr1.5" else SEEDS,
        )
        for tag, what, change in (
            *(
                (f"lr{lr:g}", f"learning rate {lr:g}", {"learning_rate": lr})
                for lr in (1.0, 3.0, 4.0)
            ),
            *(
                (
                    f"rounds{n}+lr{lr:g}",
                    f"{n} rounds (σ planned for all of them) at learning rate {lr:g}",
                    {"num_server_rounds": n, "learning_rate": lr},
                )
                for n, lr in ((20, 1.0), (15, 1.5), (5, 2.0), (5, 3.0))
            ),
            *(
                (
                    f"clip{clip:g}+lr{lr:g}",
                    f"clipping norm {clip:g}, learning rate {lr:g}",
                    {"max_grad_norm": clip, "learning_rate": lr},
                )
                for clip, lr in ((0.5, 4.0), (2.0, 1.0), (0.25, 8.0), (2.0, 2.0))
            ),
        )
    ),
    Candidate(
        "defaults+pubmin+log0.05, no DP",
        "defaults+pubmin+log0.05 without DP (no clipping, no noise)",
        {**DEFAULTS, "dp": False},
        log_scaling(0.05, published_min=True),
    ),  # The Breast Cancer schema as shipped since the probe above: built, not a probe.
    Candidate(
        "log-defaults",
        "the defaults on the schema as shipped: each feature's published range (the "
        'description\'s table, widened by its rounding) and transform = "log"',
        DEFAULTS,
        seeds=MANY_SEEDS,
        schema="log30",
    ),
    Candidate(
        "log-defaults, no DP",
        "log-defaults without DP (no clipping, no noise)",
        {**DEFAULTS, "dp": False},
        schema="log30",
    ),
    *(
        Candidate(
            f"log-defaults+{name}{suffix}",
            f"log-defaults, probe: only {what}{words}",
            {**DEFAULTS, **changes},
            feature_subset(names),
            seeds=MANY_SEEDS if name in ("mean+worst20", "size-once16") and not suffix else SEEDS,
            schema="log30",
        )
        for name, what, names in (
            (
                "plane3",
                "the published plane's 3 features (mean texture, worst area, worst smoothness)",
                PUBLISHED_PLANE,
            ),
            ("worst10", 'the 10 "worst" features', WORST),
            (
                "mean+worst20",
                'the 10 "mean" and the 10 "worst" features (the built-in schema since)',
                MEAN + WORST,
            ),
            (
                "size-once16",
                'the 10 "mean" and 10 "worst" features without perimeter and area (on the '
                "log scale nearly linear in the radius's: a nucleus's size three times)",
                tuple(n for n in MEAN + WORST if not n.endswith(("_perimeter", "_area"))),
            ),
        )
        for suffix, words, changes in (("", "", {}), (", no DP", ", without DP", {"dp": False}))
    ),  # fmt: skip
    # The run settings again, on the best feature set found (20 seeds each).
    *(
        Candidate(
            f"{SHIPPED}+{tag}",
            f"{SHIPPED}, {what}",
            {**DEFAULTS, **change},
            feature_subset(MEAN + WORST),
            seeds=MANY_SEEDS,
            schema="log30",
        )
        for tag, what, change in (
            *((f"lr{lr:g}", f"learning rate {lr:g}", {"learning_rate": lr}) for lr in (1.0, 3.0)),
            *(
                (
                    f"rounds{n}+lr{lr:g}",
                    f"{n} rounds (σ planned for all of them) at learning rate {lr:g}",
                    {"num_server_rounds": n, "learning_rate": lr},
                )
                for n, lr in ((15, 1.5), (20, 1.0))
            ),
            (
                "batch48",
                "Poisson batches of 48 expected rows (about half a site's: two noisy steps a "
                "round, amplified by subsampling), learning rate 1.0",
                {"batch_size": 48, "learning_rate": 1.0},
            ),
            *(
                (
                    f"clip{clip:g}+lr{lr:g}",
                    f"clipping norm {clip:g}, learning rate {lr:g}",
                    {"max_grad_norm": clip, "learning_rate": lr},
                )
                for clip, lr in ((0.5, 4.0), (2.0, 1.0), (0.5, 3.0), (0.5, 6.0), (0.25, 8.0))
            ),
        )
    ),
    Candidate(
        "log-defaults+mean+worst20, probe: no noise",
        "log-defaults+mean+worst20, probe: DP-SGD's clipping without its noise (not private)",
        DEFAULTS,
        lambda: _both(feature_subset(MEAN + WORST), noise_free()),
        schema="log30",
    ),
    Candidate(
        "log-defaults+mean+worst20+eps8",
        "log-defaults+mean+worst20 at ε = 8 per site (what noise an eighth as large buys)",
        {**DEFAULTS, "epsilon": 8.0},
        feature_subset(MEAN + WORST),
        schema="log30",
    ),
    Candidate(
        "log-defaults+bias-lr5",
        "log-defaults, probe: bias learning rate ×5 (is the accuracy short of the ROC-AUC "
        "because the bias, clipped with the weights, learns slowly?)",
        DEFAULTS,
        bias_learning_rate(5),
        schema="log30",
    ),
]


def paired_baseline(name: str) -> str:
    """The row a 20-seed candidate is paired with, seed by seed: the one it changes.

    The 20-feature settings rows with the 20 features at the defaults, the feature subsets
    with the 30 log-scaled features, every earlier row with the defaults of then.
    """
    if name.startswith(f"{SHIPPED}+"):
        return SHIPPED
    if name.startswith("log-defaults+"):
        return "log-defaults"
    return "full+lr2"


def prv_equivalent_epsilon() -> dict[str, float]:
    """σ of RDP and PRV for ε = 1 at the default plan, and RDP's ε at PRV's σ."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    plan = {"sample_rate": 0.2, "steps": 50}
    sigmas = {
        name: get_noise_multiplier(
            target_epsilon=1.0, target_delta=1e-5, accountant=name, epsilon_tolerance=0.001, **plan
        )
        for name in ("rdp", "prv")
    }
    rdp = RDPAccountant()
    rdp.history = [(sigmas["prv"], plan["sample_rate"], plan["steps"])]
    return {**sigmas, "rdp_epsilon_at_prv_sigma": rdp.get_epsilon(1e-5)}


def run_one(candidate: Candidate, partition: str, seed: int, out: Path) -> dict[str, Any]:
    """One federation: the average of its last k global models scored, and every round's."""
    models: list[dict[str, np.ndarray]] = []
    states: list[Any] = []
    save = rounds.save_checkpoint

    def keep(state, entry):
        models.append({k: v.copy() for k, v in state.weights.items()})
        states[:] = [state]
        save(state, entry)

    settings = RunSettings(
        **{**BEFORE, **candidate.changes, "epsilon": candidate.changes.get("epsilon", 1.0)},
        sites=5,
        partition=partition,
        alpha=0.5,
        seed=seed,
        out_dir=str(out),
    )
    started = time.perf_counter()
    # the models are scored under the probe too: it may change how features are encoded
    with on_schema(candidate.schema):
        with candidate.probe() if candidate.probe else nullcontext():
            with _patched(rounds, "save_checkpoint", keep):
                report = run_in_process(settings).report
            state = states[0]
            tails = {}
            for k in TAILS:
                average = {n: np.mean([m[n] for m in models[-k:]], axis=0) for n in models[-1]}
                metrics = evaluate_on_table(
                    average, state.spec, state.schema, state.standardization, state.files.test_path
                )
                tails[str(k)] = {"roc_auc": metrics["roc_auc"], "accuracy": metrics["accuracy"]}
            each_round = [
                evaluate_on_table(
                    model, state.spec, state.schema, state.standardization, state.files.test_path
                )["accuracy"]
                for model in models
            ]
    return {
        "key": f"{candidate.name}/{partition}/{seed}",
        "candidate": candidate.name,
        "partition": partition,
        "seed": seed,
        "tails": tails,
        "round_accuracy": each_round,
        "max_epsilon_spent": max(report["privacy"]["epsilon_spent"].values()),
        "wall_seconds": time.perf_counter() - started,
    }


def summary(done: dict[str, dict]) -> list[dict[str, Any]]:
    """Per candidate, partition and k: worst and median ROC-AUC, median accuracy."""
    rows = []
    for candidate in CANDIDATES:
        for partition in PARTITIONS:
            runs = [
                r
                for r in done.values()
                if r["candidate"] == candidate.name and r["partition"] == partition
            ]
            for k in TAILS:
                every = [r["tails"][str(k)] for r in runs if str(k) in r["tails"]]
                figures = [
                    r["tails"][str(k)] for r in runs if str(k) in r["tails"] and r["seed"] < SEEDS
                ]
                if not figures:
                    continue
                roc_min = min(f["roc_auc"] for f in figures)
                acc_median = statistics.median(f["accuracy"] for f in figures)
                rows.append(
                    {
                        "candidate": candidate.name,
                        "what": candidate.what,
                        "partition": partition,
                        "last_rounds_averaged": k,
                        "seeds": len(figures),
                        "roc_auc_min": roc_min,
                        "roc_auc_median": statistics.median(f["roc_auc"] for f in figures),
                        "accuracy_median": acc_median,
                        "accuracy_min": min(f["accuracy"] for f in figures),
                        "target_met": roc_min >= TARGET_ROC_AUC_MIN
                        and acc_median >= TARGET_ACCURACY_MEDIAN,
                        "all_seeds": len(every),
                        "roc_auc_mean_all": statistics.mean(f["roc_auc"] for f in every),
                        "roc_auc_min_all": min(f["roc_auc"] for f in every),
                        "accuracy_mean_all": statistics.mean(f["accuracy"] for f in every),
                    }
                )
    return rows


def paired_gains(done: dict[str, dict]) -> list[dict[str, Any]]:
    """Per 20-seed candidate and partition: its last model's gain over the baseline's.

    Mean ± standard error over the seeds both ran, of the difference seed by seed.
    """
    rows = []
    for candidate in CANDIDATES:
        baseline = paired_baseline(candidate.name)
        if candidate.seeds < MANY_SEEDS or candidate.name == baseline:
            continue
        for partition in PARTITIONS:
            pairs = [
                (done[f"{candidate.name}/{partition}/{seed}"], done[key])
                for seed in range(MANY_SEEDS)
                if (key := f"{baseline}/{partition}/{seed}") in done
                and f"{candidate.name}/{partition}/{seed}" in done
            ]
            if len(pairs) < 2:
                continue
            row: dict[str, Any] = {
                "candidate": candidate.name,
                "baseline": baseline,
                "partition": partition,
                "seeds": len(pairs),
            }
            for metric in ("accuracy", "roc_auc"):
                gains = [a["tails"]["1"][metric] - b["tails"]["1"][metric] for a, b in pairs]
                row[f"{metric}_gain"] = statistics.mean(gains)
                row[f"{metric}_gain_se"] = statistics.stdev(gains) / len(gains) ** 0.5
            rows.append(row)
    return rows


def markdown(
    rows: list[dict[str, Any]],
    gains: list[dict[str, Any]],
    prv: dict[str, float],
    load: tuple[float, ...],
) -> str:
    lines = [
        "# Utility at ε = 1 per site: methods tried on Breast Cancer Wisconsin",
        "",
        "5 sites, ε = 1 per site (statistics included), δ = 1e-5, global test set. Rows "
        "before log-defaults ran on all 30 features on the schema before the declared log "
        "scale (each feature [0, max], linear); log-defaults and the rows after it on the 30 "
        'features\' published ranges with transform = "log" (or the subset a row names). '
        "The schema shipped now is log-defaults+mean+worst20's: the 10 mean and 10 worst "
        "features, without the standard errors. The "
        f"target columns use seeds 0–{SEEDS - 1}, as the issue does; rows run on "
        f"{MANY_SEEDS} seeds also give the mean over all of them ('all' columns), which "
        "tells a method's gain from five seeds' luck (the standard error of a 20-seed mean "
        "accuracy is 0.006–0.010 here). Runs without an ε in the runs file were "
        "printed by an earlier form of this script (the same probes and averages) before it "
        "kept a runs file, and copied into it. k = the last k rounds' global models averaged "
        "(k = 1: the last "
        f"model). Target: every seed ROC-AUC ≥ {TARGET_ROC_AUC_MIN} and median accuracy ≥ "
        f"{TARGET_ACCURACY_MEDIAN}. Settings before: "
        + ", ".join(f"{k.replace('_', '-')}={v}" for k, v in BEFORE.items())
        + ". A probe changes code for this measurement only. PRV accountant at ε = 1, "
        f"q = 0.2, 50 steps: σ {prv['prv']:.3f} against RDP's {prv['rdp']:.3f} (RDP's ε at "
        f"PRV's σ: {prv['rdp_epsilon_at_prv_sigma']:.3f}). Load average at the end: "
        + " / ".join(f"{x:.1f}" for x in load)
        + ".",
        "",
        "| candidate | change | sites | seeds | k | ROC-AUC min | ROC-AUC median "
        "| accuracy median | accuracy min | target | all seeds | ROC-AUC min (all) "
        "| ROC-AUC mean (all) | accuracy mean (all) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['candidate']} | {row['what']} | {row['partition']} | {row['seeds']} | "
            f"{row['last_rounds_averaged']} | {row['roc_auc_min']:.4f} | "
            f"{row['roc_auc_median']:.4f} | {row['accuracy_median']:.4f} | "
            f"{row['accuracy_min']:.4f} | {'met' if row['target_met'] else '–'} | "
            f"{row['all_seeds']} | {row['roc_auc_min_all']:.4f} | "
            f"{row['roc_auc_mean_all']:.4f} | {row['accuracy_mean_all']:.4f} |"
        )
    lines += [
        "",
        "Paired with the row each changes, seed by seed, last model (k = 1): mean gain ± "
        "its standard error.",
        "",
        "| candidate | paired with | sites | seeds | accuracy gain | ROC-AUC gain |",
        "|---|---|---|---|---|---|",
    ]
    for gain in gains:
        lines.append(
            f"| {gain['candidate']} | {gain['baseline']} | {gain['partition']} | "
            f"{gain['seeds']} | "
            f"{gain['accuracy_gain']:+.3f} ± {gain['accuracy_gain_se']:.3f} | "
            f"{gain['roc_auc_gain']:+.4f} ± {gain['roc_auc_gain_se']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="run only these candidates")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier finished runs")
    args = parser.parse_args()
    log_path = RESULTS / "utility_methods_runs.jsonl"
    done = load_runs(log_path, args.fresh)
    with tempfile.TemporaryDirectory(prefix="fedcare-methods-") as tmp:
        for candidate in CANDIDATES:
            if args.only and candidate.name not in args.only:
                continue
            print(f"{candidate.name}: {candidate.what}", flush=True)
            for partition in PARTITIONS:
                for seed in range(candidate.seeds):
                    key = f"{candidate.name}/{partition}/{seed}"
                    if key in done:
                        continue
                    row = run_one(candidate, partition, seed, Path(tmp) / key)
                    done[key] = row
                    record_run(log_path, row)
                    shown = " ".join(
                        f"k{k}: {t['roc_auc']:.4f}/{t['accuracy']:.4f}"
                        for k, t in row["tails"].items()
                    )
                    print(f"  {key:<30} {shown}  {row['wall_seconds']:.0f} s", flush=True)
    rows = summary(done)
    gains = paired_gains(done)
    prv = prv_equivalent_epsilon()
    runs = sorted(done.values(), key=lambda r: r["key"])
    (RESULTS / "utility_methods.json").write_text(
        json.dumps({"summary": rows, "paired_gains": gains, "prv": prv, "runs": runs}, indent=2)
    )
    text = markdown(rows, gains, prv, os.getloadavg())
    (RESULTS / "utility_methods.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
