"""The SDK as a clinical application gets it: pip-installed alone into a fresh venv.

``packaging/fedcare-sdk`` is installed into a new virtual environment, which must then
lack torch, Flower, Opacus and numpy; that environment's python calls the real
`fedcare serve` (a child process on a loopback port, stopped by its PID) over TLS with a
bearer token, and must get the registered model's local predictions. Then the ``[he]``
extra is installed into the same environment (one venv for the module, to save the
time of a second): it adds TenSEAL (and its numpy), still no torch, Flower or Opacus, and
its homomorphic predictions of a logistic regression must equal the plaintext route's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.data.features import FeatureEncoder, Standardization
from models.data.kinds.registry import load_schema
from models.families import build_model
from models.spec import ModelSpec, get_weights
from privacy import signing
from server.registry import ModelRegistry
from tests.e2e.test_inference import ROWS, make_federation, start_service

pytestmark = pytest.mark.slow
SDK = Path(__file__).resolve().parents[2] / "packaging" / "fedcare-sdk"
HEAVY = ("torch", "flwr", "opacus", "numpy")
TRAINING = ("torch", "flwr", "opacus")  # never in the SDK's environment, even with [he]

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
# Both modes from the installed SDK: the plaintext route's predictions and the HE ones.
PREDICT_HE = """
import json, os, sys
import client.sdk, tenseal
from client.sdk import InferenceClient
url, ca_cert, model = sys.argv[1:4]
rows = json.load(sys.stdin)
token = os.environ["FEDCARE_TOKEN"]
answer = {"sdk": client.sdk.__file__, "tenseal": tenseal.__file__}
for mode in ("plain", "he"):
    with InferenceClient(url, token, model, ca_cert=ca_cert, mode=mode, timeout=120) as sdk:
        answer[mode] = sdk.predict(rows)
print(json.dumps(answer))
"""


def run(python: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run the venv's isolated python in the venv's folder; fail with its output."""
    venv = python.parents[1]
    done = subprocess.run(
        [str(python), "-I", *args], cwd=venv, capture_output=True, text=True, **kwargs
    )
    assert done.returncode == 0, f"{args[:2]} failed:\n{done.stdout}\n{done.stderr}"
    return done


def failed_imports(python: Path, *names: str) -> dict[str, str]:
    """The modules of ``names`` the venv's python cannot import, with the error's type."""
    return json.loads(run(python, "-c", IMPORTS, *names, timeout=120).stdout)


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The python of a fresh venv holding only the SDK distribution and its dependencies,
    and what it could not import right after the install (before any extra is added)."""
    venv = tmp_path_factory.mktemp("sdk-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", str(SDK), timeout=600)
    return python, failed_imports(python, *HEAVY, "client.sdk")


@pytest.fixture(scope="module")
def sdk_python(sdk_venv) -> Path:
    return sdk_venv[0]


@pytest.fixture(scope="module")
def sdk_he_python(sdk_venv) -> Path:
    """The same venv with ``fedcare-sdk[he]`` installed on top (adds TenSEAL)."""
    python = sdk_venv[0]
    run(python, "-m", "pip", "install", "--quiet", f"{SDK}[he]", timeout=900)
    return python


def test_the_sdk_installs_without_torch_flower_opacus_or_numpy(sdk_venv):
    # Checked before the [he] extra could be installed, whatever order the tests run in.
    assert sdk_venv[1] == dict.fromkeys(HEAVY, "ModuleNotFoundError")


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


def register_logreg(fed) -> str:
    """A signed logistic regression on the ward schema; return its name."""
    schema = load_schema(fed.root / "schema.toml")
    scale = Standardization(mean={"age": 50.0}, std={"age": 10.0})
    dim = FeatureEncoder(schema, scale).input_dim
    spec = ModelSpec(kind="logreg", task="binary", input_dim=dim, output_dim=1)
    signer = signing.signer_from_file(fed.signing_key)
    weights = get_weights(build_model(spec, seed=3))
    ModelRegistry(fed.registry).register("ward_linear", weights, spec, schema, scale, signer=signer)
    return "ward_linear"


def test_the_sdk_with_the_he_extra_gets_he_predictions_equal_to_plaintext(sdk_he_python, tmp_path):
    assert failed_imports(sdk_he_python, *TRAINING, "tenseal", "client.sdk") == dict.fromkeys(
        TRAINING, "ModuleNotFoundError"
    )
    fed = make_federation(tmp_path / "federation")
    model = register_logreg(fed)
    service = start_service(fed, "sdk-he")
    try:
        done = run(
            sdk_he_python,
            "-c",
            PREDICT_HE,
            service.url,
            str(fed.tls.ca_cert),
            model,
            input=json.dumps(ROWS),
            env={**os.environ, "FEDCARE_TOKEN": fed.token_all},
            timeout=300,
        )
    finally:
        service.stop()
    answer = json.loads(done.stdout)
    venv = sdk_he_python.parents[1]
    assert Path(answer["sdk"]).is_relative_to(venv) and Path(answer["tenseal"]).is_relative_to(venv)
    plain, homomorphic = answer["plain"], answer["he"]
    assert len(homomorphic) == len(plain) == len(ROWS)
    for got, expected in zip(homomorphic, plain, strict=True):
        assert set(got) == set(expected)
        assert got["probability"] == pytest.approx(expected["probability"], abs=1e-4)
        assert got["label"] == expected["label"] or abs(expected["probability"] - 0.5) < 1e-4
