"""The real deployment on loopback: `fedcare provision`'s federation, a SuperLink with TLS
and SuperNode authentication, hospitals' SuperNodes with the warm site runtime (the site's
own executor, approved apps only), the fedcare app run with `flwr run`, SecAgg+ and
DP-SGD, and the faults a federation must survive.

Every process is started here, in its own process group, and stopped here by PID (even
when a test fails); each test's processes use free loopback ports and their own FLWR_HOME.
One provisioned federation and one SuperLink serve the module (start-up is the slow part).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from deploy.process import free_loopback_port
from deploy.provision import app_fab_sha256, provision
from deploy.superlink import CoordinatorError
from deploy.supernode import check_site, load_site_config, site_ledger, start_site
from privacy.signing import load_verify_key
from server.federation.checkpoint import Checkpoint
from server.registry import verify_version_bytes
from simulations.loopback import (
    LoopbackFederation,
    fill_site_file,
    start_loopback_federation,
)

pytestmark = pytest.mark.slow

SITES = ["a", "b", "c"]
TIMINGS: dict[str, float] = {}


def _corrupt(source: Path, dest: Path) -> None:
    """A copy of a site file with a text in a numeric column and an unknown label."""
    with source.open() as handle:
        rows = list(csv.reader(handle))
    rows[3][0] = "not a number"
    rows[5][-1] = "maybe"
    with dest.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    t0 = time.monotonic()
    # A realistic budget for many runs: each run may spend at most 3 and plans its noise
    # to fit that; composed over the module's runs, a site's lifetime ε stays below 30.
    # The SuperLink's state on disk (`coordinator start --keep-state`): the coordinator
    # killed mid-run comes back knowing the sites' nodes (the in-memory default and the
    # sites' supervisors are tested in test_coordinator_restart.py).
    dep = start_loopback_federation(
        root,
        SITES,
        extra_sites=("bad", "stranger"),
        epsilon_budget=30.0,
        epsilon_per_run=3.0,
        keep_coordinator_state=True,
    )
    TIMINGS["federation_up_s"] = time.monotonic() - t0
    try:
        assert dep.coordinator.register_sites(["a"]) == {"a": "already"}  # idempotent
        dep.node_ids |= dep.coordinator.register_sites(["bad"])
        _corrupt(dep.root / "data" / "site-0.csv", dep.root / "data" / "bad.csv")
        fill_site_file(
            dep.site_file("bad"), root / "data" / "bad.csv", dep.schema, free_loopback_port()
        )
        yield dep
    finally:
        left = dep.stop()
        print("\nTIMINGS", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))
        assert not left, f"processes left running: {left}"


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def _rounds_trained(report: dict, site: str) -> int:
    """The rounds in which ``site``'s update was aggregated: its reported ε went up.

    Not "every round it did not refuse": a site that is restarting when a round begins is
    not asked at all in that round (neither trained nor refused).
    """
    before = report["privacy"]["statistics_epsilon"].get(site, 0.0)
    trained = 0
    for entry in report["history"]:
        now = entry["epsilon"].get(site, before)
        trained += now > before
        before = now
    return trained


def _ledgers_agree_with_report(
    dep: LoopbackFederation, report: dict, sites: list[str], killed: tuple[str, ...] = ()
) -> None:
    """No site's ε counted twice or lost: its own ledger says what the run's report says.

    A site ``killed`` while it trained may have recorded that round's release and then died
    before its update left (the ledger records first, by design): one round more in its
    ledger than the coordinator aggregated, its ε still equal to what the report shows.
    """
    spent = report["privacy"]["epsilon_spent"]
    for site in sites:
        ledger = site_ledger(load_site_config(dep.site_file(site)))
        assert spent[site] == pytest.approx(ledger.spent), site
        runs = [r for r in ledger.summary()["runs"] if r["run"] == report["run"]]
        trained = _rounds_trained(report, site)
        allowed = [[trained], [trained + 1]] if site in killed else [[trained]]
        assert [r["rounds"] for r in runs] in allowed, site


def test_three_rounds_secagg_dp_signed_model_and_a_supernode_killed_mid_round(deployment):
    """3 rounds with SecAgg+ and DP; site c's SuperNode is killed while it trains in
    round 1 and restarted: round 1 completes with a and b (SecAgg+ dropout recovery), c
    trains again in rounds 2 and 3, and the model lands signed in the registry."""
    dep = deployment
    log_c = dep.nodes["c"].log_path
    seen = log_c.read_text().count("Receiving: train message")
    t0 = time.monotonic()
    run_id = dep.coordinator.submit(dep.app, dep.run_config("e2e", **{"num-server-rounds": 3}))
    # SecAgg+ sends 4 TRAIN messages a round; the 3rd asks for the masked update.
    # Looked for every 20 ms: the stage takes c ~0.1–0.3 s, and c must die before its
    # masked update leaves (else the round aggregates it and c is not a dropout).
    _wait_for(
        lambda: log_c.read_text().count("Receiving: train message") >= seen + 3,
        600,
        "site c to be asked for its masked update",
        poll=0.02,
    )
    dep.nodes["c"].kill()
    # Restarted at once: start_site tells the SuperLink that the killed SuperNode is gone
    # (otherwise it would refuse the key for about a minute, until heartbeats time out).
    t_kill = time.monotonic()
    dep.start("c")
    dep.coordinator.wait_nodes_online(len(SITES), timeout=300)
    TIMINGS["rejoin_s"] = time.monotonic() - t_kill
    dep.nodes["c"].remember_children()
    run = dep.coordinator.wait_run(run_id, timeout=1200)
    TIMINGS["e2e_3_rounds_s"] = time.monotonic() - t0
    assert run["status"] == "finished:completed", dep.coordinator.run_logs(run_id)[-4000:]

    report = json.loads((dep.root / "e2e" / "report.json").read_text())
    assert report["settings"]["mode"] == "deployment"
    history = report["history"]
    assert history[0]["sites_trained"] == 2 and "c" in history[0]["refused"]
    # c trains again from the first round that begins once it is back (round 2, or round 3
    # if round 2 began while it restarted); it is never refused after the round it left
    assert all("c" not in entry["refused"] for entry in history[1:])
    assert history[-1]["sites_trained"] == 3 and not history[-1]["refused"]
    TIMINGS["c_back_in_round"] = next(e["round"] for e in history[1:] if e["sites_trained"] == 3)
    assert report["final"]["roc_auc"] > 0.8
    _ledgers_agree_with_report(dep, report, SITES, killed=("c",))

    logs = dep.coordinator.run_logs(run_id)
    # (the ServerApp's log has each record twice: Flower's console format and a timestamped one)
    assert len(re.findall(r"\d:INFO:Secure aggregation completed", logs)) == 3
    assert "Secure aggregation halted" not in logs

    version = Path(report["model"]["path"])
    site_key = load_verify_key(dep.root / "fed" / "sites" / "a" / "signing.pub")
    verify_version_bytes(version, site_key)  # raises unless signed by the coordinator


def test_site_with_invalid_data_reports_the_error_and_the_federation_goes_on(deployment):
    dep = deployment
    bad = load_site_config(dep.site_file("bad"))
    check = check_site(bad)
    assert not check.ok and any("row" in p for p in check.problems)
    dep.start("bad")
    try:
        dep.coordinator.wait_nodes_online(len(SITES) + 1, timeout=300)
        run = dep.coordinator.run(dep.app, dep.run_config("bad", **{"num-server-rounds": 1}))
    finally:
        dep.nodes["bad"].stop()
    assert run["status"] == "finished:completed"
    assert dep.nodes["bad"].popen.returncode is not None  # stopped by us, not crashed
    assert "Traceback" not in dep.nodes["bad"].log_text()
    report = json.loads((dep.root / "bad" / "report.json").read_text())
    (entry,) = report["history"]
    assert entry["sites_trained"] == len(SITES)
    # the site never got to name itself (it refused from the first message on): it is
    # reported by its node id, with the reason it gave
    (reason,) = entry["refused"].values()
    assert reason.startswith("site data failed validation") and "row 4" in reason


def test_coordinator_killed_mid_run_resumes_from_its_checkpoint(deployment):
    dep = deployment
    coordinator = dep.coordinator
    out = dep.root / "resumed"
    config = dep.run_config("resumed", **{"num-server-rounds": 2})
    coordinator.submit(dep.app, config)
    _wait_for(lambda: Checkpoint.load(out) is not None, 900, "the round 1 checkpoint", 1.0)
    coordinator.process.kill()  # SuperLink, SuperExec and ServerApp, no goodbye
    dep.stopped.append(coordinator.process)
    t0 = time.monotonic()
    coordinator.start()  # same state database, same port
    coordinator.wait_nodes_online(len(SITES), timeout=300)
    TIMINGS["coordinator_restart_s"] = time.monotonic() - t0
    run = coordinator.run(dep.app, {**config, "resume": True}, timeout=1200)
    assert run["status"] == "finished:completed"

    report = json.loads((out / "report.json").read_text())
    assert [h["round"] for h in report["history"]] == [1, 2]
    _ledgers_agree_with_report(dep, report, SITES)


def test_unregistered_supernode_is_refused(deployment):
    dep = deployment
    cfg = load_site_config(dep.site_file("stranger"))
    cfg = dataclasses.replace(cfg, runtime_port=free_loopback_port())
    process = start_site(cfg, max_retries=1, max_wait_time=20)
    dep.stopped.append(process)
    process.popen.wait(timeout=120)
    assert process.popen.returncode != 0
    assert "Failed to activate SuperNode" in process.log_text()
    assert "No SuperNode found with the given public key" in dep.coordinator.process.log_text()


def test_supernode_with_the_wrong_ca_cannot_connect(deployment, tmp_path):
    dep = deployment
    provision("other", ["x"], tmp_path / "other")
    cfg = load_site_config(dep.site_file("a"))
    cfg = dataclasses.replace(
        cfg,
        runtime_port=free_loopback_port(),
        root_certificates=tmp_path / "other" / "sites" / "x" / "ca.crt",
        state_dir=tmp_path / "state-wrong-ca",
    )
    process = start_site(cfg, max_retries=1, max_wait_time=20)
    dep.stopped.append(process)
    process.popen.wait(timeout=120)
    assert process.popen.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in process.log_text()


def test_failed_run_makes_coordinator_run_fail(deployment):
    """`flwr run` reports success for a run whose ServerApp then fails; `coordinator run`
    reads the run's status and raises."""
    dep = deployment
    config = dep.run_config("failing", **{"schema-path": str(dep.root / "no-such-schema.toml")})
    with pytest.raises(CoordinatorError, match="finished:failed"):
        dep.coordinator.run(dep.app, config, timeout=600)


MARKER_CODE = """
import pathlib as _pathlib
_pathlib.Path({marker!r}).write_text("the run's own ClientApp code ran")
"""


def test_a_modified_clientapp_is_refused_by_every_site_and_never_runs(deployment, tmp_path):
    """A run whose FAB carries another ClientApp (one that writes a marker file as soon as
    any of it is imported) is refused by every site before anything of it runs, and the
    run fails; the approved app then runs, and a site that approves nothing is reported
    in the run's report with a refusal (code 105) naming the site and the app's hash."""
    dep = deployment
    marker = tmp_path / "marker"
    evil = tmp_path / "evil" / "fedcare"
    shutil.copytree(dep.app, evil)
    client_app = evil / "client" / "app.py"
    client_app.write_text(MARKER_CODE.format(marker=str(marker)) + client_app.read_text())
    evil_hash = app_fab_sha256(evil)
    run_id = dep.coordinator.submit(evil, dep.run_config("evil", **{"num-server-rounds": 1}))
    run = dep.coordinator.wait_run(run_id, timeout=600)
    assert run["status"] == "finished:failed"  # no site answered the statistics query
    assert not marker.exists()
    for site in SITES:
        executor_log = dep.nodes[site].companions[0].log_text()
        assert f"query: app {evil_hash[:12]} refused" in executor_log, site

    # Site c now approves nothing: the approved app runs with a and b, c's refusal is
    # reported by the coordinator under the site's name.
    site_file = dep.site_file("c")
    original = site_file.read_text()
    site_file.write_text(re.sub(r"(?m)^approved-apps = .*$", "approved-apps = []", original))
    dep.nodes["c"].stop()
    try:
        dep.start("c")
        dep.coordinator.wait_nodes_online(len(SITES), timeout=300)
        run = dep.coordinator.run(dep.app, dep.run_config("approved", **{"num-server-rounds": 1}))
    finally:
        site_file.write_text(original)
        dep.nodes["c"].stop()
        dep.start("c")
    assert run["status"] == "finished:completed"
    report = json.loads((dep.root / "approved" / "report.json").read_text())
    (entry,) = report["history"]
    assert entry["sites_trained"] == len(SITES) - 1
    (reason,) = entry["refused"].values()
    approved_hash = app_fab_sha256(dep.app)
    assert reason.startswith("site c refused the run") and approved_hash in reason
    assert not marker.exists()
