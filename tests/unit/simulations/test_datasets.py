"""The built-in Breast Cancer schema: the published ranges, as published, and the log scale."""

from __future__ import annotations

import re

import pytest
from sklearn.datasets import load_breast_cancer

from simulations.datasets import BREAST_CANCER_PUBLISHED_RANGES, breast_cancer, published_range


def descr_table() -> dict[str, tuple[str, str]]:
    """The description's "Summary Statistics" rows, by scikit-learn's feature name."""
    names = {"mean": "mean {}", "standard error": "{} error", "worst": "worst {}"}
    rows = re.findall(
        r"^(\w[\w ]*) \(([\w ]+)\):\s+(\S+)\s+(\S+)$", load_breast_cancer().DESCR, re.M
    )
    return {names[part].format(name): (low, high) for name, part, low, high in rows}


def test_the_hard_coded_ranges_are_the_descriptions_table():
    published = descr_table()
    assert BREAST_CANCER_PUBLISHED_RANGES == {
        name: published[name] for name in BREAST_CANCER_PUBLISHED_RANGES
    }


def test_the_schema_reads_the_means_and_worsts_without_the_standard_errors():
    names = list(load_breast_cancer().feature_names)
    kept = [n for n in names if not n.endswith(" error")]
    assert list(BREAST_CANCER_PUBLISHED_RANGES) == kept and len(kept) == 20
    dataset = breast_cancer()
    assert [f.name for f in dataset.schema.features] == [n.replace(" ", "_") for n in kept]
    assert list(dataset.examples.columns) == [f.name for f in dataset.schema.features] + ["target"]


@pytest.mark.parametrize(
    ("low", "high", "declared"),
    [
        ("0.053", "0.163", (0.0525, 0.1635)),
        ("0.0", "2501.0", (0.0, 2501.05)),
        ("0.05", "0.03", (0.045, 0.035)),
    ],
)
def test_a_published_range_widens_by_half_its_last_printed_digit(low, high, declared):
    assert published_range(low, high) == pytest.approx(declared)


def test_every_feature_declares_the_log_scale_over_a_range_holding_every_row():
    dataset = breast_cancer()
    for spec in dataset.schema.features:
        column = dataset.examples[spec.name]
        assert spec.transform == "log"
        assert spec.min <= column.min() and column.max() <= spec.max, spec.name
