"""The warm site runtime's settings and its app check (no processes: see the e2e tests)."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from deploy.site_runtime import (
    TASK_POLL_INTERVAL_ENV,
    ExecutorSettings,
    app_refusal,
    executor_command,
    fab_sha256,
    load_client_app,
    load_preload,
    main,
    task_poll_interval,
)
from deploy.supernode import (
    SiteAlreadyRunning,
    load_site_config,
    release_stale_session,
    start_site,
    supernode_command,
    write_node_config,
)
from deploy.supernode_poll import SUPERNODE_POLL_INTERVAL_ENV, supernode_poll_interval
from models.data.site_config import SiteConfigError
from protocol.federation import RefusalCode
from simulations.loopback import snapshot_app
from tests.unit.deploy.conftest import FAKE_APP_HASH, REAL_APP_FAB_SHA256

ROOT = Path(__file__).resolve().parents[3]


def test_provisioned_site_approves_the_app_and_passes_the_epsilon_caps(site):
    cfg = load_site_config(site)
    assert cfg.approved_apps == (FAKE_APP_HASH,)
    assert cfg.client_app == "client.app:app" and cfg.task_poll_interval == 0.5
    assert (cfg.epsilon_budget, cfg.epsilon_per_run, cfg.epsilon_per_federation) == (5.0, 2.0, 5.0)
    parsed = parse_config_args([str(write_node_config(cfg))])
    assert parsed["epsilon-budget"] == 5.0
    assert parsed["epsilon-per-run"] == 2.0 and parsed["epsilon-per-federation"] == 5.0


def test_caps_absent_from_site_toml_are_not_in_the_node_config(site):
    text = re.sub(r"(?m)^epsilon-per-(run|federation) = .*\n", "", site.read_text())
    site.write_text(text)
    cfg = load_site_config(site)
    assert cfg.epsilon_per_run is None and cfg.epsilon_per_federation is None
    assert not {"epsilon-per-run", "epsilon-per-federation"} & set(cfg.node_config)


def test_approved_apps_must_be_sha256_digests(site):
    site.write_text(site.read_text().replace(FAKE_APP_HASH, "not-a-hash"))
    with pytest.raises(SiteConfigError, match="approved-apps"):
        load_site_config(site)


def test_warm_supernode_runs_with_process_isolation(site, tmp_path):
    cfg = load_site_config(site)
    node_cfg = write_node_config(cfg)
    assert supernode_command(cfg, node_cfg)[-2:] == ["--isolation", "process"]
    assert "--isolation" not in supernode_command(cfg, node_cfg, warm=False)
    cmd = executor_command("python", "127.0.0.1:9", "a", ["1" * 64, "2" * 64], "x:y", 0.2, 7, 9)
    assert cmd[:3] == ["python", "-m", "deploy.site_runtime"]
    assert cmd.count("--approved-app") == 2 and cmd[cmd.index("--supernode-pid") + 1] == "7"
    # the SuperNode nudges the executor on the runtime port's number (UDP)
    assert cmd[cmd.index("--task-signal-port") + 1] == "9"
    entry = supernode_command(cfg, node_cfg)
    assert entry[entry.index("--task-signal-port") + 1] == str(cfg.runtime_port)


def test_only_an_approved_hash_runs_and_a_refusal_names_site_and_hash():
    digest = fab_sha256(b"some fab")
    assert digest == hashlib.sha256(b"some fab").hexdigest()
    assert app_refusal("a", digest, frozenset({digest})) is None
    error = app_refusal("a", digest, frozenset({"0" * 64}))
    assert error is not None and error.code == RefusalCode.APP_NOT_APPROVED == 105
    assert error.reason.startswith("site a refused the run") and digest in error.reason


@pytest.mark.parametrize(
    ("setting", "env", "bad"),
    [
        (task_poll_interval, TASK_POLL_INTERVAL_ENV, "0"),
        (supernode_poll_interval, SUPERNODE_POLL_INTERVAL_ENV, "10"),
        (supernode_poll_interval, SUPERNODE_POLL_INTERVAL_ENV, "fast"),
    ],
)
def test_poll_interval_from_the_environment_wins_and_is_bounded(monkeypatch, setting, env, bad):
    assert setting(0.3) == 0.3
    monkeypatch.setenv(env, "0.1")
    assert setting(0.3) == 0.1
    monkeypatch.setenv(env, bad)
    with pytest.raises(ValueError, match=f"poll interval must be .*{env if bad == 'fast' else ''}"):
        setting(0.3)


def test_the_client_app_reference_must_name_a_clientapp():
    with pytest.raises(ValueError, match="not a Flower ClientApp"):
        load_client_app("deploy.site_runtime:main")
    with pytest.raises(SystemExit):
        main(["--site", "a"])  # no Runtime API address


def test_a_site_is_not_started_twice_from_one_state_folder(site):
    cfg = load_site_config(site)
    cfg.state_dir.mkdir(parents=True)
    (cfg.state_dir / "supernode.pid").write_text(str(os.getpid()))
    with pytest.raises(SiteAlreadyRunning, match="runs already"):
        start_site(cfg)


def test_no_stale_session_to_release_without_a_previous_supernode(site):
    assert release_stale_session(load_site_config(site)) is False


def test_the_approved_hash_is_the_hash_flwr_gives_the_app_and_survives_a_snapshot(tmp_path):
    copy, copied = snapshot_app(tmp_path / "fedcare", ROOT)
    assert re.fullmatch(r"[0-9a-f]{64}", copied)
    assert REAL_APP_FAB_SHA256(copy) == copied
    assert not (copy / "tests").exists() and not (copy / "docs").exists()
    assert not (copy / "benchmarks").exists() and (copy / "client" / "app.py").exists()


def test_the_executor_preloads_through_the_app_module_with_the_node_config(tmp_path, monkeypatch):
    (tmp_path / "site_app_with_preload.py").write_text(
        "calls = []\ndef preload_site(node_config):\n    calls.append(node_config)\n"
    )
    (tmp_path / "site_app_without.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    node_config = tmp_path / "node-config.toml"
    node_config.write_text('data-path = "/data/site.csv"\nepsilon-budget = 3.0\n')

    def settings(app: str, config: Path | None) -> ExecutorSettings:
        return ExecutorSettings("127.0.0.1:1", "a", frozenset(), app, node_config=config)

    load_preload(settings("site_app_with_preload:app", node_config))()
    load_preload(settings("site_app_with_preload:app", None))()  # no node config: nothing
    load_preload(settings("site_app_without:app", node_config))()  # no hook: nothing
    module = importlib.import_module("site_app_with_preload")
    assert module.calls == [{"data-path": "/data/site.csv", "epsilon-budget": 3.0}]
