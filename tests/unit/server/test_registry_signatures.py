"""A registry version's signature, checksums and encryption at rest, as the service checks them."""

from __future__ import annotations

import json

import pytest

from privacy import signing
from server import registry
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
        registry.verify_version_bytes(path, key)
    (path / "manifest.json").write_bytes(manifest)
    (path / "schema.toml").write_text((path / "schema.toml").read_text() + "\n")
    with pytest.raises(signing.SignatureError, match="schema.toml does not match its sha256"):
        registry.verify_version_bytes(path, key)
    other = tmp_path / "other.key"
    signing.generate_signing_key(other)
    with pytest.raises(signing.SignatureError, match="wrong key"):
        registry.verify_version_bytes(path, signing.load_verify_key(other.with_suffix(".pub")))
    unsigned = fed.register(seed=1, sign=False)
    with pytest.raises(signing.SignatureError, match="unsigned"):
        registry.verify_version_bytes(unsigned, key)


def test_signing_a_version_later_and_never_twice(fed):
    unsigned = fed.register(seed=1, sign=False)
    signer = signing.signer_from_file(fed.signing_key)
    registry.sign_version(unsigned, signer)
    registry.verify_version_bytes(unsigned, signing.load_verify_key(fed.verify_key))
    with pytest.raises(signing.SignatureError, match="already signed"):
        registry.sign_version(unsigned, signer)


def test_encryption_at_rest_needs_the_storage_key(fed, tmp_path):
    key_file = tmp_path / "storage.key"
    key_id = signing.generate_storage_key(key_file)
    storage_key = signing.load_storage_key(key_file)
    path = ModelRegistry(fed.registry).get("ward").path
    registry.encrypt_version_at_rest(path, storage_key, signing.signer_from_file(fed.signing_key))
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
