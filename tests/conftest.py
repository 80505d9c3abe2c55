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
