"""The SuperNode's capped poll: the guard on Flower's shape, the cap, the setting."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from deploy import supernode_poll
from deploy.supernode import load_site_config, supernode_command, write_node_config
from deploy.supernode_poll import (
    BRISK_POLL,
    BRISK_WINDOW,
    LOCAL_WAIT,
    SUPERNODE_LOOP,
    FlowerChanged,
    PollPace,
    cap_sleeps,
    check_flower_shape,
    main,
    module_sleeps,
    notify_on_message,
)

SHAPED = """
import time


def idle():
    time.sleep(3)


def wait_for_reply():
    time.sleep(0.5)
    time.sleep(0.5)


def _pull_and_store_message(state, object_store, node_config, receive, get_run, get_fab,
                            pull_object, confirm_message_received, trusted_entities):
    return receive()
"""


def _module(tmp_path: Path, source: str, name: str = "fake_supernode_loop"):
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # inspect.getsource looks it up
    spec.loader.exec_module(module)
    return module


def test_the_installed_flower_has_the_shape_the_cap_was_written_for():
    check_flower_shape()  # raises FlowerChanged once a Flower upgrade moves the sleeps
    assert module_sleeps(SUPERNODE_LOOP) == {3: 1, 0.5: 2}


@pytest.mark.parametrize(
    "change",
    [
        ("time.sleep(3)", "time.sleep(5)"),  # another pause
        ("time.sleep(3)", "time.sleep(interval)"),  # a computed one
        ("import time", "import time as clock\ntime = None"),  # no time module
        ("trusted_entities):", "trusted_entities, hooks):"),  # the pull step changed
        ("def _pull_and_store_message", "def _pull_message"),  # or is gone
    ],
)
def test_a_flower_that_changed_shape_is_refused_loudly(tmp_path, change):
    module = _module(tmp_path, SHAPED.replace(*change), f"changed_{abs(hash(change))}")
    with pytest.raises(FlowerChanged, match="(sleeps|no longer imports|takes)"):
        check_flower_shape(module)


def test_only_the_patched_module_sleeps_less(tmp_path, monkeypatch):
    module = _module(tmp_path, SHAPED, "capped_loop")
    check_flower_shape(module)
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    cap_sleeps(module, PollPace(idle=0.2))
    module.idle()
    module.wait_for_reply()
    # the idle pause asks the SuperLink; the waits for the reply only read local state
    assert slept == [0.2, LOCAL_WAIT, LOCAL_WAIT]
    assert module.time is not time and module.time.monotonic is time.monotonic
    time.sleep(3)  # the rest of the process keeps the real sleep
    assert slept[-1] == 3


def test_the_supernode_looks_briskly_only_just_after_a_message(tmp_path, monkeypatch):
    module = _module(tmp_path, SHAPED, "paced_loop")
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    pace = PollPace(idle=0.2)
    cap_sleeps(module, pace)
    module.idle()  # nothing came yet
    pace.message_arrived()
    now[0] += BRISK_WINDOW - 0.5
    module.idle()  # the run's next message is due
    now[0] += 1.0
    module.idle()  # nothing for longer than the window: idle again
    assert slept == [0.2, BRISK_POLL, 0.2]
    # a configured poll shorter than the brisk one is kept
    assert PollPace(idle=0.05, brisk=0.1).idle_pause() == 0.05


def test_the_executor_is_nudged_only_when_a_message_was_stored(tmp_path):
    module = _module(tmp_path, SHAPED, "nudging_loop")
    nudges: list[int] = []
    notify_on_message(module, lambda: nudges.append(1))
    check_flower_shape(module)  # the wrapper keeps the step's signature
    args = [None] * 9
    args[3] = lambda: None  # receive: no message
    assert module._pull_and_store_message(*args) is None and nudges == []
    args[3] = lambda: 42  # a message of run 42 was stored
    assert module._pull_and_store_message(*args) == 42 and nudges == [1]


def test_a_bad_interval_stops_the_entry_point_before_flower_starts(monkeypatch, capsys):
    started: list[list[str]] = []
    monkeypatch.setattr(supernode_poll, "flower_supernode", lambda: started.append(sys.argv))
    with pytest.raises(SystemExit) as exit_info:
        main(["--poll-interval", "0", "--", "--superlink", "x:1"])
    assert exit_info.value.code == 2 and not started
    assert "poll interval must be within" in capsys.readouterr().err


def test_the_warm_site_starts_flower_supernode_through_the_capped_entry(site):
    cfg = load_site_config(site)
    assert cfg.supernode_poll_interval == 0.2  # as provisioned
    cmd = supernode_command(cfg, write_node_config(cfg))
    assert cmd[1:4] == ["-m", "deploy.supernode_poll", "--poll-interval"] and cmd[4] == "0.2"
    assert cmd[5:8] == ["--task-signal-port", str(cfg.runtime_port), "--"]
    assert cmd[8:10] == ["--superlink", cfg.superlink]
    assert Path(supernode_command(cfg, write_node_config(cfg), warm=False)[0]).name == (
        "flower-supernode"
    )
