"""No input a client can send makes the running service answer 5xx (hypothesis).

Four layers, each against the real `fedcare serve` process: arbitrary bytes, paths and
headers; arbitrary JSON sealed correctly; well-formed envelopes around arbitrary request
objects; and well-formed requests with arbitrary tensors. Every answer must be 2xx or 4xx,
and every 4xx must name its error.
"""

from __future__ import annotations

import json
import secrets
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privacy import hpke
from protocol import inference as wire
from tests.e2e.test_inference import make_federation, start_service

pytestmark = pytest.mark.slow
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    fed = make_federation(tmp_path_factory.mktemp("fuzz"))
    service = start_service(fed, "fuzz")
    with service.http() as http:
        key = hpke.b64decode(http.get("/.well-known/fedcare-keys").json()["keys"][0]["public_key"])
        yield service, fed, key, http
    service.stop()


def check(response: httpx.Response, response_key: bytes | None = None) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        media = response.headers.get("content-type", "")
        if media == hpke.RESPONSE_MEDIA_TYPE:
            body = json.loads(hpke.open_response(response_key, response.content))
        else:
            body = response.json()
        assert isinstance(body["error"], str) and body["code"]


def send(
    http: httpx.Client, fed, body: bytes, media: str = hpke.REQUEST_MEDIA_TYPE, model: str = "ward"
):
    headers = {"Authorization": f"Bearer {fed.token_all}", "Content-Type": media}
    return http.post(f"/v2/models/{model}/infer", content=body, headers=headers)


@FUZZ
@given(
    body=st.binary(max_size=300),
    media=st.sampled_from(
        [hpke.REQUEST_MEDIA_TYPE, "application/json", "text/plain", "", "a/b; x=1"]
    ),
    model=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-.0123456789%", min_size=1, max_size=12),
    token=st.from_regex(r"[!-~]{1,60}", fullmatch=True),  # what an HTTP header can carry
)
def test_arbitrary_bytes_paths_and_headers(env, body, media, model, token):
    service, fed, _, http = env
    response = send(http, fed, body, media, model)
    check(response)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": media}
    check(http.post(f"/v2/models/{model}/infer", content=body, headers=headers))
    check(http.get(f"/v2/models/{model}", headers={"Authorization": token}))


@FUZZ
@given(value=json_values)
def test_arbitrary_json_sealed_correctly(env, value):
    _, fed, key, http = env
    check(send(http, fed, hpke.seal_request(key, json.dumps(value).encode())))


@FUZZ
@given(
    parameters=st.dictionaries(
        st.sampled_from(["timestamp", "response_key", "explain"]), json_values
    ),
    inputs=json_values,
    request_id=st.one_of(st.just(None), st.text(max_size=40)),
)
def test_arbitrary_request_objects(env, parameters, inputs, request_id):
    _, fed, key, http = env
    body = {"id": request_id or secrets.token_hex(16), "parameters": parameters, "inputs": inputs}
    check(send(http, fed, hpke.seal_request(key, json.dumps(body).encode())))


tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["age", "sex", "smoker", "bmi", ""]),
        "datatype": st.sampled_from([*wire.DATATYPES, "FP128", 3]),
        "shape": st.lists(st.integers(min_value=-1, max_value=4), min_size=0, max_size=3),
        "data": st.lists(json_values, max_size=6),
    }
)


@FUZZ
@given(
    inputs=st.lists(tensor, min_size=1, max_size=4),
    big=st.floats(min_value=1e300, allow_infinity=False),
)
def test_well_formed_requests_with_arbitrary_tensors(env, inputs, big):
    _, fed, key, http = env
    response_key = hpke.new_response_key()
    parameters = {"timestamp": int(time.time()), "response_key": hpke.b64encode(response_key)}
    body = {"id": secrets.token_hex(16), "parameters": parameters, "inputs": inputs}
    check(send(http, fed, hpke.seal_request(key, json.dumps(body).encode())), response_key)
    # Valid rows at the edge of the float range (the model's output must not become NaN).
    rows = [{"age": big, "sex": "M", "smoker": 1}, {"age": -big, "sex": "F", "smoker": 0}]
    request = wire.build_request(rows, secrets.token_hex(16), int(time.time()), response_key)
    check(send(http, fed, hpke.seal_request(key, wire.dumps(request))), response_key)
