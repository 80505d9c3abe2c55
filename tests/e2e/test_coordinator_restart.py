"""The coordinator's default: the SuperLink's state in memory, the sites supervised.

A real loopback federation (TLS, SuperNode authentication, the warm site runtime), its two
sites run as `fedcare site start` runs them. The SuperLink is killed mid-run and started
again: it has forgotten the sites' nodes, the coordinator registers their keys again, the
sites' supervisors start their SuperNodes again, and the resumed run completes with every
site's ledger agreeing with the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from deploy.superlink import COMPLETED
from deploy.supernode import load_site_config, site_ledger
from server.federation.checkpoint import Checkpoint
from simulations.loopback import start_loopback_federation

pytestmark = pytest.mark.slow

SITES = ["a", "b"]


def _wait_for_checkpoint(out: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while Checkpoint.load(out) is None:
        assert time.monotonic() < deadline, "no round-1 checkpoint in time"
        time.sleep(1.0)


def test_in_memory_coordinator_restarted_the_sites_rejoin_and_the_run_resumes(tmp_path):
    dep = start_loopback_federation(tmp_path, SITES, epsilon_budget=10.0, supervised=True)
    try:
        coordinator = dep.coordinator
        first = {site: dep.nodes[site].pid for site in SITES}
        out = tmp_path / "resumed"
        config = dep.run_config("resumed", **{"num-server-rounds": 2})
        coordinator.submit(dep.app, config)
        _wait_for_checkpoint(out, 900)

        coordinator.process.kill()  # SuperLink, SuperExec and ServerApp, no goodbye
        dep.stopped.append(coordinator.process)
        coordinator.start()
        registered = coordinator.register_sites()
        assert "already" not in registered.values()  # the new SuperLink knew no key
        coordinator.wait_nodes_online(len(SITES), timeout=300)
        # nobody restarted the sites by hand: their supervisors did
        assert all(dep.nodes[site].pid != first[site] for site in SITES)

        run = coordinator.run(dep.app, {**config, "resume": True}, timeout=1200)
        assert run["status"] == COMPLETED
        report = json.loads((out / "report.json").read_text())
        assert [h["round"] for h in report["history"]] == [1, 2]
        for site in SITES:
            ledger = site_ledger(load_site_config(dep.site_file(site)))
            assert report["privacy"]["epsilon_spent"][site] == pytest.approx(ledger.spent)
    finally:
        assert not dep.stop()
