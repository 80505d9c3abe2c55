"""The model registry: versions, checksums of every file, an optional signature."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.data.features import FeatureEncoder, Standardization
from models.data.kinds.registry import load_schema
from models.families import build_model
from models.predictor import Predictor
from models.spec import ModelSpec, get_weights
from server.registry import ModelRegistry, RegistryError


@pytest.fixture
def model(ward_schema_path):
    schema = load_schema(ward_schema_path)
    scale = Standardization(mean={"age": 50.0}, std={"age": 10.0})
    dim = FeatureEncoder(schema, scale).input_dim
    spec = ModelSpec(
        kind="mlp", task="binary", input_dim=dim, output_dim=1, options={"hidden": [8]}
    )
    return schema, scale, spec, get_weights(build_model(spec, seed=0))


def test_versions_count_up_and_rebuild_the_same_model(tmp_path, model):
    schema, scale, spec, weights = model
    registry = ModelRegistry(tmp_path)
    first = registry.register("ward", weights, spec, schema, scale, metrics={"roc_auc": 0.9})
    second = registry.register(
        "ward", weights, spec, schema, scale,
        privacy={"delta": 1e-5, "epsilon_budget": 1.0, "epsilon_per_site": {"a": 0.99}},
    )  # fmt: skip
    assert (first.version, second.version) == (1, 2)
    assert [v.version for v in registry.versions("ward")] == [1, 2]
    assert registry.get("ward").version == 2
    assert registry.get("ward", 1).manifest["metrics"] == {"roc_auc": 0.9}
    assert second.manifest["privacy"]["epsilon_per_site"] == {"a": 0.99}
    row = {"age": 61, "sex": "M", "smoker": 1}
    direct = Predictor(spec, weights, schema, scale).predict_rows([row])
    rebuilt = Predictor.from_version(registry.get("ward")).predict_rows([row])
    assert rebuilt == direct


def test_a_changed_file_fails_verification(tmp_path, model):
    schema, scale, spec, weights = model
    version = ModelRegistry(tmp_path).register("ward", weights, spec, schema, scale)
    version.verify_files()
    weights = dict(version.load_weights())
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1.0
    np.savez(version.path / "weights.npz", **weights)
    with pytest.raises(RegistryError, match="weights.npz does not match its sha256"):
        version.verify_files()


def test_the_signer_signs_the_manifest_bytes(tmp_path, model):
    schema, scale, spec, weights = model
    seen: list[bytes] = []

    def signer(data: bytes) -> bytes:
        seen.append(data)
        return b"signature"

    version = ModelRegistry(tmp_path).register("ward", weights, spec, schema, scale, signer=signer)
    assert seen == [version.manifest_bytes()]
    assert version.signature_path.read_bytes() == b"signature"
    manifest = json.loads(version.manifest_bytes())
    assert set(manifest["files"]) == {"weights.npz", "schema.toml", "preprocessing.json"}
    assert manifest["model"] == spec.to_dict()
