"""The deployment commands without any process: provision, site check, site budget."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from privacy.ledger import PrivacyLedger
from server.settings import RunSettings
from simulations.loopback import fill_site_file
from simulations.prepare import prepare_simulation

runner = CliRunner()


def _provisioned(tmp_path: Path) -> Path:
    out = tmp_path / "fed"
    done = runner.invoke(
        app, ["provision", "--federation", "cardio", "--sites", "a,b", "--out", str(out)]
    )
    assert done.exit_code == 0, done.output
    return out


def test_provision_twice_keeps_the_private_keys(tmp_path):
    out = _provisioned(tmp_path)
    key = (out / "sites" / "a" / "auth.key").read_bytes()
    done = runner.invoke(
        app, ["provision", "--federation", "cardio", "--sites", "a,b,c", "--out", str(out)]
    )
    assert done.exit_code == 0, done.output
    assert (out / "sites" / "a" / "auth.key").read_bytes() == key
    assert (out / "sites" / "c" / "auth.key").exists()
    bad = runner.invoke(app, ["provision", "--federation", "X!", "--sites", "a", "--out", "o"])
    assert bad.exit_code == 1 and "invalid federation name" in bad.output


def test_site_check_and_budget(tmp_path):
    out = _provisioned(tmp_path)
    layout = prepare_simulation(RunSettings(sites=2), tmp_path / "data")
    site_file = out / "sites" / "a" / "site.toml"
    fill_site_file(site_file, Path(layout.sites[0]["data-path"]), layout.schema_path, 9999)

    done = runner.invoke(app, ["site", "check", "--config", str(site_file), "--json"])
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    assert found["ok"] and found["rows"] > 100
    assert set(found["label_counts"]) == {"0", "1"}
    assert found["budget"]["epsilon_spent"] == 0.0

    # the ledger in the site's state folder, as the ClientApp leaves it after a round
    ledger = PrivacyLedger(out / "sites" / "a" / "state", 8.0, 1e-5)
    ledger.step(1.2, 0.1, 20, federation="cardio", run="r1", round=1)
    done = runner.invoke(app, ["site", "budget", "--config", str(site_file), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["epsilon_spent"] == ledger.spent > 0
    assert summary["runs"][0]["federation"] == "cardio" and summary["runs"][0]["rounds"] == 1
    assert summary["runs"][0]["epsilon"] == summary["federations"][0]["epsilon"] == ledger.spent
    done = runner.invoke(app, ["site", "budget", "--config", str(site_file)])
    assert done.exit_code == 0, done.output
    assert "cardio" in done.output and "r1" in done.output
    # provision writes each cap into site.toml (by default the lifetime budget)
    assert "lifetime ε spent" in done.output and "per run cap 8" in done.output
    assert summary["epsilon_per_run"] == summary["epsilon_per_federation"] == 8.0

    broken = tmp_path / "broken.csv"
    lines = Path(layout.sites[0]["data-path"]).read_text().splitlines()
    lines[2] = "x" + lines[2]
    broken.write_text("\n".join(lines) + "\n")
    text = site_file.read_text().replace(layout.sites[0]["data-path"], str(broken))
    site_file.write_text(text)
    done = runner.invoke(app, ["site", "check", "--config", str(site_file)])
    assert done.exit_code == 1
    assert "row" in done.output and "problem" in done.output
