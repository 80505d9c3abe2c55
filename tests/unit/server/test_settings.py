"""pyproject.toml's ``[tool.flwr.app.config]`` is RunSettings' defaults, key for key.

Flower reads the run config from that table; the coordinator reads it into RunSettings
(``RunSettings.from_run_config``: a kebab-case key names the field with underscores, and
every field is a key). The defaults are written in both places, so this test keeps them
the same.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from server.settings import RunSettings, SettingsError

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"
# Fields left out of the table on purpose. `from_run_config` accepts them too, but:
# - sites: under `flwr run` the SuperLink's SuperNodes are the simulated hospitals, and
#   the coordinator replaces `sites` by their number (server/federation/rounds.py), so a
#   `sites` key would have no effect; `fedcare simulate --sites` sets it instead.
NOT_IN_TABLE = {"sites"}


def run_config_table() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def test_every_key_is_a_field_with_the_same_default_and_type():
    defaults = RunSettings()
    names = {f.name for f in fields(RunSettings)}
    for key, value in run_config_table().items():
        name = key.replace("-", "_")
        assert "_" not in key, f"run-config keys are kebab-case: {key}"
        assert name in names, f"{key} is not a RunSettings field"
        default = getattr(defaults, name)
        assert (value, type(value)) == (default, type(default)), key


def test_every_field_is_a_key_but_the_documented_exceptions():
    keys = {key.replace("-", "_") for key in run_config_table()}
    names = {f.name for f in fields(RunSettings)}
    assert NOT_IN_TABLE <= names, "an exception names a field RunSettings no longer has"
    assert names - NOT_IN_TABLE == keys


def test_the_table_read_as_flower_passes_it_gives_the_defaults():
    assert RunSettings.from_run_config(run_config_table()) == RunSettings()


def test_a_data_dir_run_says_its_partition_is_as_given():
    assert RunSettings(partition="dirichlet").partition_done == "dirichlet"
    assert RunSettings(data_dir="hospitals", partition="iid").partition_done == "as given"


def test_the_reply_poll_interval_is_read_and_bounded():
    assert RunSettings.from_run_config({"reply-poll-interval": "0.5"}).reply_poll_interval == 0.5
    with pytest.raises(SettingsError, match="'reply-poll-interval' = 0.0: expected within"):
        RunSettings.from_run_config({"reply-poll-interval": 0.0})
