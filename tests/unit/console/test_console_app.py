"""The consoles in-process: token scopes, escaping, run folders read as they are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from client.site import RefusalRecord, record_refusal
from console.coordinator_app import CoordinatorSources, make_coordinator_app
from console.runs import FINISHED, IN_PROGRESS, read_run, refusal_counts
from console.site_app import make_site_app
from console.site_view import count_problems
from console.traffic import AuditReader, last_answered, lines_from_end, traffic
from console.web import esc
from deploy.supernode import load_site_config
from privacy.tokens import TokenStore
from server.federation.checkpoint import Checkpoint
from server.inference.audit import AuditLog
from server.settings import RunSettings
from simulations.prepare import prepare_simulation


def _entry(round_: int, sites: list[str], refused: dict[str, str] | None = None) -> dict:
    return {
        "round": round_,
        "wall_seconds": 1.5,
        "sites_trained": len(sites) - len(refused or {}),
        "train": {},
        "federated_evaluation": {"accuracy": 0.8, "num-examples": 40.0},
        "per_site_evaluation": {},
        "global_test": {"accuracy": 0.7 + round_ / 100, "roc_auc": 0.9},
        "epsilon": {s: 0.1 * round_ for s in sites},
        "refused": refused or {},
    }


SETTINGS = {"num_server_rounds": 3, "dp": True, "delta": 1e-5, "epsilon": 1.0, "mode": "simulation"}


def _checkpoint(out: Path, rounds: int, name: str = "<b>x</b>") -> None:
    history = [_entry(r, [name, "b"]) for r in range(1, rounds + 1)]
    meta = {"history": history, "epsilon": history[-1]["epsilon"], "settings": SETTINGS}
    Checkpoint(rounds, "key1", {"w": np.zeros(2)}, {}, meta).save(out)


@pytest.fixture
def client(tmp_path: Path) -> tuple[TestClient, dict[str, str], Path]:
    store = TokenStore(tmp_path / "tokens.json")
    console, _ = store.create("ops", ["console"])
    star, _ = store.create("app", ["*"])
    model, _ = store.create("app2", ["breast_cancer"])
    runs = tmp_path / "runs"
    app = make_coordinator_app(CoordinatorSources(runs), store)
    return TestClient(app), {"console": console, "star": star, "model": model}, runs


def test_only_a_console_scope_reads_the_console(client):
    http, tokens, _ = client
    assert http.get("/api/runs").status_code == 401
    assert http.get("/runs").status_code == 401
    for other in ("star", "model"):
        bearer = {"Authorization": f"Bearer {tokens[other]}"}
        assert http.get("/api/runs", headers=bearer).status_code == 403
    ok = http.get("/api/runs", headers={"Authorization": f"Bearer {tokens['console']}"})
    assert ok.status_code == 200 and ok.json() == []


def test_sign_in_sets_a_strict_cookie_and_never_redirects_off_site(client):
    http, tokens, _ = client
    reply = http.post(
        "/login",
        content=f"token={tokens['console']}&next=//evil.example/",
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert reply.status_code == 303 and reply.headers["location"] == "/"
    cookie = reply.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    bad = http.post(
        "/login",
        content=f"token={tokens['star']}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert bad.status_code == 403


def test_a_run_in_progress_then_finished_and_names_escaped(client):
    http, tokens, runs = client
    out = runs / "r1"
    _checkpoint(out, 2)
    summary, rounds = read_run(out)
    assert summary.status == IN_PROGRESS and summary.rounds_done == 2 and len(rounds) == 2
    bearer = {"Authorization": f"Bearer {tokens['console']}"}
    page = http.get("/runs/r1", headers=bearer).text
    assert "<b>x</b>" not in page and esc("<b>x</b>") in page
    detail = http.get("/api/runs/r1", headers=bearer).json()
    assert [c["id"] for c in detail["charts"]] == [
        "metric-accuracy",
        "metric-roc_auc",
        "epsilon",
        "wall",
    ]
    report = {
        "run": "key1",
        "settings": SETTINGS,
        "final": {"accuracy": 0.73},
        "history": [_entry(r, ["a", "b"], {"b": "budget"} if r == 3 else None) for r in (1, 2, 3)],
        "privacy": {"dp": True, "delta": 1e-5, "epsilon_budget": 1.0, "epsilon_spent": {"a": 0.3}},
        "model": {"name": "m", "version": 1, "registry": str(out / "registry")},
    }
    (out / "report.json").write_text(json.dumps(report))
    summary, rounds = read_run(out)
    assert summary.status == FINISHED and summary.model is not None
    (refusal,) = refusal_counts(rounds)
    assert (refusal.site, refusal.reason, refusal.rounds) == ("b", "budget", [3])
    assert http.get("/api/runs/nope", headers=bearer).status_code == 404


def test_problems_are_counted_without_rows_or_values():
    problems = [
        "/d/site.csv, row 3, column 'age': value 130 is above the maximum 120",
        "/d/site.csv, row 9, column 'age': value 150 is above the maximum 120",
        "/d/site.csv, row 4, column 'sex': 'X' is not one of the categories",
        "/d/site.csv: the file has no data rows",
    ]
    counted = {(p.column, p.problem): p.count for p in count_problems(problems)}
    assert counted == {
        ("age", "value … is above the maximum …"): 2,
        ("sex", "… is not one of the categories"): 1,
        ("", "the file has no data rows"): 1,
    }


def test_audit_traffic_counts_per_model_and_status(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("t1", "m", 2, 1, 200, "ok", 1.0)
    log.record(None, "m", None, 0, 401, "unauthorized", 1.0)
    log.close()
    with (tmp_path / "audit.jsonl").open("a") as handle:
        handle.write('{"cut short\n')
    reader = AuditReader(tmp_path / "audit.jsonl")
    counted = traffic(reader)
    assert counted.total == 2 and counted.unreadable == 1
    (model,) = counted.models
    assert model.served_version == 2 and model.by_code == {"200 ok": 1, "401 unauthorized": 1}
    assert sorted(s.name for s in counted.chart.series) == ["200", "401"]
    # read as it grows: the appended part only, a line being written waits for its newline
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("t1", "m", 3, 1, 200, "ok", 1.0)
    log.close()
    with (tmp_path / "audit.jsonl").open("a") as handle:
        handle.write('{"time": "2026-')
    counted = traffic(reader)
    assert counted.total == 3 and counted.unreadable == 1
    assert counted.models[0].served_version == 3
    # rotated: a new, shorter file is read from its start
    (tmp_path / "audit.jsonl").unlink()
    AuditLog(tmp_path / "audit.jsonl").record("t1", "m", 4, 1, 200, "ok", 1.0)
    counted = traffic(reader)
    assert counted.total == 1 and counted.models[0].served_version == 4
    (tmp_path / "audit.jsonl").unlink()
    assert traffic(reader).total == 0 and traffic(AuditReader(None)).total == 0


def test_the_last_answered_versions_read_from_the_end_agree_with_the_whole_log(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(200):
        log.record("t1", "a" if i % 3 else "b", i // 10, 1, 200, "ok", 1.0)
    log.record("t1", "a", None, 1, 429, "rate_limited", 1.0)
    log.record("t1", "c", None, 1, 401, "unauthorized", 1.0)  # never answered
    log.close()
    with path.open("a") as handle:
        handle.write('{"cut short\n')
    whole = {
        m.model: m.served_version for m in traffic(AuditReader(path)).models if m.served_version
    }
    assert last_answered(path, {"a", "b", "c"}) == whole == {"a": 19, "b": 19}
    assert last_answered(path, {"b"}) == {"b": 19} and last_answered(None, {"a"}) == {}
    lines = path.read_text().splitlines()
    assert list(lines_from_end(path, block=7)) == lines[::-1]


def test_the_site_page_lists_the_refusals_it_sent_newest_first(tmp_path: Path):
    (site,) = prepare_simulation(RunSettings(sites=1, epsilon=1.0), tmp_path / "sim").sites
    (tmp_path / "ca.pem").write_text("")
    (tmp_path / "site.key").write_text("")
    toml = tmp_path / "site.toml"
    toml.write_text(
        f'[site]\nname = "{site["site-name"]}"\nfederation = "fed"\n'
        '[superlink]\naddress = "127.0.0.1:9092"\nroot-certificates = "ca.pem"\n'
        '[auth]\nprivate-key = "site.key"\n'
        f'[data]\npath = "{site["data-path"]}"\nschema = "{site["schema-path"]}"\n'
        f'[state]\ndir = "{site["state-dir"]}"\n'
    )
    state = Path(site["state-dir"])
    older = RefusalRecord(
        "2026-01-01T00:00:00+00:00",
        "train",
        "BUDGET_EXCEEDED",
        "site 'a': <the> budget",
        "fed",
        "run-1",
        2,
    )
    newer = RefusalRecord(
        "2026-01-02T00:00:00+00:00",
        "query",
        "SITE_MISCONFIGURED",
        "site misconfigured: a file of the site could not be read",
        "fed",
        "run-2",
        None,
    )
    record_refusal(state, older)
    record_refusal(state, newer)
    with (state / "refusals.jsonl").open("a") as handle:
        handle.write('{"cut short\n')
    store = TokenStore(tmp_path / "tokens.json")
    token, _ = store.create("ops", ["console"])
    http = TestClient(make_site_app(load_site_config(toml), store))
    bearer = {"Authorization": f"Bearer {token}"}
    sent = http.get("/api/site", headers=bearer).json()["refusals"]
    assert (sent["total"], sent["unreadable"]) == (2, 1)
    assert sent["by_code"] == {"BUDGET_EXCEEDED": 1, "SITE_MISCONFIGURED": 1}
    assert [RefusalRecord(**r) for r in sent["recent"]] == [newer, older]
    page = http.get("/", headers=bearer).text
    assert "no record" not in page and "2 refusal(s) recorded; 1 unreadable line(s)" in page
    assert esc(older.reason) in page and "<the>" not in page
    assert page.index(newer.reason) < page.index(esc(older.reason))
