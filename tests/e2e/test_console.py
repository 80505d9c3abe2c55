"""The federation console in real headless Chromium, over TLS, behind a console token.

One small simulation (2 sites, 2 rounds, signed model) feeds every check: the console is
started as a child process on a free loopback port, each page is opened in Chromium, its
visible text is checked against the run's report, the registry and the sites' ledgers,
and a screenshot of each page goes to the test's folder and to docs/console/.
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
from pathlib import Path

import httpx
import pytest

from console.coordinator_app import SERVED
from console.launcher import ConsoleProcess, start_console
from deploy.inference_service import ServiceProcess, start_service
from models.data.kinds.registry import load_schema
from privacy.ledger import PrivacyLedger
from privacy.signing import generate_signing_key, make_local_tls, signer_from_file
from privacy.tokens import TokenStore
from server.federation.checkpoint import Checkpoint
from server.inference.audit import AuditLog
from server.inference.keyring import rotate
from server.registry import ModelRegistry
from server.settings import RunSettings
from simulations.runner import run_simulated_federation

pytestmark = pytest.mark.slow
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("console")
    runs = root / "runs"
    out = runs / "breast-cancer-2x2"
    generate_signing_key(root / "keys" / "signing.key")
    settings = RunSettings(
        sites=2,
        num_server_rounds=2,
        epsilon=1.0,
        statistics_epsilon_share=0.2,  # the site page lists the statistics release
        seed=1,
        out_dir=str(out),
    )
    outcome = run_simulated_federation(
        settings, signer=signer_from_file(root / "keys" / "signing.key")
    )
    v1 = outcome.model
    # A second, unsigned version of the same model: the models page must tell them apart.
    v2 = ModelRegistry(v1.path.parents[1]).register(
        name=v1.name,
        weights=v1.load_weights(),
        spec=v1.spec,
        schema=load_schema(v1.path / "schema.toml"),
        standardization=v1.standardization(),
        metrics={k: v * 0.9 for k, v in v1.manifest["metrics"].items()},
        privacy=v1.manifest["privacy"],
        extra=v1.manifest["extra"],
    )
    audit = AuditLog(root / "audit.jsonl")
    for status, code in ((200, "ok"), (200, "ok"), (401, "unauthorized"), (403, "forbidden")):
        audit.record("abc123abc123", v1.name, 1 if code == "ok" else None, 3, status, code, 4.2)
    audit.close()
    tls = make_local_tls(root / "tls")
    store = TokenStore(root / "tokens.json")
    token, _ = store.create("operator", ["console"])
    app_token, _ = store.create("ward-app", ["*"])
    sites = json.loads((out / "simulation" / "sites.json").read_text())
    site = sites[0]
    site_toml = root / "site.toml"
    site_toml.write_text(
        f'[site]\nname = "{site["site-name"]}"\nfederation = "{settings.federation}"\n'
        f'[superlink]\naddress = "127.0.0.1:9092"\nroot-certificates = "{tls.ca_cert}"\n'
        f'[auth]\nprivate-key = "{tls.server_key}"\n'
        f'[data]\npath = "{site["data-path"]}"\nschema = "{site["schema-path"]}"\n'
        f'[state]\ndir = "{site["state-dir"]}"\n'
        f"[privacy]\nepsilon-budget = {site['epsilon-budget']}\ndelta = {site['delta']}\n"
    )
    tls_args = ["--tokens", str(root / "tokens.json"), "--tls-cert", str(tls.server_cert)]
    tls_args += ["--tls-key", str(tls.server_key)]
    # the real inference service over the same registry: it serves v1, the newest signed one
    rotate(root / "keyring")
    service = start_service(
        [
            "--registry",
            str(v1.path.parents[1]),
            "--verify-key",
            str(root / "keys" / "signing.pub"),
            "--keyring",
            str(root / "keyring"),
            "--audit-log",
            str(root / "service-audit.jsonl"),
            *tls_args,
        ],
        root / "service.log",
        ca_cert=tls.ca_cert,
    )
    started: list[ConsoleProcess | ServiceProcess] = [service]
    try:  # whatever fails to start must not leave the others running
        coordinator = start_console(
            [
                "console",
                "--runs",
                str(runs),
                "--verify-key",
                str(root / "keys" / "signing.pub"),
                "--audit-log",
                str(root / "audit.jsonl"),
                "--service",
                service.url,
                "--service-ca",
                str(tls.ca_cert),
                *tls_args,
            ],
            root / "console.log",
            tls.ca_cert,
        )
        started.append(coordinator)
        hospital = start_console(
            ["site", "console", "--config", str(site_toml), *tls_args],
            root / "site.log",
            tls.ca_cert,
        )
        started.append(hospital)
        yield {
            "root": root,
            "runs": runs,
            "out": out,
            "report": outcome.report,
            "v1": v1,
            "v2": v2,
            "sites": sites,
            "tls": tls,
            "token": token,
            "app_token": app_token,
            "coordinator": coordinator,
            "hospital": hospital,
            "service": service,
        }
    finally:
        for process in started:
            process.stop()
            assert not process.managed.alive()


@pytest.fixture(scope="module")
def browser(world):
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _signed_in(browser, console: ConsoleProcess, token: str, width: int = 1200):
    """A page signed in through the form, with the keyboard only."""
    context = browser.new_context(
        ignore_https_errors=True, viewport={"width": width, "height": 900}
    )
    page = context.new_page()
    response = page.goto(console.url + "/")
    assert response is not None and response.status == 401
    page.get_by_label("console token").focus()
    page.keyboard.type(token)
    with page.expect_navigation() as signed_in:  # the form's POST, then its redirect
        page.keyboard.press("Enter")
    assert signed_in.value is not None and signed_in.value.status == 200
    return page


def _shoot(page, world, name: str, docs: bool = True) -> None:
    path = world["root"] / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if docs:
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / f"{name}.png")


def _charts_drawn(page, count: int) -> None:
    # locators, not wait_for_function: the console's CSP forbids evaluating strings
    page.locator("[data-chart] svg.plot-svg").nth(count - 1).wait_for()


def test_pages_show_the_run_the_ledgers_and_the_signed_model(world, browser):
    report = world["report"]
    page = _signed_in(browser, world["coordinator"], world["token"])
    text = page.inner_text("main")
    for site, eps in report["privacy"]["epsilon_spent"].items():
        assert site in text and f"{eps:.3f}" in text
    # docs/console/federation.png comes from test_console_federation.py (a real SuperLink)
    _shoot(page, world, "federation-no-superlink", docs=False)

    page.get_by_role("link", name="runs", exact=True).click()
    page.wait_for_url("**/runs")
    row = page.get_by_role("row").filter(has_text=world["out"].name).inner_text()
    assert "finished" in row and "2/2" in row and f"{report['model']['name']} v1" in row
    page.get_by_role("link", name=world["out"].name).click()
    _charts_drawn(page, 3)
    text = page.inner_text("main")
    assert report["run"] in text
    for entry in world["sites"]:
        ledger = PrivacyLedger(entry["state-dir"], entry["epsilon-budget"], entry["delta"])
        assert [r.round for r in ledger.releases if r.is_training] == [1, 2]
        assert f"{ledger.spent:.3f}" in text  # the site's own ledger says what the page says
    rounds = page.get_by_role("table", name="rounds").inner_text()
    assert [line.split("\t")[0] for line in rounds.splitlines()[2:]] == ["1", "2"]
    assert page.locator("[data-chart=epsilon] svg line.threshold").count() == 1
    _shoot(page, world, "run")

    page.get_by_role("link", name="models").click()
    page.wait_for_url("**/models")
    assert f"served versions as known from the inference service at {world['service'].url}" in (
        page.inner_text("main")
    )
    versions = page.get_by_role("table", name="registry versions")
    rows = {r.split("\t")[1]: r for r in versions.get_by_role("row").all_inner_texts()[1:]}
    v1_row, v2_row = rows["1"], rows["2"]
    assert v1_row.endswith(f"\t{SERVED}")  # what the running service's ready route says
    assert "verified" in v1_row and "not verified" not in v1_row
    assert f"{report['final']['roc_auc']:.4f}" in v1_row
    assert "not verified" in v2_row and "manifest.sig" in v2_row and not v2_row.endswith(SERVED)
    page.get_by_label("compare").select_option(index=1)  # v1 (newest first)
    page.get_by_label("with").select_option(index=0)  # v2
    page.get_by_role("button", name="compare metrics").press("Enter")
    diff = page.get_by_role("table", name="metrics diff (second minus first)").inner_text()
    roc = report["final"]["roc_auc"]
    assert f"{roc:.4f}" in diff and f"{roc * 0.9 - roc:.4f}" in diff
    _shoot(page, world, "models")

    page.get_by_role("link", name="inference").click()
    _charts_drawn(page, 1)
    row = page.get_by_role("table", name="requests per model").inner_text()
    assert "200 ok: 2" in row and "401 unauthorized: 1" in row and "403 forbidden: 1" in row
    _shoot(page, world, "inference")

    # a narrow window: nothing wider than the screen but the tables' own scroll boxes
    narrow = _signed_in(browser, world["coordinator"], world["token"], width=380)
    narrow.goto(world["coordinator"].url + "/runs/" + world["out"].name)
    _charts_drawn(narrow, 3)
    assert narrow.locator("html").evaluate("e => e.scrollWidth") <= 380
    _shoot(narrow, world, "run-narrow")


def test_site_page_shows_its_ledger_and_data_check(world, browser):
    entry = world["sites"][0]
    ledger = PrivacyLedger(entry["state-dir"], entry["epsilon-budget"], entry["delta"])
    page = _signed_in(browser, world["hospital"], world["token"])
    _charts_drawn(page, 1)
    text = page.inner_text("main")
    assert entry["site-name"] in text
    assert f"{ledger.spent:.3f} spent of {ledger.epsilon_budget}" in text
    releases = page.get_by_role("table", name="releases").inner_text().splitlines()[2:]
    assert len(releases) == len(ledger.releases) == 3  # the statistics, then 2 rounds
    for line, release in zip(releases, ledger.releases, strict=True):
        assert f"{release.noise_multiplier:.3f}" in line and f"\t{release.steps}\t" in line
        assert ("DP-SGD" if release.is_training else "statistics") in line
    assert "0 problem(s)" in text
    _shoot(page, world, "site")


def test_a_run_page_follows_the_rounds_as_they_finish(world, browser):
    finished = world["out"]
    live = world["runs"] / "live-run"
    state = Checkpoint.load(finished)
    assert state is not None
    history = state.meta["history"]

    def checkpoint(rounds: int) -> None:
        meta = {**state.meta, "history": history[:rounds]}
        Checkpoint(rounds, state.run_key, state.weights, state.strategy_state, meta).save(live)

    checkpoint(1)
    page = _signed_in(browser, world["coordinator"], world["token"])
    page.goto(world["coordinator"].url + "/runs/live-run")
    field = page.locator("span[data-field='summary.rounds_done']")
    assert field.inner_text() == "1" and "in progress" in page.inner_text("main")
    checkpoint(2)
    playwright.expect(field).to_have_text("2", timeout=15_000)
    (live / "report.json").write_text((finished / "report.json").read_text())
    status = page.locator("dd[data-field='summary.status']")
    playwright.expect(status).to_have_text("finished", timeout=15_000)
    assert f"{world['report']['model']['name']} v1" in page.inner_text("main")
    shutil.rmtree(live)


def test_requests_without_a_console_token_are_refused(world):
    verify = ssl.create_default_context(cafile=str(world["tls"].ca_cert))
    for console in (world["coordinator"], world["hospital"]):
        api = console.url + ("/api/runs" if console is world["coordinator"] else "/api/site")
        assert httpx.get(api, verify=verify).status_code == 401
        assert httpx.get(console.url + "/", verify=verify).status_code == 401
        bearer = {"Authorization": "Bearer fct_000000000000_" + "a" * 43}
        assert httpx.get(api, headers=bearer, verify=verify).status_code == 401
        other = {"Authorization": f"Bearer {world['app_token']}"}  # '*' is not 'console'
        assert httpx.get(api, headers=other, verify=verify).status_code == 403
        cookie = {"fedcare_console": world["app_token"]}
        assert httpx.get(console.url + "/", cookies=cookie, verify=verify).status_code == 403
        started = time.monotonic()
        ok = httpx.get(api, headers={"Authorization": f"Bearer {world['token']}"}, verify=verify)
        assert ok.status_code == 200 and time.monotonic() - started < 5
        assert ok.headers["content-security-policy"].startswith("default-src 'self'")
