"""The readiness route INFERENCE.md tells operators to wait for: 503 until a verified
model is served, 200 once one is (the registry is watched); liveness from the start."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from server.inference.app import create_app
from server.inference.config import ServiceConfig
from tests.e2e.test_inference import make_federation

DOCS = Path(__file__).resolve().parents[4] / "docs"


def test_ready_only_once_a_verified_model_is_served(tmp_path):
    assert "wait until\n`GET /v2/health/ready` answers 200" in (DOCS / "INFERENCE.md").read_text()
    fed = make_federation(tmp_path)
    registry = tmp_path / "empty-registry"
    config = ServiceConfig(
        registry=registry,
        verify_key=fed.verify_key,
        keyring=fed.keyring,
        tokens=fed.tokens,
        poll_interval=0.1,
    )
    with TestClient(create_app(config)) as http:
        assert http.get("/v2/health/live").status_code == 200
        waiting = http.get("/v2/health/ready")
        assert waiting.status_code == 503 and waiting.json()["ready"] is False
        fed.register(seed=0, sign=False, registry=registry)  # an unsigned version is never served
        time.sleep(0.5)
        assert http.get("/v2/health/ready").status_code == 503
        fed.register(seed=1, registry=registry)
        deadline = time.monotonic() + 20
        while http.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the signed version was never served"
            time.sleep(0.1)
        assert http.get("/v2/health/ready").json() == {"ready": True, "models": {"ward": "2"}}
