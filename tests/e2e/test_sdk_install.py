"""The SDK as a clinical application gets it: pip-installed alone into a fresh venv.

``packaging/fedcare-sdk`` is installed into a new virtual environment, which must then
lack torch, Flower, Opacus and numpy; that environment's python calls the real
`fedcare serve` (a child process on a loopback port, stopped by its PID) over TLS with a
bearer token, and must get the registered model's local predictions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_inference import ROWS, make_federation, start_service

pytestmark = pytest.mark.slow
SDK = Path(__file__).resolve().parents[2] / "packaging" / "fedcare-sdk"
HEAVY = ("torch", "flwr", "opacus", "numpy")

# Run with ``python -I`` from the venv's folder: only the venv's site-packages, never this
# checkout, can provide ``client``.
IMPORTS = """
import importlib, json, sys
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as err:
        failed[name] = type(err).__name__
print(json.dumps(failed))
"""
PREDICT = """
import json, os, sys
import client.sdk
from client.sdk import InferenceClient
url, ca_cert = sys.argv[1:3]
rows = json.load(sys.stdin)
with InferenceClient(url, os.environ["FEDCARE_TOKEN"], "ward", ca_cert=ca_cert) as sdk:
    predictions = sdk.predict(rows)
print(json.dumps({"sdk": client.sdk.__file__, "predictions": predictions}))
"""


def run(python: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run the venv's isolated python in the venv's folder; fail with its output."""
    venv = python.parents[1]
    done = subprocess.run(
        [str(python), "-I", *args], cwd=venv, capture_output=True, text=True, **kwargs
    )
    assert done.returncode == 0, f"{args[:2]} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory) -> Path:
    """The python of a fresh venv holding only the SDK distribution and its dependencies."""
    venv = tmp_path_factory.mktemp("sdk-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", str(SDK), timeout=600)
    return python


def test_the_sdk_installs_without_torch_flower_opacus_or_numpy(sdk_python):
    done = run(sdk_python, "-c", IMPORTS, *HEAVY, "client.sdk", timeout=120)
    assert json.loads(done.stdout) == dict.fromkeys(HEAVY, "ModuleNotFoundError")


def test_the_installed_sdk_gets_the_local_predictions_over_tls(sdk_python, tmp_path):
    fed = make_federation(tmp_path / "federation")
    service = start_service(fed, "sdk")
    try:
        done = run(
            sdk_python,
            "-c",
            PREDICT,
            service.url,
            str(fed.tls.ca_cert),
            input=json.dumps(ROWS),
            env={**os.environ, "FEDCARE_TOKEN": fed.token_ward},
            timeout=120,
        )
    finally:
        service.stop()
    answer = json.loads(done.stdout)
    assert Path(answer["sdk"]).is_relative_to(sdk_python.parents[1])
    assert answer["predictions"] == fed.local_predictions(1, ROWS)
