"""End to end: homomorphic (CKKS) inference of linear models through the real service.

The service runs as a `fedcare serve` child; the models are linear models fitted here on
the built-in data sets (Breast Cancer: logistic regression; diabetes: linear regression; a
linear Cox model on the Breast Cancer features) and registered signed. The homomorphic
predictions must equal the plaintext route's within 1e-4 on every test patient.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sklearn.model_selection import train_test_split

from client.sdk import InferenceClient, RequestRejected
from models.data.features import FeatureEncoder, FeatureStatistics, Standardization
from models.families import build_model
from models.spec import ModelSpec, get_weights
from privacy import he as he_module
from privacy import signing
from server.inference.app import create_app
from server.inference.config import ServiceConfig
from server.registry import ModelRegistry
from simulations.datasets import load_dataset
from tests.e2e.test_inference import make_federation, start_service

pytestmark = pytest.mark.slow


def fit_linear(kind: str, task: str, x: np.ndarray, y: np.ndarray, outputs: int = 1):
    """A linear model fitted by a few hundred steps of full-batch Adam (fast, deterministic)."""
    spec = ModelSpec(kind=kind, task=task, input_dim=x.shape[1], output_dim=outputs)
    model = build_model(spec, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    inputs, targets = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(300):
        optimizer.zero_grad()
        out = model(inputs).reshape(-1)
        if task == "binary":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, targets)
        else:  # regression, and a stand-in target for the Cox score
            loss = torch.nn.functional.mse_loss(out, targets)
        loss.backward()
        optimizer.step()
    return spec, get_weights(model)


def register(fed, name: str, dataset: str, kind: str, task: str) -> list[dict]:
    """Fit and register a linear model of ``dataset``; return its 20 % test rows."""
    data = load_dataset(dataset)
    schema = data.schema
    frame = data.examples
    train, test = train_test_split(frame, test_size=0.2, random_state=0)
    # the training rows' own statistics, on each feature's encoded (declared log) scale
    scale = Standardization.from_statistics(FeatureStatistics.of_frame(train, schema))
    encoder = FeatureEncoder(schema, scale)
    x = encoder.transform(train)
    if schema.task == "regression":
        y = encoder.labels(train)
    else:  # the positive class, also the Cox stand-in target
        y = (train[schema.label].astype(str) == schema.classes[-1]).to_numpy(np.float32)
    spec, weights = fit_linear(kind, task, x, y)
    signer = signing.signer_from_file(fed.signing_key)
    ModelRegistry(fed.registry).register(name, weights, spec, schema, scale, signer=signer)
    return test[schema.feature_names].to_dict(orient="records")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    fed = make_federation(tmp_path_factory.mktemp("he"))
    tests = {
        "breast": register(fed, "breast", "breast_cancer", "logreg", "binary"),
        "diabetes": register(fed, "diabetes", "diabetes", "logreg", "regression"),
        "cox": register(fed, "cox", "breast_cancer", "cox_linear", "survival"),
    }
    # 2048 patients per request: large enough for the column layout (from 1217 patients of
    # Breast Cancer's 20 columns on).
    service = start_service(fed, "he", "--max-rows", "2048")
    yield service, fed, tests
    service.stop()


def client(service, fed, model: str, mode: str) -> InferenceClient:
    return InferenceClient(
        service.url, fed.token_all, model, ca_cert=fed.tls.ca_cert, mode=mode, timeout=120
    )


@pytest.mark.parametrize(
    ("model", "field"),
    [("breast", "probability"), ("diabetes", "value"), ("cox", "hazard_ratio")],
)
def test_he_predictions_equal_the_plaintext_services(env, model, field):
    service, fed, tests = env
    rows = tests[model]
    with client(service, fed, model, "plain") as plain, client(service, fed, model, "he") as he:
        expected = plain.predict(rows)
        got = he.predict(rows)
    assert len(got) == len(rows) == (114 if model != "diabetes" else 89)
    assert_equal_predictions(got, expected, field)


def assert_equal_predictions(got: list[dict], expected: list[dict], field: str) -> None:
    """Probabilities within 1e-4; values and hazard ratios relatively (label units)."""
    assert set(got[0]) == set(expected[0])
    for g, e in zip(got, expected, strict=True):
        assert g[field] == pytest.approx(e[field], rel=1e-4, abs=1e-4)
        if "label" in e:
            assert g["label"] == e["label"] or abs(e["probability"] - 0.5) < 1e-4


@pytest.mark.parametrize(
    ("model", "field"),
    [("breast", "probability"), ("diabetes", "value"), ("cox", "hazard_ratio")],
)
def test_a_batch_in_the_column_layout_equals_the_plaintext_service(env, model, field):
    """The test set repeated to 1900 patients: one request in columns (checked by the
    layout the SDK chooses), predictions equal to the plaintext route's."""
    service, fed, tests = env
    with client(service, fed, model, "plain") as plain, client(service, fed, model, "he") as he:
        expected = (plain.predict(tests[model]) * 22)[:1900]
        offer = he.metadata(refresh=False)["parameters"]["he"]
        assert offer["max_rows"] == 2048
        assert he_module.choose_layout(1900, len(offer["columns"])) == he_module.COLUMNS
        got = he.predict((tests[model] * 22)[:1900])
    assert_equal_predictions(got, expected, field)


def test_the_service_holds_no_secret_key_and_logs_no_plaintext(env, caplog):
    service, fed, tests = env
    rows = tests["breast"][:3]
    # The same service in this process, so that its context cache can be looked into.
    config = ServiceConfig(
        registry=fed.registry,
        verify_key=fed.verify_key,
        keyring=fed.keyring,
        tokens=fed.tokens,
        audit_log=fed.root / "in-process-audit.jsonl",
    )
    app = create_app(config)
    caplog.set_level(logging.DEBUG)
    with TestClient(app) as http:
        http.headers["Authorization"] = f"Bearer {fed.token_all}"
        he = InferenceClient("http://testserver", fed.token_all, "breast", mode="he")
        he._http = http
        predictions = he.predict(rows)
        offer = he.metadata()["parameters"]["he"]
        cached = app.state.service.contexts.contexts()
    assert offer["offered"] and offer["link"] == "sigmoid" and offer["security_bits"] == 128
    assert len(cached) == 1 and not cached[0].is_private()
    assert cached[0].id == he._he.context_id
    logs = [*fed.logs, config.audit_log]
    text = caplog.text + "".join(path.read_text() for path in logs if path.exists())
    first = next(iter(rows[0]))
    for row, prediction in zip(rows, predictions, strict=True):
        assert repr(prediction["probability"])[:10] not in text
        assert repr(row[first]) not in text


def test_a_non_linear_model_is_refused_naming_its_family(env):
    service, fed, _ = env
    with pytest.raises(RequestRejected, match="family 'mlp'"):
        with InferenceClient(
            service.url, fed.token_all, "ward", ca_cert=fed.tls.ca_cert, mode="he"
        ) as he:
            he.predict([{"age": 50, "sex": "M", "smoker": 1}])


def _explain(service, fed, rows) -> None:
    with client(service, fed, "breast", "plain") as plain:
        plain.predict(rows, explain=True)


def test_health_answers_within_100_ms_while_a_256_row_explanation_runs(env):
    service, fed, tests = env
    rows = (tests["breast"] * 3)[:256]
    # The explanation is asked from another process, so that building, sealing and
    # reading it take nothing from this process's probes: they time the service alone.
    explainer = multiprocessing.get_context("fork").Process(
        target=_explain, args=(service, fed, rows)
    )
    latencies = []
    with service.http() as http:
        # The connection (TLS handshake) is opened before: the probes time the service.
        assert http.get("/v2/health/live").status_code == 200
        # The fork inherits this process's TenSEAL contexts (earlier tests'); collecting one
        # in the child would destroy its thread pool's locks there, and hang (seen once).
        gc.freeze()
        explainer.start()
        gc.unfreeze()
        while explainer.is_alive():
            started = time.perf_counter()
            assert http.get("/v2/health/live").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    explainer.join(timeout=120)
    assert explainer.exitcode == 0
    assert latencies, "the explanation finished before a probe was sent"
    assert max(latencies) < 0.1, latencies


def test_the_audit_log_has_he_requests_without_values(env):
    service, _, _ = env
    lines = [json.loads(line) for line in service.audit.read_text().splitlines()]
    assert any(line["model"] == "breast" and line["rows"] == 114 for line in lines)
