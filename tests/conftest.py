"""Shared fixtures: small site files and schemas written by the tests themselves."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

SCHEMA_TOML = textwrap.dedent(
    """
    [dataset]
    name = "ward"
    task = "binary"
    label = "outcome"
    classes = ["0", "1"]
    missing = "reject"

    [features.age]
    type = "numeric"
    min = 0
    max = 120

    [features.sex]
    type = "categorical"
    categories = ["F", "M"]

    [features.smoker]
    type = "binary"
    """
)


@pytest.fixture
def ward_schema_path(tmp_path: Path) -> Path:
    path = tmp_path / "schema.toml"
    path.write_text(SCHEMA_TOML)
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def ward_registry(root: Path, schema_path: Path, seeds: tuple[int, ...]):
    """A registry with one untrained ``ward`` logistic regression per seed (v1, v2 …)."""
    from models.data.features import FeatureEncoder, Standardization
    from models.data.kinds.registry import load_schema
    from models.families import build_model
    from models.spec import ModelSpec, get_weights
    from server.registry import ModelRegistry

    schema = load_schema(schema_path)
    scale = Standardization(mean={"age": 50.0}, std={"age": 10.0})
    dim = FeatureEncoder(schema, scale).input_dim
    spec = ModelSpec(kind="logreg", task="binary", input_dim=dim, output_dim=1)
    registry = ModelRegistry(root)
    for seed in seeds:
        registry.register("ward", get_weights(build_model(spec, seed=seed)), spec, schema, scale)
    return registry
