"""Model signatures and at-rest encryption: what the inference service checks before loading."""

from __future__ import annotations

import json

import pytest

from privacy import signing
from server.inference.model_store import load_verified
from server.registry import ModelRegistry
from tests.e2e.test_inference import ROWS, make_federation


@pytest.fixture
def fed(tmp_path):
    return make_federation(tmp_path)


def test_a_signed_version_loads_and_predicts_like_the_registry(fed):
    version = ModelRegistry(fed.registry).get("ward")
    model = load_verified(version, signing.load_verify_key(fed.verify_key), None)
    assert (model.name, model.version) == ("ward", 1)
    assert model.predictor.predict_rows(ROWS) == fed.local_predictions(1, ROWS)


def test_every_kind_of_tampering_is_refused_by_name(fed, tmp_path):
    key = signing.load_verify_key(fed.verify_key)
    path = ModelRegistry(fed.registry).get("ward").path
    manifest = (path / "manifest.json").read_bytes()
    (path / "manifest.json").write_bytes(manifest.replace(b'"ward"', b'"wards"', 1))
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.verify_version_bytes(path, key)
    (path / "manifest.json").write_bytes(manifest)
    (path / "schema.toml").write_text((path / "schema.toml").read_text() + "\n")
    with pytest.raises(signing.SignatureError, match="schema.toml does not match its sha256"):
        signing.verify_version_bytes(path, key)
    other = tmp_path / "other.key"
    signing.generate_signing_key(other)
    with pytest.raises(signing.SignatureError, match="wrong key"):
        signing.verify_version_bytes(path, signing.load_verify_key(other.with_suffix(".pub")))
    unsigned = fed.register(seed=1, sign=False)
    with pytest.raises(signing.SignatureError, match="unsigned"):
        signing.verify_version_bytes(unsigned, key)


def test_signing_a_version_later_and_never_twice(fed):
    unsigned = fed.register(seed=1, sign=False)
    signer = signing.signer_from_file(fed.signing_key)
    signing.sign_version(unsigned, signer)
    signing.verify_version_bytes(unsigned, signing.load_verify_key(fed.verify_key))
    with pytest.raises(signing.SignatureError, match="already signed"):
        signing.sign_version(unsigned, signer)


def test_encryption_at_rest_needs_the_storage_key(fed, tmp_path):
    key_file = tmp_path / "storage.key"
    key_id = signing.generate_storage_key(key_file)
    storage_key = signing.load_storage_key(key_file)
    path = ModelRegistry(fed.registry).get("ward").path
    signing.encrypt_version_at_rest(path, storage_key, signing.signer_from_file(fed.signing_key))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["at_rest"]["key_id"] == key_id and "weights.npz.enc" in manifest["files"]
    verify = signing.load_verify_key(fed.verify_key)
    version = ModelRegistry(fed.registry).get("ward")
    model = load_verified(version, verify, storage_key)
    assert model.predictor.predict_rows(ROWS)  # decrypted weights build the model
    with pytest.raises(signing.SignatureError, match="encrypted at rest and no key was given"):
        load_verified(version, verify, None)
    other = tmp_path / "other-storage.key"
    signing.generate_storage_key(other)
    with pytest.raises(signing.SignatureError, match="another storage key"):
        load_verified(version, verify, signing.load_storage_key(other))


def test_key_files_are_private_and_never_overwritten(tmp_path):
    key = tmp_path / "coordinator.key"
    fingerprint = signing.generate_signing_key(key)
    assert fingerprint.startswith("SHA256:") and key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(signing.SignatureError, match="refusing to overwrite"):
        signing.generate_signing_key(key)
    with pytest.raises(signing.SignatureError, match="must be an Ed25519 key"):
        signing.load_verify_key(_write(tmp_path / "x.pub", _ec_public_pem()))


def _ec_public_pem() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
