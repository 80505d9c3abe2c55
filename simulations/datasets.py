"""Data sets that ship inside installed packages, as (table, schema) pairs.

Nothing is downloaded: scikit-learn carries the Breast Cancer Wisconsin (binary) and
Diabetes (regression) data in its wheel. A user's own hospitals come in through
``--data-dir`` instead (see :func:`simulations.prepare.prepare_from_dir`).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from sklearn import datasets as skdatasets

from client.schema import FeatureSpec, SiteSchema


def _column_name(raw: str) -> str:
    return raw.strip().replace(" ", "_")


def breast_cancer() -> tuple[pd.DataFrame, SiteSchema]:
    """569 tumours, 30 numeric features, label 1 = benign (scikit-learn's coding)."""
    bunch = skdatasets.load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns=_column_name)
    features = tuple(
        FeatureSpec(name=_column_name(c), type="numeric", min=0.0) for c in bunch.feature_names
    )
    schema = SiteSchema(
        name="breast_cancer",
        task="binary",
        label="target",
        features=features,
        classes=("0", "1"),
        missing="reject",
    )
    frame["target"] = frame["target"].astype(int)
    return frame, schema


def diabetes() -> tuple[pd.DataFrame, SiteSchema]:
    """442 patients, 10 numeric features, disease progression after one year."""
    bunch = skdatasets.load_diabetes(as_frame=True, scaled=False)
    frame = bunch.frame.rename(columns=_column_name)
    features = []
    for column in bunch.feature_names:
        name = _column_name(column)
        if name == "sex":
            frame[name] = (frame[name] == frame[name].max()).astype(int)
            features.append(FeatureSpec(name=name, type="binary"))
        else:
            features.append(FeatureSpec(name=name, type="numeric"))
    schema = SiteSchema(
        name="diabetes", task="regression", label="target", features=tuple(features)
    )
    return frame, schema


DATASETS: dict[str, Callable[[], tuple[pd.DataFrame, SiteSchema]]] = {
    "breast_cancer": breast_cancer,
    "diabetes": diabetes,
}


def load_dataset(name: str) -> tuple[pd.DataFrame, SiteSchema]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; built in: {sorted(DATASETS)}")
    return DATASETS[name]()
