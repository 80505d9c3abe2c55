"""When `fedcare site start` starts the SuperNode again, and when it gives up.

The SuperNode is replaced by short real processes that write what flower-supernode logs
(or not) to the site's log and exit; the restart policy is what is tested.
"""

from __future__ import annotations

import os
import sys
import threading
from types import SimpleNamespace

import pytest

from deploy import site_supervisor
from deploy.process import ManagedProcess, spawn
from deploy.site_supervisor import SiteEnded, supervise_site

JOINS = "print('SuperNode ID: 42')"  # activates, then ends (the SuperLink forgot it)
FAILS = "import sys; print('Failed to activate SuperNode'); sys.exit(1)"
RUNS = "import time; print('SuperNode ID: 43'); time.sleep(60)"


def _scripted_site(monkeypatch, tmp_path, scripts: list[str]):
    """A site whose successive SuperNodes run ``scripts`` in turn; the list of started."""
    cfg = SimpleNamespace(state_dir=tmp_path)
    started: list[ManagedProcess] = []

    def start_site(_cfg, warm=True):
        code = scripts[len(started)]
        process = spawn(
            "supernode[x]",
            [sys.executable, "-c", code],
            dict(os.environ),
            tmp_path / "supernode.log",
        )
        started.append(process)
        return process

    monkeypatch.setattr(site_supervisor, "start_site", start_site)
    monkeypatch.setattr(site_supervisor, "RESTART_PAUSE", 0.0)
    return cfg, started


def test_a_site_that_had_joined_is_started_again_until_it_is_stopped(monkeypatch, tmp_path):
    # joined, dropped; the new SuperLink has not registered the key yet; then it joins
    cfg, started = _scripted_site(monkeypatch, tmp_path, [JOINS, FAILS, RUNS])
    stop, reasons = threading.Event(), []
    thread = threading.Thread(
        target=supervise_site, args=(cfg, stop), kwargs={"on_restart": reasons.append}
    )
    thread.start()
    while len(started) < 3:
        thread.join(0.1)
        assert thread.is_alive()
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert len(reasons) == 2 and "starting it again" in reasons[0]
    assert not started[-1].alive()  # stopped by PID when the supervisor was stopped


def test_a_site_that_never_joined_is_not_started_again(monkeypatch, tmp_path):
    cfg, started = _scripted_site(monkeypatch, tmp_path, [FAILS])
    with pytest.raises(SiteEnded, match="before the SuperNode had joined"):
        supervise_site(cfg, threading.Event())
    assert len(started) == 1


def test_a_site_dropped_too_long_ago_gives_up(monkeypatch, tmp_path):
    cfg, started = _scripted_site(monkeypatch, tmp_path, [JOINS, FAILS, FAILS])
    monkeypatch.setattr(site_supervisor, "REJOIN_WINDOW", 0.0)
    with pytest.raises(SiteEnded):
        supervise_site(cfg, threading.Event())
    assert len(started) == 2
