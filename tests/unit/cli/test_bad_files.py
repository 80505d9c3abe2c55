"""The bad-file corpus through the real `fedcare` commands: a clear answer, never a traceback.

Every case of ``tests/unit/models/data/corpus.py`` goes through `fedcare site check --data
FILE --schema schema.toml` (no site.toml) and through `fedcare simulate --data-dir`, in
this process with Typer's CliRunner. Simulate checks the folder, the schema and every file
before a federation starts, so a bad case ends there with exit 2: no SuperLink, no round.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from tests.unit.models.data.corpus import CASES, BadCase, write_case

# Wide enough that no message is wrapped inside a path.
runner = CliRunner(env={"COLUMNS": "2000"})


def _clean_exit(result: Result, code: int) -> str:
    """The output of a run that ended with ``code`` through typer, not an exception."""
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def _expected(case: BadCase, folder) -> list[str]:
    return [text.replace("{folder}", str(folder)) for text in case.expected]


def test_the_corpus_has_sixty_bad_files_across_the_classes():
    assert len(CASES) >= 60
    classes = {case.id.split("/")[0] for case in CASES}
    assert {"encoding", "delimiters", "headers", "near-miss", "decimal-comma", "numbers"} <= classes
    assert {"missing", "categories", "binary", "label", "ranges", "schema", "folders"} <= classes
    assert "parquet" in classes
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [c for c in CASES if c.site_file], ids=lambda c: c.id)
def test_site_check_without_a_site_toml_names_the_problem(case, tmp_path):
    folder = write_case(case, tmp_path / "data")
    args = ["site", "check", "--data", str(folder / case.site_file)]
    args += ["--schema", str(folder / "schema.toml")]
    output = _clean_exit(runner.invoke(app, args), 1)
    for text in _expected(case, folder):
        assert text in output, (text, output)


@pytest.mark.parametrize("case", [c for c in CASES if c.simulate], ids=lambda c: c.id)
def test_simulate_stops_before_the_federation_naming_the_problem(case, tmp_path):
    folder = write_case(case, tmp_path / "data")
    out = tmp_path / "run"
    args = ["simulate", "--data-dir", str(folder), "--out", str(out), "--rounds", "1"]
    output = _clean_exit(runner.invoke(app, args), 2)
    for text in _expected(case, folder):
        if not text.startswith("column '"):  # quality warnings are `site check`'s only
            assert text in output, (text, output)
    assert not out.exists()  # nothing was prepared: the federation never started
