"""Splitting one table into simulated hospitals.

- ``iid``: every site draws uniformly (stratified on the label for classification).
- ``dirichlet``: label skew; each class is spread across sites with proportions drawn
  from Dirichlet(α) (small α, very different case mixes).
- ``size``: size skew; site sizes follow Dirichlet(α) proportions, labels uniform.

Every site gets at least ``min_per_site`` rows and, for classification, examples of at
least two classes, since a site with one class cannot train a classifier.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def partition(
    frame: pd.DataFrame,
    label: str,
    sites: int,
    method: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    classification: bool = True,
    min_per_site: int = 10,
) -> list[pd.DataFrame]:
    """Split ``frame`` into ``sites`` tables.

    Parameters
    ----------
    frame : DataFrame
        The pooled table.
    label : str
        Label column (used for stratification and label skew).
    sites : int
        Number of hospitals.
    method : str
        ``iid``, ``dirichlet`` or ``size``.
    alpha : float
        Dirichlet concentration for ``dirichlet`` and ``size``.
    seed : int
        Makes the split reproducible.
    classification : bool
        Whether ``label`` holds classes (regression labels are not stratified).
    min_per_site : int
        Smallest acceptable site.
    """
    if sites < 1:
        raise ValueError("need at least one site")
    if len(frame) < sites * min_per_site:
        raise ValueError(
            f"{len(frame)} rows cannot make {sites} sites of at least {min_per_site} rows"
        )
    for attempt in range(100):
        rng = np.random.default_rng(seed + 7919 * attempt)
        if method == "iid":
            assignment = _iid(frame, label, sites, rng, classification)
        elif method == "dirichlet":
            if not classification:
                raise ValueError("label-skew (dirichlet) partitioning needs a classification label")
            assignment = _label_skew(frame, label, sites, alpha, rng)
        elif method == "size":
            assignment = _size_skew(len(frame), sites, alpha, rng, min_per_site)
        else:
            raise ValueError(f"unknown partition '{method}'; expected iid, dirichlet or size")
        parts = [frame.iloc[np.flatnonzero(assignment == s)] for s in range(sites)]
        if all(_usable(p, label, min_per_site, classification) for p in parts):
            return [p.reset_index(drop=True) for p in parts]
    raise ValueError(
        f"could not split into {sites} usable sites with partition={method}, alpha={alpha}; "
        "try a larger alpha or fewer sites"
    )


def _usable(part: pd.DataFrame, label: str, min_rows: int, classification: bool) -> bool:
    if len(part) < min_rows:
        return False
    return not classification or part[label].nunique() >= 2


def _iid(
    frame: pd.DataFrame, label: str, sites: int, rng: np.random.Generator, classification: bool
) -> np.ndarray:
    assignment = np.empty(len(frame), dtype=int)
    groups = frame.groupby(label).indices.values() if classification else [np.arange(len(frame))]
    offset = 0
    for index in groups:
        shuffled = rng.permutation(index)
        # deal the class's rows round-robin, starting where the last class stopped
        assignment[shuffled] = (np.arange(len(shuffled)) + offset) % sites
        offset += len(shuffled)
    return assignment


def _label_skew(
    frame: pd.DataFrame, label: str, sites: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    assignment = np.empty(len(frame), dtype=int)
    for index in frame.groupby(label).indices.values():
        shuffled = rng.permutation(index)
        shares = rng.dirichlet([alpha] * sites)
        cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(int)
        for site, chunk in enumerate(np.split(shuffled, cuts)):
            assignment[chunk] = site
    return assignment


def _size_skew(
    n: int, sites: int, alpha: float, rng: np.random.Generator, min_per_site: int
) -> np.ndarray:
    shares = rng.dirichlet([alpha] * sites)
    sizes = np.maximum((shares * n).astype(int), min_per_site)
    sizes[np.argmax(sizes)] -= sizes.sum() - n
    order = rng.permutation(n)
    assignment = np.empty(n, dtype=int)
    start = 0
    for site, size in enumerate(sizes):
        assignment[order[start : start + size]] = site
        start += size
    return assignment
