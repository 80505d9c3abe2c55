"""Nothing a site sends reveals a patient: identifiers planted in bad site files.

A whole simulated federation (Flower's simulation engine, real ClientApps) with two good
hospitals and four whose files carry a patient's record number where a value should be:
as a file without a header row (the number becomes a "duplicate header"), in a
categorical cell, as a label and as a number. The bad sites refuse; the run goes on.
No refusal the coordinator received, no line of its log (progress and Python logging)
and no file the run wrote (report.json, checkpoints, registry, the sites' refusal
records) holds the identifier; nor do `fedcare site check`'s data-quality warnings,
which count cells and never quote them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from deploy.site_check import check_site_data
from server.settings import RunSettings
from simulations.runner import run_simulated_federation
from tests.conftest import SCHEMA_TOML

pytestmark = pytest.mark.slow
PLANTED = "MRN-000123-PLANTED"
HEADER = "age,sex,smoker,outcome"


def _rows(n: int, seed: int) -> list[str]:
    return [
        f"{20 + (i * 7 + seed) % 70},{'FM'[(i + seed) % 2]},{(i // 2) % 2},{(i * 3 + seed) % 2}"
        for i in range(n)
    ]


def _write_federation(folder: Path) -> None:
    folder.mkdir()
    (folder / "schema.toml").write_text(SCHEMA_TOML)
    good = {name: _rows(80, seed) for seed, name in enumerate(("north", "south"))}
    for name, rows in good.items():
        (folder / f"{name}.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    rows = _rows(80, 5)
    bad = {
        "no-header": [f"{PLANTED},{PLANTED},0,1"] * 3 + rows,
        "a-category": [HEADER, *rows[:40], f"34,{PLANTED},0,1", *rows[40:]],
        "a-label": [HEADER, *rows[:40], f"34,F,0,{PLANTED}", *rows[40:]],
        "a-number": [HEADER, *rows[:40], f"{PLANTED},F,0,1", *rows[40:]],
    }
    for name, lines in bad.items():
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")


def _files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_no_refusal_report_or_coordinator_log_holds_a_planted_identifier(tmp_path, caplog):
    data = tmp_path / "hospitals"
    _write_federation(data)
    out = tmp_path / "run"
    settings = RunSettings(
        mode="simulation",
        data_dir=str(data),
        sites=6,
        min_sites=2,
        num_server_rounds=1,
        epsilon=1.0,
        seed=3,
        out_dir=str(out),
    )
    lines: list[str] = []
    with caplog.at_level(logging.DEBUG):
        outcome = run_simulated_federation(settings, progress=lines.append)
    report = outcome.report
    refused = [line for line in lines if "refused" in line or "failed validation" in line]
    assert refused, lines  # the bad sites did refuse, and the coordinator said so
    assert any("duplicate_header" in line or "missing_column" in line for line in lines), lines
    assert any("unknown_category" in line for line in lines), lines
    assert set(report["privacy"]["epsilon_spent"]) >= {"north", "south"}
    assert PLANTED not in "\n".join(lines)
    assert PLANTED not in caplog.text
    assert PLANTED not in json.dumps(report)
    assert _files_holding(out, PLANTED) == []


def test_data_quality_warnings_count_cells_and_never_quote_them(tmp_path):
    (tmp_path / "schema.toml").write_text(SCHEMA_TOML)
    rows = [f"{PLANTED},{PLANTED},{PLANTED},{i % 2}" for i in range(30)]
    data = tmp_path / "site.csv"
    data.write_text("\n".join([HEADER, *rows]) + "\n")
    found = check_site_data(data, tmp_path / "schema.toml")
    assert found.problems  # at the site, its own problems may quote its cells
    assert found.warnings and not any(PLANTED in w for w in found.warnings)
