"""docs/SITE_DATA.md names every schema key, problem kind and default the code has."""

from __future__ import annotations

from pathlib import Path

from deploy.site_check import DEFAULT_MIN_ROWS
from models.data.kinds.registry import KINDS
from models.data.quality import SUSPECT_NUMBERS, SUSPECT_WORDS
from models.data.schema import DATASET_KEYS, FEATURE_KEYS, MISSING_POLICIES, TASKS
from models.data.tables import ProblemKind
from models.data.values import DEFAULT_MISSING_VALUES, FALSE_WORDS, FEATURE_TYPES, TRUE_WORDS

DOC = (Path(__file__).resolve().parents[4] / "docs" / "SITE_DATA.md").read_text()


def test_every_schema_key_type_task_and_kind_is_documented():
    keys = [*DATASET_KEYS, *FEATURE_KEYS, *(k for kind in KINDS.values() for k in kind.keys)]
    names = [*keys, *FEATURE_TYPES, *TASKS, *MISSING_POLICIES, *KINDS]
    assert [name for name in names if f"`{name}`" not in DOC] == []


def test_every_problem_kind_and_default_is_documented():
    assert [k.value for k in ProblemKind if f"`{k.value}`" not in DOC] == []
    default = ", ".join(f"`{word}`" if word else '`""`' for word in DEFAULT_MISSING_VALUES)
    assert f"default {default}" in DOC
    for word in sorted(TRUE_WORDS) + sorted(FALSE_WORDS):
        assert f"`{word}`" in DOC, word
    for number in SUSPECT_NUMBERS:
        assert f"`{number:g}`" in DOC, number
    for word in SUSPECT_WORDS:
        assert f"`{word}`" in DOC, word
    assert f"at least {DEFAULT_MIN_ROWS} examples" in DOC
