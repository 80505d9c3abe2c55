"""End to end: the real `fedcare serve` process on a loopback port, through TLS and HPKE.

The service runs as a subprocess (uvicorn), is reached over TCP on 127.0.0.1 and is
stopped by its PID. The model is registered and signed here; its local predictions are
the reference the encrypted path must reproduce exactly.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from cli.inference import KEEP_ALIVE_SECONDS
from cli.predict import predict
from client.sdk import (
    AuthenticationError,
    InferenceClient,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
)
from deploy import inference_service as launcher
from deploy.inference_service import ServiceProcess
from models.data.features import FeatureEncoder, Standardization
from models.data.kinds.registry import load_schema
from models.families import build_model
from models.predictor import Predictor
from models.spec import ModelSpec, get_weights
from privacy import hpke, signing
from privacy.tokens import TokenStore
from protocol import inference as wire
from server.inference.keyring import rotate
from server.registry import ModelRegistry
from tests.conftest import SCHEMA_TOML

DOCS = Path(__file__).resolve().parents[2] / "docs"

# Feature values no log may ever contain (distinctive, so a leak cannot hide).
SENTINEL_AGES = [73.31415926, 41.27182818, 58.16180339]
ROWS = [
    {"age": SENTINEL_AGES[0], "sex": "M", "smoker": 1},
    {"age": SENTINEL_AGES[1], "sex": "F", "smoker": 0},
    {"age": SENTINEL_AGES[2], "sex": "F", "smoker": True},
]


@dataclass
class Federation:
    """A signed registry, an HPKE keyring, tokens and TLS material in one folder."""

    root: Path
    registry: Path
    signing_key: Path
    verify_key: Path
    keyring: Path
    tokens: Path
    tls: signing.TlsMaterial
    token_all: str = ""
    token_ward: str = ""
    token_other: str = ""
    weights_seed: int = 0
    logs: list[Path] = field(default_factory=list)

    def register(self, seed: int, sign: bool = True, registry: Path | None = None) -> Path:
        """Register a ward model (weights from ``seed``) in ``registry`` (default: the
        served one); return its version folder."""
        schema = load_schema(self.root / "schema.toml")
        scale = Standardization(mean={"age": 50.0}, std={"age": 10.0})
        dim = FeatureEncoder(schema, scale).input_dim
        spec = ModelSpec(
            kind="mlp", task="binary", input_dim=dim, output_dim=1, options={"hidden": [8]}
        )
        weights = get_weights(build_model(spec, seed=seed))
        signer = signing.signer_from_file(self.signing_key) if sign else None
        version = ModelRegistry(registry or self.registry).register(
            "ward", weights, spec, schema, scale, signer=signer
        )
        return version.path

    def local_predictions(self, version: int, rows: list[dict]) -> list[dict]:
        registered = ModelRegistry(self.registry).get("ward", version)
        return Predictor.from_version(registered).predict_rows(rows)


def make_federation(root: Path) -> Federation:
    root.mkdir(parents=True, exist_ok=True)
    (root / "schema.toml").write_text(SCHEMA_TOML)
    fed = Federation(
        root=root,
        registry=root / "registry",
        signing_key=root / "coordinator.key",
        verify_key=root / "coordinator.pub",
        keyring=root / "keyring",
        tokens=root / "tokens.json",
        tls=signing.make_local_tls(root / "tls", client_names=["ward-app"]),
    )
    signing.generate_signing_key(fed.signing_key)
    rotate(fed.keyring)
    store = TokenStore(fed.tokens)
    fed.token_all, _ = store.create("admin-app", ["*"], rate_per_second=1000, burst=1000)
    fed.token_ward, _ = store.create("ward-app", ["ward"], rate_per_second=1000, burst=1000)
    fed.token_other, _ = store.create("other-app", ["oncology"])
    fed.register(seed=0)
    return fed


@dataclass
class Service:
    """A running `fedcare serve` child of the tests, with its federation."""

    running: ServiceProcess
    audit: Path
    fed: Federation

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def process(self):
        return self.running.process

    def client(self, token: str | None = None, **kwargs) -> InferenceClient:
        return InferenceClient(
            self.url, token or self.fed.token_ward, "ward", ca_cert=self.fed.tls.ca_cert, **kwargs
        )

    def http(self, **kwargs) -> httpx.Client:
        verify = ssl.create_default_context(cafile=str(self.fed.tls.ca_cert))
        return httpx.Client(base_url=self.url, verify=verify, **kwargs)

    def stop(self) -> None:
        self.running.stop()

    def log_text(self) -> str:
        return self.running.log_text()


def serve_args(fed: Federation, audit: Path, *extra: str, tls: bool = True) -> list[str]:
    """The `fedcare serve` options for ``fed`` (fast polling, debug logging)."""
    args = [
        "--registry", str(fed.registry),
        "--verify-key", str(fed.verify_key),
        "--keyring", str(fed.keyring),
        "--tokens", str(fed.tokens),
        "--audit-log", str(audit),
        "--poll-interval", "0.2",
        "--log-level", "debug",
        *extra,
    ]  # fmt: skip
    if tls:
        return [*args, "--tls-cert", str(fed.tls.server_cert), "--tls-key", str(fed.tls.server_key)]
    return [*args, "--insecure-http"]


def start_service(fed: Federation, name: str, *extra: str) -> Service:
    """Start `fedcare serve` over TLS on a free loopback port; wait until a model is served."""
    log, audit = fed.root / f"{name}.log", fed.root / f"{name}-audit.jsonl"
    fed.logs += [log, audit]
    client = fed.tls.clients["ward-app"]
    running = launcher.start_service(
        serve_args(fed, audit, *extra),
        log,
        ca_cert=fed.tls.ca_cert,
        client_cert=(client.cert, client.key) if "--tls-client-ca" in extra else None,
    )
    return Service(running, audit, fed)


def sealed_request(public_key: bytes, rows: list[dict], **overrides) -> tuple[bytes, bytes, str]:
    """A sealed request built by hand: (envelope, response key, request id)."""
    response_key = hpke.new_response_key()
    request_id = overrides.pop("request_id", secrets.token_hex(16))
    timestamp = overrides.pop("timestamp", int(time.time()))
    body = wire.build_request(rows, request_id, timestamp, response_key)
    return hpke.seal_request(public_key, wire.dumps(body)), response_key, request_id


def post(service: Service, envelope: bytes, token: str | None, **headers) -> httpx.Response:
    headers = {"Content-Type": hpke.REQUEST_MEDIA_TYPE, **headers}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with service.http() as http:
        return http.post("/v2/models/ward/infer", content=envelope, headers=headers)


def opened(response: httpx.Response, response_key: bytes) -> dict:
    assert response.headers["content-type"] == hpke.RESPONSE_MEDIA_TYPE
    return json.loads(hpke.open_response(response_key, response.content))


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Federation:
    return make_federation(tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="module")
def service(fed):
    running = start_service(fed, "main")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def public_key(service) -> bytes:
    with service.client() as client:
        return client.key().public_key


# ---------------------------------------------------------------------------- tests


def test_encrypted_predictions_equal_the_registry_models_local_predictions(service, fed):
    with service.client() as client:
        result = client.infer(ROWS)
    assert result.model_name == "ward" and result.model_version == "1"
    assert result.predictions == fed.local_predictions(1, ROWS)


def test_the_token_for_every_model_works_too(service, fed):
    with service.client(fed.token_all) as client:
        assert client.predict(ROWS[:1]) == fed.local_predictions(1, ROWS[:1])


def test_tampered_ciphertext_is_refused(service, fed, public_key):
    envelope, _, _ = sealed_request(public_key, ROWS)
    for position in (hpke.REQUEST_HEADER_LEN + 3, len(envelope) - 5):  # enc, then tag
        tampered = bytearray(envelope)
        tampered[position] ^= 0x01
        response = post(service, bytes(tampered), fed.token_ward)
        assert response.status_code == 400
        assert response.json()["code"] == "decryption_failed"


def test_a_replayed_request_is_refused(service, fed, public_key):
    envelope, response_key, _ = sealed_request(public_key, ROWS)
    first = post(service, envelope, fed.token_ward)
    assert first.status_code == 200
    again = post(service, envelope, fed.token_ward)
    assert again.status_code == 409
    assert opened(again, response_key)["code"] == "replayed_request"


def test_a_stale_request_is_refused(service, fed, public_key):
    envelope, response_key, _ = sealed_request(public_key, ROWS, timestamp=int(time.time()) - 3600)
    response = post(service, envelope, fed.token_ward)
    assert response.status_code == 400
    assert opened(response, response_key)["code"] == "stale_request"


def test_an_unknown_key_id_is_refused(service, fed):
    stranger = hpke.generate_keypair()
    envelope, _, _ = sealed_request(stranger.public, ROWS)
    response = post(service, envelope, fed.token_ward)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "unknown_key_id" and stranger.key_id.hex() in body["error"]


def test_tokens_and_scopes(service, fed, public_key):
    envelope, _, _ = sealed_request(public_key, ROWS)
    response = post(service, envelope, None)
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert post(service, envelope, "fct_000000000000_" + "A" * 43).status_code == 401
    assert post(service, envelope, fed.token_other).status_code == 403
    with pytest.raises(AuthenticationError), service.client("not-a-token") as client:
        client.predict(ROWS)
    with pytest.raises(PermissionDenied, match="scope does not include 'ward'"):
        with service.client(fed.token_other) as client:
            client.predict(ROWS)
    with pytest.raises(ModelNotFound, match="no model named 'oncology'"):
        with InferenceClient(
            service.url, fed.token_all, "oncology", ca_cert=fed.tls.ca_cert
        ) as client:
            client.predict(ROWS)


def test_oversize_body_and_wrong_content_type(service, fed):
    big = b"\x01" + os.urandom((1 << 20) + 10)
    response = post(service, big, fed.token_ward)
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"
    response = post(service, b"{}", fed.token_ward, **{"Content-Type": "application/json"})
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    response = post(service, b"\x01short", fed.token_ward)
    assert response.status_code == 400 and response.json()["code"] == "malformed_envelope"


@pytest.mark.parametrize(
    ("rows", "code", "feature"),
    [
        ([{"age": 50, "sex": "M"}], "invalid_input", "smoker"),  # missing
        ([{"age": 50, "sex": "M", "smoker": 1, "bmi": 22}], "invalid_input", "bmi"),  # unknown
        ([{"age": "fifty", "sex": "M", "smoker": 1}], "invalid_input", "age"),  # wrong type
        ([{"age": 50, "sex": "X", "smoker": 1}], "invalid_input", "sex"),  # not a category
    ],
)
def test_bad_rows_get_a_sealed_422_naming_the_feature(service, rows, code, feature):
    with pytest.raises(InvalidInput) as raised, service.client() as client:
        client.predict(rows)
    assert raised.value.status == 422 and raised.value.code == code
    assert raised.value.feature == feature


def test_nan_infinity_and_too_many_rows(service, fed, public_key):
    with pytest.raises(InvalidInput, match="not a finite number"), service.client() as client:
        client.predict([{"age": float("nan"), "sex": "M", "smoker": 1}])  # refused before sending
    body = wire.build_request(ROWS[:1], secrets.token_hex(16), int(time.time()), bytes(16))
    text = wire.dumps(body).replace(str(SENTINEL_AGES[0]).encode(), b"1e999")
    response = post(service, hpke.seal_request(public_key, text), fed.token_ward)
    assert response.status_code == 422
    assert opened(response, bytes(16))["code"] == "not_finite"
    text = wire.dumps(body).replace(str(SENTINEL_AGES[0]).encode(), b"NaN")
    response = post(service, hpke.seal_request(public_key, text), fed.token_ward)
    assert response.status_code == 400 and response.json()["code"] == "malformed_request"
    with pytest.raises(InvalidInput, match="at most 256") as raised, service.client() as client:
        client.predict(ROWS[:1] * 257)
    assert raised.value.code == "too_many_rows"


def test_rate_limit_answers_429(service, fed):
    slow, _ = TokenStore(fed.tokens).create("slow-app", ["ward"], rate_per_second=0.01, burst=2)
    time.sleep(0.5)  # the service re-reads the token store
    with service.client(slow) as client:
        client.predict(ROWS[:1])
        client.predict(ROWS[:1])
        with pytest.raises(RateLimited) as raised:
            client.predict(ROWS[:1])
    assert raised.value.status == 429 and raised.value.retry_after >= 1


def test_health_docs_and_key_config_routes(service):
    with service.http() as http:
        assert http.get("/v2/health/live").json() == {"live": True}
        assert http.get("/v2/health/ready").json() == {"ready": True, "models": {"ward": "1"}}
        openapi = http.get("/openapi.json").json()
        docs = http.get("/docs")
        config = http.get("/.well-known/fedcare-keys").json()
        missing = http.get("/no/such/route")
    assert config["protocol"] == "fedcare-inference/1"
    current = config["keys"][0]
    assert current["key_id"] == config["current_key_id"] and current["status"] == "current"
    assert (current["kem_id"], current["kdf_id"], current["aead_id"]) == (0x20, 1, 1)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert openapi["info"]["title"] == "fedcare inference"
    assert openapi["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    infer = openapi["paths"]["/v2/models/{model}/infer"]["post"]
    assert infer["security"] == [{"bearer": []}] and {"401", "413", "422", "429"} <= set(
        infer["responses"]
    )
    assert docs.status_code == 404 and docs.json()["code"] == "not_found"  # no CDN page


def raw_request(service: Service, head: bytes) -> bytes:
    """Send raw bytes over TLS and return the first 64 KiB of the answer."""
    import socket

    host, port = service.url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(service.fed.tls.ca_cert))
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            tls.sendall(head)
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def test_an_idle_connection_is_closed_after_the_documented_keep_alive(service):
    """INFERENCE.md states the keep-alive timeout; the real service keeps an idle
    connection that long (a second request on it is answered) and then closes it."""
    import socket

    assert f"open for {KEEP_ALIVE_SECONDS} seconds" in (DOCS / "INFERENCE.md").read_text()
    host, port = service.url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(service.fed.tls.ca_cert))
    probe = f"GET /v2/health/live HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=KEEP_ALIVE_SECONDS + 10) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            for _ in range(2):
                tls.sendall(probe)
                answer = b""
                while not answer.endswith(b'{"live":true}'):  # head and body, one or more reads
                    answer += tls.recv(65536)
                assert answer.startswith(b"HTTP/1.1 200")
                time.sleep(KEEP_ALIVE_SECONDS / 2)  # idle, but not for long enough
            idle = time.monotonic()
            assert tls.recv(65536) == b""  # the service closed it
            waited = time.monotonic() - idle + KEEP_ALIVE_SECONDS / 2
    assert KEEP_ALIVE_SECONDS - 1 <= waited <= KEEP_ALIVE_SECONDS + 10


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("FP64", 1e39), ("FP32", 1e39), ("FP16", 70000.0), ("INT8", 1000)],
)
def test_numbers_outside_their_dtype_or_float32_are_refused(
    service, fed, public_key, datatype, value
):
    body = wire.build_request(ROWS[:1], secrets.token_hex(16), int(time.time()), bytes(16))
    body["inputs"][0].update(datatype=datatype, data=[value])
    response = post(service, hpke.seal_request(public_key, wire.dumps(body)), fed.token_ward)
    assert response.status_code == 422
    refusal = opened(response, bytes(16))
    assert refusal["code"] == "out_of_range" and refusal["feature"] == "age"


def test_values_far_outside_the_schema_range_are_out_of_range(service):
    with pytest.raises(InvalidInput) as raised, service.client() as client:
        client.predict([{"age": 1000, "sex": "M", "smoker": 1}])
    assert raised.value.code == "out_of_range" and raised.value.feature == "age"


def test_every_reply_has_the_security_headers_and_json_refusals(service, fed):
    with service.http() as http:
        replies = [
            http.get("/v2/health/live"),
            http.get("/.well-known/fedcare-keys"),
            http.get("/no/such/route"),
            http.put("/v2/health/live"),
            http.post("/v2/models/ward/infer"),
        ]
    for reply in replies:
        assert reply.headers["strict-transport-security"].startswith("max-age=")
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert "cache-control" in reply.headers
        if reply.status_code >= 400:
            assert reply.headers["content-type"] == "application/json"
            assert reply.json()["code"]
    assert replies[0].headers["cache-control"] == "no-store"
    assert [r.status_code for r in replies[2:]] == [404, 405, 401]


def test_missing_host_too_many_and_too_large_headers_are_refused(service):
    no_host = raw_request(service, b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert no_host.startswith(b"HTTP/1.1 400") and b'"code":"missing_host"' in no_host
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(100))
    crowded = raw_request(service, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert crowded.startswith(b"HTTP/1.1 431") and b"headers_too_large" in crowded
    big = b"X-Big: " + b"a" * (64 << 10) + b"\r\n"
    huge = raw_request(service, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    # 431 from the application, or the parser's own 400 when the head arrives in pieces.
    assert huge.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400"))


def test_metadata_lists_the_inputs_by_feature_name(service):
    with service.client() as client:
        metadata = client.metadata()
    assert [i["name"] for i in metadata["inputs"]] == ["age", "sex", "smoker"]
    assert metadata["versions"] == ["1"] and metadata["parameters"]["task"] == "binary"


def test_audit_log_has_one_fixed_shape_line_per_request(service):
    lines = [json.loads(line) for line in service.audit.read_text().splitlines()]
    assert lines, "the audit log is empty"
    keys = {"time", "token_id", "model", "version", "rows", "status", "code", "latency_ms"}
    assert all(set(line) == keys for line in lines)
    assert {line["status"] for line in lines} >= {200, 400, 401, 403, 409, 413, 415, 422, 429}
    ok = [line for line in lines if line["status"] == 200]
    assert all(line["model"] == "ward" and line["version"] == 1 for line in ok)
    assert any(line["rows"] == 3 for line in ok)


def assert_no_plaintext_in_logs(fed: Federation, versions: list[int]) -> None:
    """No service log or audit log holds a feature value or a prediction of ROWS."""
    secrets_ = [f"{age:.6f}"[:-1] for age in SENTINEL_AGES]
    for version in versions:
        secrets_ += [repr(p["probability"])[:10] for p in fed.local_predictions(version, ROWS)]
    assert fed.logs, "no logs were written"
    for path in fed.logs:
        text = path.read_text()
        assert text, f"{path} is empty"
        for secret in secrets_:
            assert secret not in text, f"{path.name} contains {secret}"


def test_no_feature_value_or_prediction_in_any_log(service, fed):
    assert "serving model ward v1" in service.log_text()
    assert_no_plaintext_in_logs(fed, [1])


def test_fedcare_predict_reads_a_csv_and_writes_predictions(service, fed, tmp_path):
    app = typer.Typer()
    app.command()(predict)
    csv = tmp_path / "patients.csv"
    lines = ["patient_id,age,sex,smoker,outcome"]
    lines += [f"p{i},{r['age']},{r['sex']},{int(r['smoker'])},0" for i, r in enumerate(ROWS)]
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "predictions.csv"
    args = ["--url", service.url, "--model", "ward", "--ca-cert", str(fed.tls.ca_cert)]
    run = CliRunner().invoke(
        app,
        [*args, "--input", str(csv), "--out", str(out)],
        env={"FEDCARE_TOKEN": fed.token_ward},
    )
    assert run.exit_code == 0, run.output
    assert "3 predictions from ward v1" in " ".join(run.stderr.split())
    written = [line.split(",") for line in out.read_text().splitlines()]
    expected = fed.local_predictions(1, [{**r, "smoker": int(r["smoker"])} for r in ROWS])
    assert written[0] == ["label", "probability"]
    assert [(label, float(p)) for label, p in written[1:]] == [
        (e["label"], e["probability"]) for e in expected
    ]
    csv.write_text("age,sex,smoker\n50,M,\n")
    run = CliRunner().invoke(app, [*args, "--input", str(csv), "--token", fed.token_ward])
    assert run.exit_code == 2
    assert "patients.csv, row 2, column 'smoker': missing value" in " ".join(run.stderr.split())
