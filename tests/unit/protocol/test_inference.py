"""The JSON inside the envelopes and the replay guard, without a server."""

from __future__ import annotations

import json
import secrets

import pytest

from protocol import inference as wire
from protocol.inference import ApiError
from server.inference.replay import ReplayGuard

KEY = bytes(range(16))


def request(rows, **changes) -> bytes:
    body = wire.build_request(rows, secrets.token_hex(16), 1_767_225_600, KEY)
    body.update(changes)
    return json.dumps(body).encode()


def parse(data: bytes, max_rows: int = 4):
    decoded = wire.decode_request(data)
    header = wire.parse_header(decoded)
    return header, wire.parse_rows(decoded, max_rows)


def test_rows_survive_the_round_trip():
    rows = [{"age": 61, "sex": "M", "smoker": True}, {"age": 47.5, "sex": "F", "smoker": 0}]
    header, parsed = parse(request(rows))
    assert header.response_key == KEY and header.timestamp == 1_767_225_600
    assert parsed == [
        {"age": 61, "sex": "M", "smoker": 1.0},
        {"age": 47.5, "sex": "F", "smoker": 0},
    ]


def test_array_inputs_are_nested_back_per_row():
    body = json.loads(request([{"x": 1}]))
    body["inputs"] = [{"name": "img", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]
    assert parse(json.dumps(body).encode())[1] == [{"img": [1.0, 2.0]}, {"img": [3.0, 4.0]}]


@pytest.mark.parametrize(
    ("mutate", "status", "code", "message"),
    [
        (lambda b: b.update(id="ABC"), 400, "malformed_request", "id must be 32"),
        (lambda b: b.update(extra=1), 400, "malformed_request", "unknown request field 'extra'"),
        (lambda b: b["parameters"].update(verbose=True), 400, "malformed_request", "'verbose'"),
        (lambda b: b["parameters"].update(explain="yes"), 400, "malformed_request", "explain"),
        (lambda b: b["parameters"].pop("timestamp"), 400, "malformed_request", "timestamp"),
        (lambda b: b["parameters"].update(response_key="AAAA"), 400, "malformed_request", "16"),
        (lambda b: b["inputs"][0].update(datatype="FP128"), 400, "malformed_request", "datatype"),
        (lambda b: b["inputs"][0].update(shape=[3]), 400, "malformed_request", "needs 3 values"),
        (lambda b: b["inputs"][0].update(data=["x"]), 422, "wrong_type", "feature 'age'"),
        (lambda b: b["inputs"][0].update(data=[10**400]), 422, "not_finite", "finite"),
        (
            lambda b: b["inputs"][0].update(shape=[5], data=[1] * 5),
            422,
            "too_many_rows",
            "at most 4",
        ),
        (lambda b: b["inputs"].append(b["inputs"][0]), 400, "malformed_request", "twice"),
    ],
)
def test_each_malformed_request_names_its_fault(mutate, status, code, message):
    body = json.loads(request([{"age": 61, "sex": "M"}]))
    mutate(body)
    with pytest.raises(ApiError) as raised:
        parse(json.dumps(body).encode())
    assert (raised.value.status, raised.value.code) == (status, code)
    assert message in raised.value.message


def test_non_standard_json_is_refused():
    for text in (b'{"a": NaN}', b'{"a": Infinity}', b"[" * 100_000, b"\xff\xfe", b"[]"):
        with pytest.raises(ApiError) as raised:
            wire.decode_request(text)
        assert raised.value.code == "malformed_request"


def test_responses_round_trip_and_refuse_non_finite_outputs():
    predictions = [
        {"label": "a", "probabilities": {"a": 0.75, "b": 0.25}},
        {"label": "b", "probabilities": {"a": 0.125, "b": 0.875}},
    ]
    body = wire.build_response("m", 3, "f" * 32, predictions)
    parsed = wire.parse_response(json.loads(wire.dumps(body)))
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "3", "f" * 32)
    assert parsed.predictions == predictions
    with pytest.raises(ApiError) as raised:
        wire.build_response("m", 3, "f" * 32, [{"value": float("nan")}])
    assert raised.value.code == "out_of_range"


def test_the_sdk_side_refuses_what_it_cannot_send():
    with pytest.raises(ValueError, match="row 1, feature 'age': not a finite number"):
        wire.build_request([{"age": 1}, {"age": float("inf")}], "0" * 32, 0, KEY)
    with pytest.raises(ValueError, match="row 0, feature 'age': missing value"):
        wire.build_request([{"age": None}, {"age": 1}], "0" * 32, 0, KEY)
    with pytest.raises(ValueError, match="mixed"):
        wire.build_request([{"age": "1"}, {"age": 1}], "0" * 32, 0, KEY)


def test_replay_guard_refuses_stale_and_repeated_ids_and_forgets_old_ones():
    guard = ReplayGuard(window=60)
    guard.check("a" * 32, 1000, now=1000)
    with pytest.raises(ApiError) as raised:
        guard.check("a" * 32, 1000, now=1001)
    assert raised.value.code == "replayed_request" and raised.value.status == 409
    for timestamp in (900, 1100):
        with pytest.raises(ApiError) as raised:
            guard.check("b" * 32, timestamp, now=1000)
        assert raised.value.code == "stale_request"
    guard.check("c" * 32, 1050, now=1050)
    guard.check("d" * 32, 1200, now=1200)  # "a" and "c" have expired and been forgotten
    assert guard._seen == {"d" * 32}
    full = ReplayGuard(window=60, max_entries=1)
    full.check("a" * 32, 0, now=0)
    with pytest.raises(ApiError) as raised:
        full.check("b" * 32, 0, now=0)
    assert raised.value.status == 429


def test_arrays_per_row_travel_as_one_tensor_and_attribution_outputs_round_trip():
    rows = [{"image": [[1, 2], [3, 4]], "age": 5}, {"image": [[5, 6], [7, 8]], "age": 6}]
    body = wire.build_request(rows, "ab" * 16, 0, None, explain=True)
    assert body["parameters"]["explain"] is True
    assert body["inputs"][0]["shape"] == [2, 2, 2]
    decoded = wire.decode_request(wire.dumps(body))
    assert wire.parse_header(decoded, response_key_required=False).explain is True
    assert wire.parse_rows(decoded, 10) == rows
    with pytest.raises(ValueError, match="differ in shape"):
        wire.build_request([{"image": [1, 2]}, {"image": [1]}], "ab" * 16, 0, None)
    predictions = [
        {"value": 1.5, "attributions": {"a": 0.25, "b": -0.5}, "baseline_output": 0.0},
        {"value": 2.5, "attributions": {"a": 1.0, "b": 0.5}, "baseline_output": 0.0},
    ]
    maps = [{"attributions": [[0.5, 0.0], [1.0, 2.0]]}, {"attributions": [[0.0] * 2] * 2}]
    for sent in (predictions, maps):
        answer = wire.parse_response(wire.build_response("m", 1, "ab" * 16, sent))
        assert answer.predictions == sent
