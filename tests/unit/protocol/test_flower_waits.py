"""The shortened object-pull back-off: set once, and refused if Flower changed shape."""

from __future__ import annotations

import pytest
from flwr.supercore.inflatable import inflatable_utils

from protocol import flower_waits
from protocol.flower_waits import (
    FEDCARE_BACKOFF,
    FLOWER_BACKOFF,
    PULL_FUNCTIONS,
    FlowerChanged,
    shorten_object_pull_backoff,
)


@pytest.fixture()
def flower_defaults(monkeypatch):
    """Flower's pull functions with their own defaults back after the test."""
    for name in PULL_FUNCTIONS:
        function = getattr(inflatable_utils, name)
        monkeypatch.setattr(function, "__kwdefaults__", dict(function.__kwdefaults__))
        function.__kwdefaults__.update(FLOWER_BACKOFF)


def test_the_backoff_becomes_fedcares_and_a_second_call_keeps_it(flower_defaults):
    shorten_object_pull_backoff()
    shorten_object_pull_backoff()
    for name in PULL_FUNCTIONS:
        defaults = getattr(inflatable_utils, name).__kwdefaults__
        assert {key: defaults[key] for key in FEDCARE_BACKOFF} == FEDCARE_BACKOFF
        assert defaults["max_tries_per_object"] == 500  # the rest is Flower's


def test_a_flower_with_other_backoff_defaults_is_refused(flower_defaults):
    inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"] = 2
    with pytest.raises(FlowerChanged, match="pull_objects back-off"):
        shorten_object_pull_backoff()


def test_a_flower_without_the_pull_function_is_refused(monkeypatch):
    monkeypatch.setattr(flower_waits, "PULL_FUNCTIONS", ("no_such_pull",))
    with pytest.raises(FlowerChanged, match="no_such_pull"):
        shorten_object_pull_backoff()
