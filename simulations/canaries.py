"""Audit canaries for a simulation: mislabelled outliers, each in its site's data on a coin.

Only simulations ever hold canaries (``fedcare simulate --audit``): they are records made
for the audit and put into a simulated site's table, where the site trains on them and
accounts for them like any other record. Canary ``i`` starts at the training records'
mean and goes as far as the schema's declared bounds allow along the direction the
(standardized) records vary ``i``-th least, on the scale the model reads them (after a
declared transform such as the log scale, mapped back to values as measured):
combinations of feature values no patient has, so the sites' own records barely push a
model along them and a canary's pull stands out. It is labelled with the class a logistic
regression on the training records finds least likely there: an outlier whose label the
data contradicts, which a model trained without DP fits and one trained with DP cannot
be seen to. Non-numeric features take their most common value.

The canaries are the same for every site; each site flips its own secret coin per canary
(:func:`draw_coins`) and only the canaries whose coin came up "in" are appended to its
table. The coins stay in the simulation's ``audit/`` folder until the audit counts its
guesses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from models.data.features import declared_bounds, on_encoded_scale
from models.data.schema import FeatureSpec, SiteSchema
from models.data.transforms import untransformed

AUDIT_FOLDER = "audit"
CANARIES_FILE = "canaries.csv"
COINS_FILE = "coins.json"


class CanaryError(ValueError):
    """The audit cannot make canaries for this data."""


def make_canaries(train: pd.DataFrame, schema: SiteSchema, count: int) -> pd.DataFrame:
    """``count`` mislabelled outliers with the schema's columns.

    Parameters
    ----------
    train : DataFrame
        The simulation's training records (all sites' together; never the test set).
    schema : SiteSchema
        A table schema with a binary or multiclass label and numeric features with
        declared bounds (at least ``count`` of them).
    count : int
        Canaries to make.

    Raises
    ------
    CanaryError
        The schema is not a classification table with ``count`` bounded numeric features.
    """
    numeric = bounded_features(schema, count)
    names = [f.name for f in numeric]
    # on the scale the model reads (after a declared transform): outliers there
    values = np.column_stack(
        [on_encoded_scale(f, train[f.name].to_numpy(dtype=float)) for f in numeric]
    )
    mean, spread = values.mean(axis=0), values.std(axis=0) + 1e-12
    bounds = declared_bounds(schema)
    low = np.array([bounds[name][0] for name in names], dtype=float)
    high = np.array([bounds[name][1] for name in names], dtype=float)
    # The directions the data varies least along, least first.
    _, directions = np.linalg.eigh(np.corrcoef(values, rowvar=False))
    points = [_farthest_within(mean, spread * directions[:, i], low, high) for i in range(count)]
    labels = _least_likely_labels(values, train[schema.label], np.asarray(points))
    base = {f.name: train[f.name].mode().iloc[0] for f in schema.features}
    rows = [
        {**base, **_as_measured(numeric, point), schema.label: label}
        for point, label in zip(points, labels, strict=True)
    ]
    return pd.DataFrame(rows, columns=[f.name for f in schema.features] + [schema.label])


def bounded_features(schema: SiteSchema, count: int) -> list[FeatureSpec]:
    """The numeric features with declared bounds the canaries go along, checked for ``count``.

    Parameters
    ----------
    schema : SiteSchema
        The federation's schema.
    count : int
        Canaries wanted.

    Raises
    ------
    CanaryError
        The schema is not a classification table with ``count`` bounded numeric features.
    """
    numeric = [f for f in schema.features if f.type == "numeric" and None not in (f.min, f.max)]
    if schema.task not in ("binary", "multiclass") or schema.kind != "table":
        raise CanaryError(
            f"schema '{schema.name}': the audit's canaries are made for tables with a binary "
            f"or multiclass label; this one is a {schema.kind} with a {schema.task} label"
        )
    if count > len(numeric):
        raise CanaryError(
            f"schema '{schema.name}': at most {len(numeric)} canaries (one per numeric feature "
            f"with declared min and max), not {count}"
        )
    return numeric


def _farthest_within(
    start: np.ndarray, direction: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """The farthest point from ``start`` along ±``direction`` inside the box [low, high]."""
    best, reach = start, 0.0
    for sign in (1.0, -1.0):
        step = sign * direction
        with np.errstate(divide="ignore"):
            room = np.where(step > 0, (high - start) / step, (low - start) / step)
        scale = float(np.min(room[np.abs(step) > 1e-12]))
        if scale > reach:
            best, reach = start + scale * step, scale
    return np.clip(best, low, high)


def _as_measured(numeric: list[FeatureSpec], point: np.ndarray) -> dict[str, float]:
    """A point on the encoded scale as each feature's values, within its declared range."""
    return {
        f.name: float(np.clip(untransformed(f.transform, float(v), f.max), f.min, f.max))
        for f, v in zip(numeric, point, strict=True)
    }


def _least_likely_labels(values: np.ndarray, labels: pd.Series, points: np.ndarray) -> list[str]:
    """Per point, the class a logistic regression on the training records finds least likely.

    ``values`` are the records' features on the encoded scale, as ``points`` are.
    """
    scaler = StandardScaler().fit(values)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(values), labels.astype(str))
    probabilities = model.predict_proba(scaler.transform(points))
    least = [model.classes_[i] for i in probabilities.argmin(axis=1)]
    return [str(label) for label in least]


def draw_coins(sites: list[str], count: int, seed: int) -> dict[str, list[bool]]:
    """Each site's secret fair coin per canary (True: the canary is in its data).

    Parameters
    ----------
    sites : list of str
        The sites' names.
    count : int
        Canaries.
    seed : int
        The simulation's seed.
    """
    rng = np.random.default_rng([seed, 0xA0D17])
    return {site: (rng.random(count) < 0.5).tolist() for site in sites}


def save_audit(root: Path, canaries: pd.DataFrame, coins: dict[str, list[bool]]) -> Path:
    """Keep the canaries and the coins in ``root/audit/`` (the simulation folder's)."""
    folder = root / AUDIT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    canaries.to_csv(folder / CANARIES_FILE, index=False)
    (folder / COINS_FILE).write_text(json.dumps(coins, indent=2))
    return folder


def load_coins(root: Path) -> dict[str, np.ndarray]:
    """Each site's coins, as :func:`save_audit` kept them."""
    path = root / AUDIT_FOLDER / COINS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no audit coins; was the run simulated with --audit?")
    return {site: np.asarray(c, dtype=bool) for site, c in json.loads(path.read_text()).items()}
