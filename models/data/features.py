"""From a checked site table to model inputs, identically at every site.

Numeric features are standardized with *federated* statistics: each site sends only the
count, sum and sum of squares of each numeric column (:class:`FeatureStatistics`, its
values clipped to the schema's declared ranges, :func:`declared_bounds`; the figures
leave the site with Gaussian noise, see ``privacy.statistics``), the coordinator adds
them up, and every site and the inference service standardize with the same means and
standard deviations (:class:`Standardization`, :class:`FeatureEncoder`). Categorical features are
one-hot encoded from the schema's declared categories, so every site builds the same
columns whatever values it happens to hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.data.schema import FeatureSpec, SiteSchema
from models.data.transforms import LOG, log_offset, transformed

Bounds = Mapping[str, tuple[float, float]]


def on_encoded_scale(spec: FeatureSpec, values: np.ndarray) -> np.ndarray:
    """A numeric feature's values after its declared transform (as they are, without one).

    Parameters
    ----------
    spec : FeatureSpec
        The feature.
    values : ndarray
        Its values (within its declared range; NaN = missing, kept).
    """
    if spec.transform is None:
        return values
    if spec.transform != LOG or spec.max is None:  # the schema's check makes this unreachable
        raise ValueError(f"feature {spec.name}: transform {spec.transform!r} needs a max")
    # transforms.transformed's formula on the whole column: one call instead of one per row
    return np.log(np.asarray(values, dtype=float) + log_offset(spec.max))


def declared_bounds(schema: SiteSchema) -> dict[str, tuple[float, float]]:
    """The declared ``(min, max)`` of every numeric column that declares both.

    The numeric features, on their encoded scale (a declared transform maps its range's
    ends), and a regression label (``[dataset].label_min``/``label_max``).

    Parameters
    ----------
    schema : SiteSchema
        The federation's schema.
    """
    bounds = {
        f.name: (transformed(f.transform, f.min, f.max), transformed(f.transform, f.max, f.max))
        for f in schema.features
        if f.type == "numeric" and f.min is not None and f.max is not None
    }
    low, high = schema.label_range
    if schema.task == "regression" and low is not None and high is not None:
        bounds[schema.label] = (low, high)
    return bounds


@dataclass
class FeatureStatistics:
    """Additive summaries of the numeric columns of one or more sites.

    Parameters
    ----------
    count, total, total_sq : dict[str, float]
        Per numeric feature: the number of non-missing values, their sum and the sum
        of their squares. Adding two sites' statistics gives the pooled statistics.
    rows : int
        Number of rows (examples) summarized.
    label_counts : dict[str, float]
        For classification, the number of examples of each class (for class weights).
    values_per_example : int
        The most values one example adds to a column (1 for a table row, up to
        ``max_steps`` for a patient's sequence): what one patient can change. It stays
        at the site (not in :meth:`to_flat`).
    """

    count: dict[str, float] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    total_sq: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    label_counts: dict[str, float] = field(default_factory=dict)
    values_per_example: int = 1

    @classmethod
    def of_frame(cls, frame: pd.DataFrame, schema: SiteSchema) -> FeatureStatistics:
        """Statistics of a checked site table.

        Parameters
        ----------
        frame : DataFrame
            The site's checked table.
        schema : SiteSchema
            Names its numeric features, its label and its task (a regression label is
            summarized too, since it is standardized like a feature).
        """
        columns = {
            s.name: on_encoded_scale(s, frame[s.name].to_numpy(dtype=float))
            for s in schema.features
            if s.type == "numeric"
        }
        if schema.task == "regression":  # the target is standardized too
            columns[schema.label] = frame[schema.label].to_numpy(dtype=float)
        classification = schema.task in ("binary", "multiclass")
        return cls.of_values(
            columns,
            labels=frame[schema.label].tolist() if classification else (),
            rows=len(frame),
            bounds=declared_bounds(schema),
        )

    @classmethod
    def of_values(
        cls,
        columns: Mapping[str, np.ndarray],
        labels: Sequence[str] = (),
        rows: int = 0,
        bounds: Bounds | None = None,
        values_per_example: int = 1,
    ) -> FeatureStatistics:
        """Statistics of numeric ``columns`` (NaN = missing) and class ``labels``.

        Parameters
        ----------
        columns : mapping of str to ndarray
            The values of each numeric column (for sequences, of every time step).
        labels : sequence of str
            The class of each example (empty for regression and survival).
        rows : int
            Number of examples.
        bounds : mapping of str to (float, float), optional
            Declared ranges: a column's values are clipped to its range, so one value
            can move its sums by a known amount at most.
        values_per_example : int
            The most values one example adds to a column.
        """
        stats = cls(rows=rows, values_per_example=values_per_example)
        for name, raw in columns.items():
            values = np.asarray(raw, dtype=float)
            values = values[~np.isnan(values)]
            if bounds and name in bounds:
                values = np.clip(values, *bounds[name])
            stats.count[name] = float(values.size)
            stats.total[name] = float(values.sum())
            stats.total_sq[name] = float(np.square(values).sum())
        for label in labels:
            stats.label_counts[label] = stats.label_counts.get(label, 0.0) + 1.0
        return stats

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """The pooled statistics of these and ``other`` (a new object; both stay as they are).

        Parameters
        ----------
        other : FeatureStatistics
            Another site's (or sites') statistics.
        """
        names = set(self.count) | set(other.count)
        classes = set(self.label_counts) | set(other.label_counts)
        return FeatureStatistics(
            count={n: self.count.get(n, 0.0) + other.count.get(n, 0.0) for n in names},
            total={n: self.total.get(n, 0.0) + other.total.get(n, 0.0) for n in names},
            total_sq={n: self.total_sq.get(n, 0.0) + other.total_sq.get(n, 0.0) for n in names},
            rows=self.rows + other.rows,
            label_counts={
                c: self.label_counts.get(c, 0.0) + other.label_counts.get(c, 0.0) for c in classes
            },
            values_per_example=max(self.values_per_example, other.values_per_example),
        )

    def to_flat(self) -> dict[str, float]:
        """A flat ``name -> number`` mapping, as a Flower MetricRecord carries it."""
        flat: dict[str, float] = {"rows": float(self.rows)}
        for name in self.count:
            flat[f"count/{name}"] = self.count[name]
            flat[f"sum/{name}"] = self.total[name]
            flat[f"sumsq/{name}"] = self.total_sq[name]
        for label, n in self.label_counts.items():
            flat[f"label/{label}"] = n
        return flat

    @classmethod
    def from_flat(cls, flat: Mapping[str, float]) -> FeatureStatistics:
        """Read back :meth:`to_flat`'s mapping; unknown keys are ignored.

        Parameters
        ----------
        flat : mapping of str to float
            ``rows`` and ``count/…``, ``sum/…``, ``sumsq/…``, ``label/…`` entries.
        """
        stats = cls(rows=int(flat.get("rows", 0)))
        for key, value in flat.items():
            kind, _, name = key.partition("/")
            target = {
                "count": stats.count,
                "sum": stats.total,
                "sumsq": stats.total_sq,
                "label": stats.label_counts,
            }.get(kind)
            if target is not None:
                target[name] = float(value)
        return stats


@dataclass(frozen=True)
class Standardization:
    """Mean and standard deviation of each numeric feature, as all sites use them."""

    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def from_statistics(
        cls, stats: FeatureStatistics, bounds: Bounds | None = None
    ) -> Standardization:
        """Means and standard deviations of pooled (noisy) statistics.

        The figures may carry noise (``privacy.statistics``): a count below 1 or a
        variance at or below 0 is noise, not data. Such a column falls back to its
        declared range (mean its midpoint, std a quarter of its width) or, without one,
        to mean 0 and std 1; so does a declared column the statistics do not count (a
        run that releases none scales every feature by its range alone). Otherwise, with
        a range, the mean is kept within it and the std within (0, half its width]: no
        value of the range is ever that far apart.

        Parameters
        ----------
        stats : FeatureStatistics
            The federation's pooled statistics.
        bounds : mapping of str to (float, float), optional
            The declared ranges (:func:`declared_bounds`).
        """
        bounds = bounds or {}
        mean, std = {}, {}
        # a declared column no site counted (no statistics released) falls back too
        for name in {**dict.fromkeys(stats.count), **dict.fromkeys(bounds)}:
            n = stats.count.get(name, 0.0)
            low, high = bounds.get(name, (math.nan, math.nan))
            fallback = ((low + high) / 2, (high - low) / 4 or 1.0) if name in bounds else (0.0, 1.0)
            m = stats.total[name] / n if n >= 1 else math.nan
            var = stats.total_sq[name] / n - m * m if n >= 1 else math.nan
            if not var > 1e-12:  # also NaN: no count
                mean[name], std[name] = fallback
                continue
            s = math.sqrt(var)
            if name in bounds:
                m = min(max(m, low), high)
                s = min(s, (high - low) / 2) or 1.0
            mean[name], std[name] = m, s
        return cls(mean=mean, std=std)

    def to_dict(self) -> dict[str, Any]:
        """``{"mean": {...}, "std": {...}}``, as the registry stores it."""
        return {"mean": dict(self.mean), "std": dict(self.std)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Standardization:
        """Read back :meth:`to_dict`'s mapping.

        Parameters
        ----------
        raw : mapping
            ``mean`` and ``std``, each a mapping of column name to number.
        """
        return cls(
            mean={k: float(v) for k, v in raw["mean"].items()},
            std={k: float(v) for k, v in raw["std"].items()},
        )


class FeatureEncoder:
    """Turns a checked table (or request rows) into the model's input matrix.

    Parameters
    ----------
    schema : SiteSchema
        Declares the columns and their types.
    standardization : Standardization
        The federated means and standard deviations of the numeric features. A missing
        numeric value (``impute_mean`` policy) becomes the mean, i.e. 0 after scaling.
    """

    def __init__(self, schema: SiteSchema, standardization: Standardization):
        self.schema = schema
        self.standardization = standardization

    @property
    def column_names(self) -> list[str]:
        """The input matrix's columns: a feature's name, or ``name=category`` per category."""
        names: list[str] = []
        for spec in self.schema.features:
            if spec.type == "categorical":
                names.extend(f"{spec.name}={c}" for c in spec.categories)
            else:
                names.append(spec.name)
        return names

    @property
    def input_dim(self) -> int:
        """The number of input columns."""
        return len(self.column_names)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode the feature columns of ``frame`` into a float32 matrix."""
        blocks: list[np.ndarray] = []
        for spec in self.schema.features:
            column = frame[spec.name]
            if spec.type == "numeric":
                values = on_encoded_scale(spec, column.to_numpy(dtype=float))
                mean = self.standardization.mean.get(spec.name, 0.0)
                std = self.standardization.std.get(spec.name, 1.0)
                scaled = (values - mean) / std
                blocks.append(np.nan_to_num(scaled, nan=0.0)[:, None])
            elif spec.type == "binary":
                blocks.append(column.to_numpy(dtype=float)[:, None])
            else:
                onehot = np.zeros((len(frame), len(spec.categories)))
                index = {c: j for j, c in enumerate(spec.categories)}
                for i, value in enumerate(column.tolist()):
                    if value in index:
                        onehot[i, index[value]] = 1.0
                blocks.append(onehot)
        return np.hstack(blocks).astype(np.float32)

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        """The label column as class indices, or standardized float32 for regression.

        :meth:`decode_outputs` maps a regression model's outputs back to the label's units.
        """
        column = frame[self.schema.label]
        if self.schema.task == "regression":
            mean, std = self._label_scale()
            return ((column.to_numpy(dtype=float) - mean) / std).astype(np.float32)
        index = {c: j for j, c in enumerate(self.schema.classes)}
        return np.array([index[v] for v in column.tolist()], dtype=np.int64)

    def _label_scale(self) -> tuple[float, float]:
        label = self.schema.label
        return self.standardization.mean.get(label, 0.0), self.standardization.std.get(label, 1.0)

    def decode_outputs(self, outputs: np.ndarray) -> np.ndarray:
        """Raw model outputs in the label's units (regression) or unchanged."""
        if self.schema.task != "regression":
            return outputs
        mean, std = self._label_scale()
        return outputs * std + mean
