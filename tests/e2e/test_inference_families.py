"""Every model family served and answered through the encrypted endpoint, with explanations.

Tiny image, sequence, note, survival and regression models (the ones ``tests/test_explain``
builds, untrained) are registered and signed directly, without a federation; ONE real
`fedcare serve` process on a loopback port serves them all. Each family's encrypted
answers must equal the registered version's local predictions, and explanations asked
for come back inside the sealed response and add up as integrated gradients must.
"""

from __future__ import annotations

import secrets
import time

import numpy as np
import pytest

from client.sdk import InferenceClient
from models.explain import explain_rows
from models.predictor import Predictor
from models.spec import get_weights
from privacy import hpke, signing
from protocol import inference as wire
from server.registry import ModelRegistry
from tests.e2e.test_inference import make_federation, opened, start_service
from tests.unit.models.test_explain import CASES, ROW

pytestmark = pytest.mark.slow

RNG = np.random.default_rng(7)
FAMILIES = {
    # served model name: (tests/test_explain case, rows sent)
    "image": (
        "image-cnn",
        [{"image": RNG.integers(0, 256, (8, 8, 3)).tolist()} for _ in range(2)],
    ),
    "sequence": (
        "sequence-gru",
        [{"t": [0, 1, 2], "hr": [70.0, 95.0, 120.0]}, {"t": [0, 2, 5], "hr": [88.0, 81.0, 60.0]}],
    ),
    "notes": (
        "text-mlp",
        [{"note": "fever and productive cough"}, {"note": "no acute distress, afebrile"}],
    ),
    "survival": ("survival-cox_mlp", [ROW, {**ROW, "age": 48.0, "ward": "surgery"}]),
    "regression": ("regression-mlp", [ROW, {"age": 55.0, "ward": "general", "smoker": 0}]),
}


def local(fed, name: str, rows: list[dict]) -> list[dict]:
    """The registered version's own predictions: the reference."""
    return Predictor.from_version(ModelRegistry(fed.registry).get(name, 1)).predict_rows(rows)


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    fed = make_federation(tmp_path_factory.mktemp("families"))
    signer = signing.signer_from_file(fed.signing_key)
    registry = ModelRegistry(fed.registry)
    for name, (case, _) in FAMILIES.items():
        predictor, _ = CASES[case]()
        weights = get_weights(predictor.model)
        registry.register(
            name,
            weights,
            predictor.spec,
            predictor.schema,
            predictor.standardization,
            signer=signer,
        )
    return fed


@pytest.fixture(scope="module")
def service(fed):
    # One explained request per family, back to back: above the default explain burst.
    running = start_service(fed, "families", "--explain-burst", "64")
    yield running
    running.stop()  # by the child's PID


def _values(shown: dict) -> list:
    """Every number of a locally presented explanation (``models.explain``)."""
    if "pixels" in shown:
        return shown["pixels"]
    if "steps" in shown:
        return [v for step in shown["steps"] for v in step["features"].values()]
    return list(next(iter(shown.values())).values())


def client(service, fed, name: str) -> InferenceClient:
    return InferenceClient(service.url, fed.token_all, name, ca_cert=fed.tls.ca_cert)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_is_answered_through_the_encrypted_endpoint(service, fed, name):
    _, rows = FAMILIES[name]
    with client(service, fed, name) as sdk:
        result = sdk.infer(rows)
    assert result.model_version == "1"
    assert result.predictions == local(fed, name, rows)


@pytest.mark.parametrize("name", ["regression", "image", "notes", "sequence"])
def test_explanations_come_back_sealed_and_add_up(service, fed, name):
    _, rows = FAMILIES[name]
    with client(service, fed, name) as sdk:
        answers = sdk.predict(rows, explain=True)
    reference = local(fed, name, rows)
    registered = Predictor.from_version(ModelRegistry(fed.registry).get(name, 1))
    for answer, expected, explained in zip(
        answers, reference, explain_rows(registered, rows), strict=True
    ):
        attributions = answer.pop("attributions")
        output, baseline = answer.pop("explained_output"), answer.pop("baseline_output")
        assert answer == expected  # explaining does not change the prediction
        total = float(np.sum(list(attributions.values()) if name != "image" else attributions))
        # the service's attributions are the registered model's own, and add up to
        # output - baseline up to the path integral's quadrature error
        local_total = float(np.sum(_values(explained["attributions"])))
        assert total == pytest.approx(local_total, rel=1e-4, abs=1e-6)
        tolerance = abs(explained["convergence_delta"]) + 2e-2 * abs(output - baseline)
        assert total == pytest.approx(output - baseline, abs=tolerance + 1e-4)
        assert output == pytest.approx(explained["output"], rel=1e-6)
        if name == "regression":
            # completeness in the label's units: the prediction minus the baseline's
            assert output == pytest.approx(expected["value"], rel=1e-5)
            assert total == pytest.approx(output - baseline, rel=1e-2)
            assert list(attributions) == registered.schema.feature_names
        if name == "image":
            assert np.asarray(attributions).shape == (8, 8)


def sealed_post(service, fed, name: str, body: dict, response_key: bytes):
    """``body`` sealed to the service's key and posted to model ``name``'s endpoint."""
    with client(service, fed, name) as sdk:
        public_key = sdk.key().public_key
    envelope = hpke.seal_request(public_key, wire.dumps(body))
    headers = {"Content-Type": hpke.REQUEST_MEDIA_TYPE, "Authorization": f"Bearer {fed.token_all}"}
    with service.http() as http:
        return http.post(f"/v2/models/{name}/infer", content=envelope, headers=headers)


def test_attributions_travel_inside_the_sealed_response(service, fed):
    _, rows = FAMILIES["regression"]
    response_key = hpke.new_response_key()
    body = wire.build_request(
        rows, secrets.token_hex(16), int(time.time()), response_key, explain=True
    )
    response = sealed_post(service, fed, "regression", body, response_key)
    assert response.status_code == 200
    assert b"attributions" not in response.content  # sealed, not beside the ciphertext
    outputs = {t["name"]: t for t in opened(response, response_key)["outputs"]}
    assert outputs["attributions"]["shape"] == [2, 3]
    assert outputs["attributions"]["parameters"]["labels"] == ["age", "ward", "smoker"]
    assert outputs["baseline_output"]["shape"] == [2]


def test_a_non_boolean_explain_is_refused_by_name(service, fed):
    response_key = hpke.new_response_key()
    body = wire.build_request([ROW], secrets.token_hex(16), int(time.time()), response_key)
    body["parameters"]["explain"] = "yes"
    response = sealed_post(service, fed, "regression", body, response_key)
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_request"
    assert "parameters.explain" in response.json()["error"]


def test_no_prediction_or_attribution_in_any_log(service, fed):
    _, rows = FAMILIES["regression"]
    with client(service, fed, "regression") as sdk:
        answers = sdk.predict(rows, explain=True)
    numbers = [a["value"] for a in answers]
    numbers += [v for a in answers for v in a["attributions"].values()]
    # distinctive digits only (a "0.0" is in any log)
    secrets_ = [repr(v)[:10] for v in numbers if len(repr(v)) >= 10]
    assert secrets_
    for path in fed.logs:
        text = path.read_text()
        for secret in secrets_:
            assert secret not in text, f"{path.name} contains {secret}"
