"""The coordinator console's federation page against a real SuperLink, in real Chromium.

A federation is provisioned for the sites of a small simulation (2 sites, 1 round) plus a
third site; the SuperLink runs with TLS and SuperNode authentication on a free loopback
port, all three sites' keys are registered (and one key of another federation), and the
two simulated sites' SuperNodes connect with their own keys, pointed at their data. No
federation run is needed: the ε a site last reported comes from the simulation's report.
The page must name each node's site (matched by key), say online / never connected as
Flower does, show the report's ε; a SuperNode stopped by PID shows offline on reload.
"""

from __future__ import annotations

import json
import shutil
import ssl
from pathlib import Path

import httpx
import pytest

from console.federation import NEVER_CONNECTED
from console.launcher import start_console
from deploy.process import ManagedProcess, free_loopback_port
from deploy.provision import provision
from deploy.superlink import CONNECTION, open_coordinator
from deploy.supernode import load_site_config, start_site
from privacy.ledger import PrivacyLedger
from privacy.signing import make_local_tls
from privacy.tokens import TokenStore
from server.settings import RunSettings
from simulations.loopback import fill_site_file
from simulations.runner import run_simulated_federation

pytestmark = pytest.mark.slow
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"
NEVER = "never"  # the third site: provisioned and registered, its SuperNode never started


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("console-federation")
    out = root / "runs" / "breast-cancer-2x1"
    settings = RunSettings(sites=2, num_server_rounds=1, epsilon=1.0, seed=3, out_dir=str(out))
    report = run_simulated_federation(settings).report
    simulated = json.loads((out / "simulation" / "sites.json").read_text())
    names = [s["site-name"] for s in simulated]
    fed = root / "fed"
    provision("care", [*names, NEVER], fed, port=free_loopback_port(), approved_apps=[])
    provision("other", ["intruder"], root / "other", port=9092, approved_apps=[])
    for entry in simulated:
        fill_site_file(
            fed / "sites" / entry["site-name"] / "site.toml",
            Path(entry["data-path"]),
            Path(entry["schema-path"]),
            free_loopback_port(),
        )
    coordinator = open_coordinator(fed / "coordinator", host="127.0.0.1")
    tls = make_local_tls(root / "tls")
    store = TokenStore(root / "tokens.json")
    token, _ = store.create("operator", ["console"])
    processes: list[ManagedProcess] = []
    console = None
    try:
        coordinator.start()
        node_ids = coordinator.register_sites()
        stranger = coordinator.flwr_json(
            "supernode",
            "register",
            str(root / "other" / "coordinator" / "sites" / "intruder.pub"),
            CONNECTION,
            "--name",
            "intruder",
        )
        assert stranger["success"], stranger
        nodes = {
            name: start_site(load_site_config(fed / "sites" / name / "site.toml"), warm=False)
            for name in names
        }
        processes += nodes.values()
        coordinator.wait_nodes_online(len(names), timeout=120)
        console = start_console(
            [
                "console",
                "--runs",
                str(root / "runs"),
                "--dir",
                str(fed / "coordinator"),
                "--tokens",
                str(root / "tokens.json"),
                "--tls-cert",
                str(tls.server_cert),
                "--tls-key",
                str(tls.server_key),
            ],
            root / "console.log",
            tls.ca_cert,
        )
        yield {
            "root": root,
            "report": report,
            "simulated": simulated,
            "names": names,
            "node_ids": node_ids,
            "stranger": str(stranger["node-id"]),
            "nodes": nodes,
            "coordinator": coordinator,
            "console": console,
            "token": token,
            "tls": tls,
        }
    finally:
        if console is not None:
            console.stop()
            assert not console.managed.alive()
        for process in processes:
            process.stop()
            assert not process.alive()
        coordinator.stop()
        assert coordinator.process is None or not coordinator.process.alive()


def _flower_says(coordinator) -> dict[str, str]:
    """Node id → status, as `flwr supernode list --format json` reports it."""
    listing = coordinator.flwr_json("supernode", "list", CONNECTION)
    assert listing["success"], listing
    return {n["node-id"]: n["status"] for n in listing["nodes"]}


def _site_rows(page) -> dict[str, list[str]]:
    lines = page.get_by_role("table", name="sites").inner_text().splitlines()[2:]
    cells = [line.split("\t") for line in lines]
    return {row[0]: row for row in cells}


def _shoot(page, world, name: str) -> None:
    path = world["root"] / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    DOCS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, DOCS / f"{name}.png")


def test_federation_page_names_each_sites_node_and_follows_a_supernode_stopping(federation):
    world = federation
    names, node_ids = world["names"], world["node_ids"]
    flower = _flower_says(world["coordinator"])
    assert [flower[node_ids[n]] for n in names] == ["online", "online"]
    assert flower[node_ids[NEVER]] == "registered" and flower[world["stranger"]] == "registered"

    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = chromium.new_context(
            ignore_https_errors=True, viewport={"width": 1200, "height": 900}
        )
        page = context.new_page()
        assert page.goto(world["console"].url + "/").status == 401
        page.get_by_label("console token").fill(world["token"])
        with page.expect_navigation():
            page.get_by_label("console token").press("Enter")

        rows = _site_rows(page)
        assert sorted(rows) == sorted([*names, NEVER])
        spent = world["report"]["privacy"]["epsilon_spent"]
        for name, entry in zip(names, world["simulated"], strict=True):
            row = rows[name]
            assert row[1] == "online" and row[2].startswith("heartbeat 20")
            assert row[4] == node_ids[name]  # the node its key registered, not another's
            ledger = PrivacyLedger(entry["state-dir"], entry["epsilon-budget"], entry["delta"])
            assert f"{spent[name]:.3f}" == row[5] == f"{ledger.spent:.3f}"
            assert row[6] == f"{1.0 - spent[name]:.3f}"  # the simulation's budget of 1
        assert rows[NEVER][1] == NEVER_CONNECTED and rows[NEVER][2] == "—"
        assert rows[NEVER][4] == node_ids[NEVER] and rows[NEVER][5] == "—"
        strangers = page.get_by_role("table", name="SuperNodes of no provisioned site")
        assert world["stranger"] in strangers.inner_text()
        assert "2 online, 0 offline, 1 registered, never connected" in page.inner_text("main")
        _shoot(page, world, "federation")

        # a hospital's SuperNode stops (SIGTERM to its PID): it says goodbye to the SuperLink
        stopped = names[1]
        world["nodes"][stopped].stop()
        assert _flower_says(world["coordinator"])[node_ids[stopped]] == "offline"
        page.reload()
        rows = _site_rows(page)
        assert rows[stopped][1] == "offline" and rows[stopped][2].startswith("went offline 20")
        assert rows[names[0]][1] == "online"
        _shoot(page, world, "federation-offline")

        verify = ssl.create_default_context(cafile=str(world["tls"].ca_cert))
        bearer = {"Authorization": f"Bearer {world['token']}"}
        api = httpx.get(world["console"].url + "/api/federation", headers=bearer, verify=verify)
        sites = {s["name"]: s for s in api.json()["sites"]}
        assert sites[stopped]["status"] == "offline" and sites[names[0]]["status"] == "online"
        assert sites[NEVER]["node_id"] == node_ids[NEVER]
        chromium.close()
