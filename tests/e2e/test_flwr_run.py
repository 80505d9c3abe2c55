"""`flwr run .` with Flower's local simulation connection runs the same app end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from server.settings import RunSettings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _local_superlinks(flwr_home: Path) -> list[int]:
    """PIDs of the local SuperLinks Flower started for this FLWR_HOME (and only those)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"flower-superlink" in part for part in cmdline) and any(
            str(flwr_home).encode() in part for part in cmdline
        ):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def flwr_env(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    yield env
    for pid in _local_superlinks(home):  # `flwr run` leaves its local SuperLink running
        os.kill(pid, signal.SIGTERM)


@pytest.mark.slow
def test_flwr_run_local_simulation(tmp_path, flwr_env):
    out = tmp_path / "run"
    command = [
        str(BIN / "flwr"), "run", ".",
        "--run-config", f'num-server-rounds=2 out-dir="{out}"',
        "--federation-config", "num-supernodes=3",
        "--stream",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env=flwr_env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [h["round"] for h in report["history"]] == [1, 2]
    assert sorted(report["privacy"]["epsilon_spent"]) == ["hospital-0", "hospital-1", "hospital-2"]
    assert all(0 < e <= 1.0 for e in report["privacy"]["epsilon_spent"].values())
    assert report["final"]["roc_auc"] > 0.8

    listed = subprocess.run(
        [str(BIN / "flwr"), "ls", "--format", "json"],
        cwd=ROOT, env=flwr_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    runs = json.loads(listed.stdout)["runs"]
    assert [r["status"] for r in runs] == ["finished:completed"]


def _build_fab(folder: Path) -> Path:
    """`flwr build` of the checkout into ``folder``; the one FAB it wrote."""
    done = subprocess.run(
        [str(BIN / "flwr"), "build", "--app", str(ROOT)],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    fabs = list(folder.glob("*.fab"))
    assert len(fabs) == 1
    return fabs[0]


def test_flwr_build_accepts_the_tree(tmp_path):
    names = zipfile.ZipFile(_build_fab(tmp_path)).namelist()
    for module in ("server/app.py", "client/app.py", "privacy/ledger.py", "models/spec.py"):
        assert module in names
    # Only what the two apps run: every site receives the FAB with every message.
    for left_out in ("deploy/", "cli/", "server/inference/", "client/sdk/"):
        assert not any(name.startswith(left_out) for name in names), left_out
    for left_out in ("protocol/inference.py", "simulations/loopback.py"):
        assert left_out not in names
    # ... but what a simulated run's ServerApp loads to prepare the sites is there
    preparer = RunSettings().site_preparer.partition(":")[0]
    assert preparer.replace(".", "/") + ".py" in names
    assert not any(name.startswith((".venv", "tests/", "docs/")) for name in names)


def test_every_module_in_the_fab_imports_from_the_fab_alone(tmp_path):
    unpacked = tmp_path / "app"
    zipfile.ZipFile(_build_fab(tmp_path)).extractall(unpacked)
    modules = sorted(
        ".".join(p.relative_to(unpacked).with_suffix("").parts).removesuffix(".__init__")
        for p in unpacked.rglob("*.py")
    )
    # The repository is on sys.path through the editable install: take it off, so a
    # module the FAB lacks fails here instead of being found in the checkout.
    check = (
        "import importlib, os, sys\n"
        f"sys.path = [{str(unpacked)!r}] + [p for p in sys.path if p and "
        f"os.path.realpath(p) != {str(ROOT.resolve())!r}]\n"
        f"for m in {modules!r}:\n"
        "    module = importlib.import_module(m)\n"
        f"    assert module.__file__.startswith({str(unpacked)!r}), module.__file__\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
