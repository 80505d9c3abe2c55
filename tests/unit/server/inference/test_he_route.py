"""The homomorphic route has no benchmark-only plaintext mode: its frames are always sealed."""

from __future__ import annotations

from fastapi.testclient import TestClient

from privacy import hpke
from server.inference.app import create_app
from server.inference.config import ServiceConfig
from tests.e2e.test_inference import make_federation


def test_the_homomorphic_route_refuses_plaintext_even_in_benchmark_mode(tmp_path):
    fed = make_federation(tmp_path)
    config = ServiceConfig(
        registry=fed.registry,
        verify_key=fed.verify_key,
        keyring=fed.keyring,
        tokens=fed.tokens,
        plaintext_payloads=True,
    )
    headers = {"Authorization": f"Bearer {fed.token_all}", "Content-Type": "application/json"}
    with TestClient(create_app(config)) as http:
        refused = http.post("/v2/models/ward/he-infer", content=b"{}", headers=headers)
        assert refused.status_code == 415
        assert refused.json()["code"] == "unsupported_media_type"
        assert hpke.REQUEST_MEDIA_TYPE in refused.json()["error"]
        # The plaintext route takes JSON in this mode (and refuses this body as malformed).
        accepted = http.post("/v2/models/ward/infer", content=b"{}", headers=headers)
        assert accepted.status_code == 400 and accepted.json()["code"] == "malformed_request"
