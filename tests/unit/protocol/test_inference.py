"""The JSON inside the envelopes, the key configuration, the error codes and the replay
guard, without a server."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import secrets
from pathlib import Path

import numpy as np
import pytest

from models.data.features import on_encoded_scale
from models.data.schema import read_schema_document
from privacy import hpke
from protocol import inference as wire
from protocol.inference import ApiError
from server.inference.replay import ReplayGuard

KEY = bytes(range(16))
PROTOCOL_MD = Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md"


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


def test_numpy_values_and_arrays_are_sent_as_the_python_values_they_hold():
    rows = [
        {"img": np.arange(4, dtype=np.float32).reshape(2, 2), "age": np.float64(61.5)},
        {"img": [[4, 5], [6, 7]], "age": np.int64(47)},
    ]
    body = wire.build_request(rows, "ab" * 16, 0, None)
    assert body["inputs"] == [
        {
            "name": "img",
            "datatype": "FP64",
            "shape": [2, 2, 2],
            "data": [0.0, 1.0, 2.0, 3.0, 4, 5, 6, 7],
        },
        {"name": "age", "datatype": "FP64", "shape": [2], "data": [61.5, 47]},
    ]
    for ragged in ([[1, 2], [3]], [1, [2]]):
        with pytest.raises(ValueError, match="row 0, feature 'img': a ragged array"):
            wire.build_request([{"img": ragged}], "ab" * 16, 0, None)


def test_shapes_beyond_max_dims_are_refused_on_both_sides():
    deep = [1] * (wire.MAX_DIMS + 1)
    body = json.loads(request([{"x": 1}]))
    body["inputs"] = [{"name": "x", "datatype": "FP64", "shape": deep, "data": [1.0]}]
    with pytest.raises(ApiError) as raised:
        parse(json.dumps(body).encode())
    assert raised.value.code == "malformed_request" and "dimensions" in raised.value.message
    response = {"id": "ab" * 16, "outputs": [{"name": "v", "shape": deep, "data": [1.0]}]}
    with pytest.raises(ValueError, match="dimensions"):
        wire.parse_response(response)


# ------------------------------------------------------------- key configuration


def published_key_configuration() -> dict:
    """The JSON example of PROTOCOL.md section 3, its elided previous key left out."""
    section = PROTOCOL_MD.read_text().split("## 3. The key configuration")[1]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block, "docs/PROTOCOL.md section 3 has no JSON example"
    config = json.loads(block.group(1))
    config["keys"] = [k for k in config["keys"] if "…" not in k]
    return config


def test_the_key_configuration_is_the_documented_json_both_ways():
    documented = published_key_configuration()
    public = hpke.b64decode(documented["keys"][0]["public_key"])
    key = wire.PublishedKey(
        key_id=hpke.key_id_for(public),
        public_key=public,
        status="current",
        created="2026-01-01T00:00:00Z",
    )
    config = wire.KeyConfiguration(current_key_id=key.key_id, keys=(key,))
    assert wire.dumps(config.to_json()) == wire.dumps(documented)  # the same bytes
    assert wire.KeyConfiguration.from_json(documented) == config
    assert config.current == key


def test_a_previous_key_travels_after_the_current_one():
    keys = [hpke.generate_keypair() for _ in range(2)]
    published = tuple(
        wire.PublishedKey(k.key_id, k.public, status, "2026-01-01T00:00:00Z")
        for k, status in zip(keys, ("current", "previous"), strict=True)
    )
    config = wire.KeyConfiguration(current_key_id=keys[0].key_id, keys=published)
    parsed = wire.KeyConfiguration.from_json(json.loads(wire.dumps(config.to_json())))
    assert parsed == config and parsed.current.public_key == keys[0].public


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(protocol="fedcare-inference/2"), "not for fedcare-inference/1"),
        (lambda c: c.update(keys={}), "keys are not a list"),
        (lambda c: c.update(current_key_id="00" * 8), "lists no current key"),
        (lambda c: c["keys"][0].update(kem_id=0x21), "unsupported HPKE suite"),
        (lambda c: c["keys"][0].update(public_key="AAAA"), "public_key expected 32 bytes"),
        (lambda c: c["keys"][0].update(public_key=hpke.b64encode(bytes(32))), "does not match"),
        (lambda c: c["keys"][0].update(key_id="18AD7C35977B86AB"), "lowercase hex"),
        (lambda c: c["keys"][0].update(status="retired"), "status must be one of"),
        (lambda c: c["keys"][0].pop("created"), "created must be a string"),
        (lambda c: c["keys"].append("a key"), "not a JSON object"),
    ],
)
def test_a_key_configuration_that_does_not_check_out_is_refused(mutate, message):
    config = copy.deepcopy(published_key_configuration())
    mutate(config)
    with pytest.raises(ValueError, match=message):
        wire.KeyConfiguration.from_json(config)


# ------------------------------------------------------------------- error codes


def test_the_error_codes_are_the_documented_table():
    section = PROTOCOL_MD.read_text().split("## 8. Errors")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", section, re.M)
    documented = {code: int(status) for status, code in rows}
    assert documented, "docs/PROTOCOL.md section 8 has no error table"
    assert {e.code: e.status for e in wire.ERRORS.values()} == {
        **documented,
        "internal_error": 500,
    }
    for envelope_error in (hpke.MalformedEnvelope, hpke.DecryptionFailed):
        assert wire.ERRORS[envelope_error.code].status == 400
    refused = wire.INVALID_INPUT.error("row 0: missing", row=0, feature="age")
    assert (refused.status, refused.code) == (422, "invalid_input")
    assert refused.body() == {
        "error": "row 0: missing",
        "code": "invalid_input",
        "row": 0,
        "feature": "age",
    }


# ------------------------------------------------------------ homomorphic encoding

HE_SCHEMA = {
    "age": {"type": "numeric", "min": 0, "max": 120},
    "dose": {"type": "numeric"},
    "sex": {"type": "categorical", "categories": ["F", "M"]},
    "smoker": {"type": "binary"},
}


def test_he_rows_are_encoded_in_column_order_with_one_hot_categories():
    assert wire.he_columns(HE_SCHEMA) == ["age", "dose", "sex=F", "sex=M", "smoker"]
    rows = [
        {"age": 61, "dose": 2.5, "sex": "M", "smoker": "yes"},
        {"age": 47.5, "dose": -1e30, "sex": "F", "smoker": 0},
    ]
    assert wire.encode_he_rows(HE_SCHEMA, rows) == [
        [61.0, 2.5, 0.0, 1.0, 1.0],
        [47.5, -1e30, 1.0, 0.0, 0.0],
    ]


def test_he_rows_carry_a_log_features_logs_as_the_plaintext_encoder_computes_them():
    """The service folds only the linear standardization: the client sends log(x + max/20)."""
    schema = {**HE_SCHEMA, "age": {**HE_SCHEMA["age"], "transform": "log"}}
    rows = [
        {"age": 0, "dose": 2.5, "sex": "M", "smoker": 1},  # the fast path (an int in range)
        {"age": "114", "dose": 1.0, "sex": "F", "smoker": 0},  # read by the value rule
    ]
    encoded = wire.encode_he_rows(schema, rows)
    assert [row[0] for row in encoded] == [pytest.approx(math.log(6.0)), math.log(120.0)]
    assert [row[1:] for row in encoded] == [[2.5, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
    document = {"dataset": {"task": "binary", "label": "outcome"}, "features": schema}
    age = read_schema_document(document).feature("age")  # the plaintext route's encoding
    plain = on_encoded_scale(age, np.array([0.0, 114.0]))
    assert [row[0] for row in encoded] == plain.tolist()
    section = " ".join(PROTOCOL_MD.read_text().split("## 11.")[1].split())
    assert f"114 → `{encoded[1][0]!r}`, 0 → `{encoded[0][0]!r}`" in section


@pytest.mark.parametrize(
    ("row", "code", "feature"),
    [
        ({"age": 121}, "out_of_range", "age"),
        ({"age": -0.5}, "out_of_range", "age"),
        ({"dose": 1e39}, "out_of_range", "dose"),
        ({"dose": float("nan")}, "not_finite", "dose"),
        ({"dose": float("inf")}, "not_finite", "dose"),
        ({"dose": True}, "invalid_input", "dose"),
        ({"dose": "3 mg"}, "invalid_input", "dose"),
        ({"sex": "X"}, "invalid_input", "sex"),
        ({"smoker": 2}, "invalid_input", "smoker"),
        ({"dose": None}, "invalid_input", "dose"),
        ({"weight": 70}, "invalid_input", "weight"),
    ],
)
def test_he_rows_refuse_what_the_plaintext_route_refuses_naming_row_and_feature(row, code, feature):
    good = {"age": 50, "dose": 1.0, "sex": "F", "smoker": 1}
    with pytest.raises(wire.ApiError) as refused:
        wire.encode_he_rows(HE_SCHEMA, [good, {**good, **row}])
    assert refused.value.code == code
    assert refused.value.details == {"row": 1, "feature": feature}


# ------------------------------------------------------------ homomorphic frames


def documented_frame() -> bytes:
    """The frame of PROTOCOL.md section 11's test vector: hex ‖ JSON header ‖ hex."""
    section = PROTOCOL_MD.read_text().split("## 11.")[1].split("**Test vector.**")[1]
    match = re.search(r"^frame = (.*?)^```", section, re.S | re.M)
    assert match, "PROTOCOL.md section 11 has no frame"
    length, header, parts = "".join(match.group(1).split()).split("‖")
    return bytes.fromhex(length) + header.encode() + bytes.fromhex(parts)


VECTOR_REQUEST = wire.HeRequest(
    context_id="9802de44794779c77f14fa6597701b0d",
    context=b"\x01\x02",
    rows=1,
    block=4,
    columns=("a", "b"),
    data=(b"\x03\x04\x05",),
    layout="blocks",
)


def test_the_he_request_frame_is_the_documented_vector_both_ways():
    frame = wire.build_he_request(
        VECTOR_REQUEST, "00112233445566778899aabbccddeeff", 1735689600, KEY
    )
    assert frame == documented_frame()
    decoded, rest = wire.decode_he_request(frame)
    assert wire.parse_header(decoded).response_key == KEY
    assert wire.parse_he_request(decoded, rest, max_rows=4) == VECTOR_REQUEST


def test_a_he_request_without_its_context_has_only_the_ciphertext_parts():
    request = wire.HeRequest("ab" * 16, None, 130, 32, ("x",), (b"one", b"two", b"3"), "columns")
    decoded, rest = wire.decode_he_request(wire.build_he_request(request, "cd" * 16, 1, KEY))
    assert "context" not in decoded["he"] and decoded["he"]["data"] == [3, 3, 1]
    assert wire.parse_he_request(decoded, rest, max_rows=256) == request


def test_a_he_response_frame_round_trips_output_by_output():
    scores = wire.HeScores("ab" * 16, 3, 4, "softmax", ("a", "b"), ((b"1", b"22"), (b"333", b"4")))
    frame = wire.build_he_response("m", 7, "cd" * 16, scores)
    header, parsed = wire.parse_he_response(frame)
    assert parsed == scores and (header.model_name, header.model_version) == ("m", "7")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"", "4-byte header length"),
        (b"\x00\x00\x01\x00{}", "exceeds the frame"),
        (b"\x00\x00\x00\x02[]", "JSON object"),
        (b"\x00\x00\x00\x03{}}", "not a homomorphic frame"),
    ],
)
def test_frames_that_do_not_parse_are_malformed_requests(frame, message):
    with pytest.raises(ApiError, match=message) as refused:
        wire.decode_he_request(frame)
    assert refused.value.code == "malformed_request"


@pytest.mark.parametrize(
    ("change", "extra", "message"),
    [
        ({"data": [3, 1]}, b"", "add up to 6 bytes; 5 follow"),
        ({"data": [2]}, b"", "add up to 4 bytes; 5 follow"),
        ({}, b"\x00", "add up to 5 bytes; 6 follow"),
        ({"data": [0, 3]}, b"", "positive byte length"),
        ({"data": [True, 3]}, b"", "positive byte length"),
        ({"data": 3}, b"", "list of byte lengths"),
        ({"data": []}, b"", "at least one ciphertext"),
        ({"context": "2"}, b"", "he.context must be a positive byte length"),
        ({"context": -2}, b"", "he.context must be a positive byte length"),
        ({"layout": 1}, b"", "he.layout must be the name of a layout"),
    ],
)
def test_part_lengths_that_do_not_fit_the_bytes_are_malformed_requests(change, extra, message):
    header = {
        "id": "ab" * 16,
        "parameters": {"timestamp": 1, "response_key": hpke.b64encode(KEY)},
        "he": {**VECTOR_REQUEST.header(), **change},
    }
    frame = wire.pack_frame(header, [*VECTOR_REQUEST.parts(), extra])
    decoded, rest = wire.decode_he_request(frame)
    with pytest.raises(ApiError, match=message) as refused:
        wire.parse_he_request(decoded, rest, max_rows=4)
    assert refused.value.code == "malformed_request"


def test_a_he_request_names_the_transforms_it_applied_and_only_then():
    transforms = {"area": "log"}
    request = dataclasses.replace(VECTOR_REQUEST, transforms=transforms)
    decoded, rest = wire.decode_he_request(wire.build_he_request(request, "cd" * 16, 1, KEY))
    assert decoded["he"]["transforms"] == transforms
    assert wire.parse_he_request(decoded, rest, max_rows=4) == request
    # none applied, none sent: a model without transforms reads what older clients send
    assert "transforms" not in VECTOR_REQUEST.header()
    assert wire.he_transforms({"area": {"transform": "log"}, "age": {}}) == transforms
    decoded["he"]["transforms"] = ["area"]
    with pytest.raises(wire.ApiError, match="he.transforms must map"):
        wire.parse_he_request(decoded, rest, max_rows=4)
