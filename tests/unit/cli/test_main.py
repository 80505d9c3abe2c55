"""The `fedcare` command: help everywhere, and a user's bad files fail fast and clearly."""

from __future__ import annotations

from dataclasses import replace

import click
import typer
from typer.testing import CliRunner

from cli import main
from cli.main import app
from server.settings import CLASS_WEIGHTS, PARTITIONS, STRATEGIES, RunSettings
from tests.conftest import SCHEMA_TOML

runner = CliRunner()


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*prefix, name)))
    return found


def test_every_subcommand_has_help():
    group = typer.main.get_command(app)
    commands = _commands(group)
    assert ("simulate",) in commands and ("demo",) in commands
    for path in commands:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_data_dir_with_bad_rows_lists_every_problem_before_training(tmp_path):
    (tmp_path / "schema.toml").write_text(SCHEMA_TOML)
    (tmp_path / "north.csv").write_text("age,sex,smoker,outcome\n30,F,0,0\n40,M,1,1\n")
    (tmp_path / "south.csv").write_text("age,sex,smoker,outcome\n30,F,0,0\n400,M,1,1\n50,X,0,1\n")
    result = runner.invoke(app, ["simulate", "--data-dir", str(tmp_path), "--out", str(tmp_path)])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "south.csv, row 3, column 'age': expected a number at most 120 (max)" in output
    assert "south.csv, row 4, column 'sex': expected one of ['F', 'M'], found 'X'" in output
    assert "north.csv" not in output


def test_data_dir_without_a_schema_says_which_file_is_missing(tmp_path):
    (tmp_path / "north.csv").write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["simulate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "schema.toml: schema file not found" in " ".join(result.output.split())


def test_out_of_range_options_are_refused_with_the_option_named():
    result = runner.invoke(app, ["simulate", "--rounds", "0"])
    assert result.exit_code == 2
    assert "--rounds" in result.output


def test_simulate_without_options_runs_the_run_settings_defaults(monkeypatch, tmp_path):
    seen: list[RunSettings] = []
    monkeypatch.setattr(main, "_run_simulation", lambda settings, verbose: seen.append(settings))
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen == [replace(RunSettings(), out_dir=str(tmp_path.resolve()))]


def test_simulate_offers_the_run_settings_choices():
    simulate = typer.main.get_command(app).commands["simulate"]
    choices = {
        p.name: tuple(p.type.choices) for p in simulate.params if isinstance(p.type, click.Choice)
    }
    assert choices == {
        "partition": PARTITIONS,
        "strategy": STRATEGIES,
        "class_weights": CLASS_WEIGHTS,
    }
