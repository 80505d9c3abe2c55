"""The service over time, against the real `fedcare serve` process: key rotation and
retirement, a new model version swapped in under load, tampered and unsigned versions
refused, model files encrypted at rest, mTLS, and no plaintext in any log."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest

from client.sdk import ConnectionFailed
from privacy import signing
from server import registry
from server.inference.keyring import retire, rotate
from server.registry import ModelRegistry
from tests.e2e.test_inference import (
    ROWS,
    assert_no_plaintext_in_logs,
    make_federation,
    post,
    sealed_request,
    start_service,
)

pytestmark = pytest.mark.slow  # two server processes, a hot reload and a rotation


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    return make_federation(tmp_path_factory.mktemp("lifecycle"))


@pytest.fixture(scope="module")
def service(fed):
    running = start_service(fed, "lifecycle")
    yield running
    running.stop()


def wait_for(condition, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def served_version(service) -> str:
    with service.http() as http:
        return http.get("/v2/health/ready").json()["models"]["ward"]


def test_rotation_keeps_old_clients_working_until_the_key_is_retired(service, fed):
    with service.client() as old_client:
        assert old_client.predict(ROWS) == fed.local_predictions(1, ROWS)
        first = old_client.key()
        second = rotate(fed.keyring)
        with service.http() as http:
            wait_for(
                lambda: (
                    http.get("/.well-known/fedcare-keys").json()["current_key_id"] == second.key_id
                ),
                what="the rotated key to be published",
            )
            config = http.get("/.well-known/fedcare-keys").json()
        states = {k["key_id"]: k["status"] for k in config["keys"]}
        assert states == {first.key_id.hex(): "previous", second.key_id: "current"}
        # The old client still seals to its cached first key, and is still answered.
        assert old_client.predict(ROWS) == fed.local_predictions(1, ROWS)
        assert old_client.key().key_id == first.key_id
        with service.client() as new_client:
            assert new_client.key().key_id.hex() == second.key_id
            assert new_client.predict(ROWS) == fed.local_predictions(1, ROWS)

        retire(fed.keyring, first.key_id.hex())
        with service.http() as http:
            wait_for(
                lambda: len(http.get("/.well-known/fedcare-keys").json()["keys"]) == 1,
                what="the retired key to leave the configuration",
            )
        envelope, _, _ = sealed_request(first.public_key, ROWS)
        refused = post(service, envelope, fed.token_ward)
        assert refused.status_code == 400 and refused.json()["code"] == "unknown_key_id"
        # The SDK fetches the configuration again and re-seals once.
        assert old_client.predict(ROWS) == fed.local_predictions(1, ROWS)
        assert old_client.key().key_id.hex() == second.key_id


def test_a_new_version_is_swapped_in_under_load_without_a_failed_request(service, fed):
    results, errors, stop = [], [], threading.Event()

    def load() -> None:
        with service.client() as client:
            while not stop.is_set():
                try:
                    results.append(client.infer(ROWS))
                except Exception as err:  # noqa: BLE001 - every failure is the finding
                    errors.append(err)

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    wait_for(lambda: len(results) >= 2, what="answers from version 1")
    fed.register(seed=1)
    wait_for(lambda: served_version(service) == "2", what="version 2 to be served")
    time.sleep(0.5)
    stop.set()
    for worker in workers:
        worker.join()
    assert errors == []
    versions = [r.model_version for r in results]
    assert versions[0] == "1" and versions[-1] == "2"
    expected = {v: fed.local_predictions(int(v), ROWS) for v in ("1", "2")}
    assert all(r.predictions == expected[r.model_version] for r in results)
    assert expected["1"] != expected["2"]


def test_a_tampered_or_unsigned_version_is_refused_and_the_last_good_one_kept(service, fed):
    # Tampered before the service can see it: made in a copy, then moved into place.
    staging = fed.root / "staging"
    shutil.copytree(fed.registry, staging)
    path = fed.register(seed=2, registry=staging)
    assert path.name == "v0003"
    weights = dict(np.load(path / "weights.npz"))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 0.5
    np.savez(path / "weights.npz", **weights)
    os.rename(path, fed.registry / "ward" / "v0003")
    wait_for(lambda: "REFUSED model ward v3" in service.log_text(), what="the refusal")
    assert "weights.npz does not match its sha256" in service.log_text()
    assert served_version(service) == "2"

    fed.register(seed=3, sign=False)  # v4, unsigned
    wait_for(lambda: "REFUSED model ward v4" in service.log_text(), what="the refusal of v4")
    assert "the version is unsigned" in service.log_text()
    with service.client() as client:
        result = client.infer(ROWS)
    assert result.model_version == "2"
    assert result.predictions == fed.local_predictions(2, ROWS)


def test_encrypted_at_rest_model_behind_mtls(tmp_path):
    fed = make_federation(tmp_path / "fed")
    expected = fed.local_predictions(1, ROWS)
    storage_key = tmp_path / "storage.key"
    signing.generate_storage_key(storage_key)
    version = ModelRegistry(fed.registry).get("ward", 1)
    key, signer = signing.load_storage_key(storage_key), signing.signer_from_file(fed.signing_key)
    registry.encrypt_version_at_rest(version.path, key, signer)
    assert not (version.path / "weights.npz").exists()
    service = start_service(
        fed,
        "mtls",
        "--storage-key", str(storage_key),
        "--tls-client-ca", str(fed.tls.ca_cert),
    )  # fmt: skip
    try:
        app = fed.tls.clients["ward-app"]
        with service.client(client_cert=app.cert, client_key=app.key) as client:
            assert client.predict(ROWS) == expected
        with pytest.raises(ConnectionFailed), service.client() as client:
            client.predict(ROWS)
    finally:
        service.stop()
    assert service.process.returncode is not None


def test_no_feature_value_or_prediction_in_any_log(service, fed):
    assert_no_plaintext_in_logs(fed, [1, 2])
