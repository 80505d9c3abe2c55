"""Provisioning builds fedcare's FAB (seconds) for each new site.toml; the tests here get
a fixed hash instead (``REAL_APP_FAB_SHA256`` is the real function)."""

from __future__ import annotations

from pathlib import Path

import pytest

import deploy.provision

FAKE_APP_HASH = "ab" * 32
REAL_APP_FAB_SHA256 = deploy.provision.app_fab_sha256


@pytest.fixture(autouse=True)
def _fast_app_hash(monkeypatch):
    monkeypatch.setattr(deploy.provision, "app_fab_sha256", lambda app_dir=None: FAKE_APP_HASH)


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """A provisioned site's ``site.toml`` (budget 5, per-run cap 2)."""
    deploy.provision.provision(
        "demo", ["a"], tmp_path / "fed", epsilon_budget=5.0, epsilon_per_run=2.0
    )
    return tmp_path / "fed" / "sites" / "a" / "site.toml"
