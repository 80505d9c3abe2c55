"""No input a client can send makes the running service answer 5xx (hypothesis).

Five layers, each against the real `fedcare serve` process: arbitrary bytes, paths and
headers; arbitrary JSON sealed correctly; well-formed envelopes around arbitrary request
objects; well-formed requests with arbitrary tensors; and homomorphic requests to a
linear model around real CKKS material (altered frames, wrong byte lengths, wrong sizes,
wrong context ids, huge counts, wrong types, truncated or altered SEAL bytes). Every
answer must be 2xx or 4xx, and every 4xx must be a JSON error naming its code.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

import httpx
import pytest
import tenseal as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.data.features import FeatureEncoder, Standardization
from models.data.kinds.registry import load_schema
from models.families import build_model
from models.spec import ModelSpec, get_weights
from privacy import he, hpke, signing
from protocol import inference as wire
from server.registry import ModelRegistry
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


LINEAR = "ward_linear"


def register_linear(fed) -> None:
    """A signed logistic regression on the ward schema, offered for homomorphic inference."""
    schema = load_schema(fed.root / "schema.toml")
    scale = Standardization(mean={"age": 50.0}, std={"age": 10.0})
    spec = ModelSpec(
        kind="logreg",
        task="binary",
        input_dim=FeatureEncoder(schema, scale).input_dim,
        output_dim=1,
    )
    signer = signing.signer_from_file(fed.signing_key)
    weights = get_weights(build_model(spec, seed=0))
    ModelRegistry(fed.registry).register(LINEAR, weights, spec, schema, scale, signer=signer)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    fed = make_federation(tmp_path_factory.mktemp("fuzz"))
    register_linear(fed)
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


# ------------------------------------------------------------ homomorphic requests
# Against a linear model, so that every request gets past he_not_supported into the
# parsing of its context and ciphertexts (TenSEAL, SEAL).


@dataclass(frozen=True)
class HeMaterial:
    """Real CKKS material for the linear model, made once: what a fuzz case mutates."""

    columns: list[str]
    context: bytes
    context_id: str
    block: int  # slots per patient
    data: list[bytes]  # the ciphertexts of ROWS_SENT patients, in blocks
    other_rows: dict[int, list[bytes]]  # the same columns for another number of patients
    foreign: list[bytes]  # a valid ciphertext under another client's key (same parameters)
    weak_context: bytes  # a CKKS context of other parameters (N=8192), refused
    weak_data: bytes  # a ciphertext of it


ROWS_SENT = 2


@pytest.fixture(scope="module")
def he_material(env) -> HeMaterial:
    _, fed, key, http = env
    headers = {"Authorization": f"Bearer {fed.token_all}"}
    offer = http.get(f"/v2/models/{LINEAR}", headers=headers).json()["parameters"]["he"]
    assert offer["offered"], offer["reason"]
    columns = offer["columns"]
    secret, other = he.SecretContext(), he.SecretContext()
    rows = [[float((i + j) % 2) for j in range(len(columns))] for i in range(ROWS_SENT)]
    weak = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    weak.global_scale = 2.0**40
    material = HeMaterial(
        columns=columns,
        context=secret.public_bytes(),
        context_id=secret.context_id,
        block=offer["block"],
        data=secret.encrypt_rows(rows),
        other_rows={n: secret.encrypt_rows(rows[:1] * n) for n in (1, 3, 300)},
        foreign=other.encrypt_rows(rows),
        weak_context=weak.serialize(
            save_public_key=False, save_secret_key=False, save_galois_keys=False
        ),
        weak_data=ts.ckks_vector(weak, [1.0] * ROWS_SENT).serialize(),
    )
    # The real request works (and caches the context): the cases below start from it.
    response_key = hpke.new_response_key()
    response = send_he(
        http, fed, key, real_he_object(material), [material.context, *material.data], response_key
    )
    assert response.status_code == 200, response.text
    _, scores = wire.parse_he_response(hpke.open_response(response_key, response.content))
    assert len(secret.decrypt_scores(scores.scores[0], ROWS_SENT, material.block)) == ROWS_SENT
    return material


def real_he_object(material: HeMaterial) -> dict:
    """The ``he`` header of the real request: the context and ciphertexts by byte length."""
    return {
        "context_id": material.context_id,
        "context": len(material.context),
        "rows": ROWS_SENT,
        "block": material.block,
        "layout": "blocks",
        "columns": material.columns,
        "data": [len(c) for c in material.data],
    }


def opened_json(response: httpx.Response, response_key: bytes):
    return json.loads(hpke.open_response(response_key, response.content))


def he_frame(he_object, parts: list[bytes], response_key: bytes) -> bytes:
    """A homomorphic request frame whose header's ``he`` is ``he_object`` as is."""
    parameters = {"timestamp": int(time.time()), "response_key": hpke.b64encode(response_key)}
    header = {"id": secrets.token_hex(16), "parameters": parameters, "he": he_object}
    return wire.pack_frame(header, parts)


def send_sealed_he(http: httpx.Client, fed, key: bytes, frame: bytes):
    """POST ``frame`` sealed to the homomorphic route of the linear model."""
    headers = {"Authorization": f"Bearer {fed.token_all}", "Content-Type": hpke.REQUEST_MEDIA_TYPE}
    envelope = hpke.seal_request(key, frame)
    return http.post(f"/v2/models/{LINEAR}/he-infer", content=envelope, headers=headers)


def send_he(http: httpx.Client, fed, key: bytes, he_object, parts: list[bytes], response_key):
    """POST a sealed homomorphic request of ``he_object`` with ``parts`` after it."""
    return send_sealed_he(http, fed, key, he_frame(he_object, parts, response_key))


def check_he(response: httpx.Response, response_key: bytes) -> None:
    """No 5xx; a refusal is a JSON error; a 200 is a sealed homomorphic response frame."""
    check(response, response_key)
    if response.status_code == 200:
        opened = hpke.open_response(response_key, response.content)
        header, scores = wire.parse_he_response(opened)
        assert scores.scores and header.model_name == LINEAR


def mutate(data: bytes, how: tuple) -> bytes:
    """``data`` truncated, with bits flipped, or with bytes spliced in (positions wrap)."""
    if not data:
        return how[-1] if how[0] == "splice" else data
    if how[0] == "truncate":
        return data[: how[1] % len(data)]
    if how[0] == "flip":
        out = bytearray(data)
        for bit in how[1]:
            out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
        return bytes(out)
    at = how[1] % len(data)
    return data[:at] + how[2] + data[at + len(how[2]) :]


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=2**24)),
    st.tuples(st.just("flip"), st.lists(st.integers(0, 2**27), min_size=1, max_size=8)),
    st.tuples(st.just("splice"), st.integers(0, 2**24), st.binary(min_size=1, max_size=64)),
)
junk = json_values | st.text(max_size=40)  # what a field of the wrong type could hold
wrong_lengths = st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30]) | st.integers(-(2**70), 2**70)


def draw_context(data, material: HeMaterial) -> tuple[bool, object, bytes]:
    """A wrong ``he.context``: whether to send it, its header value, the bytes sent."""
    choice = data.draw(
        st.sampled_from(["omit", "mutated", "random", "weak", "huge", "wrong_length", "junk"])
    )
    raw = {
        "mutated": mutate(material.context, data.draw(mutations)),
        "random": data.draw(st.binary(max_size=300)),
        "weak": material.weak_context,
        "huge": material.context + bytes(he.MAX_CONTEXT_BYTES),
    }.get(choice)
    if raw is not None:
        return True, len(raw), raw
    if choice == "omit":
        return False, None, b""
    value = data.draw(wrong_lengths if choice == "wrong_length" else junk)
    return True, value, material.context


def draw_data(data, material: HeMaterial) -> tuple[object, list[bytes]]:
    """A wrong ``he.data`` and the ciphertexts sent: one altered, other lengths, or else."""
    parts = list(material.data)
    choice = data.draw(
        st.sampled_from(
            ["mutated", "other_rows", "foreign", "weak", "random", "wrong_length", "wrong_count",
             "wrong_types", "junk"]
        )
    )  # fmt: skip
    at = data.draw(st.integers(0, len(parts) - 1))
    if choice == "mutated":
        parts[at] = mutate(material.data[at], data.draw(mutations))
    elif choice == "other_rows":
        parts = list(material.other_rows[data.draw(st.sampled_from([1, 3, 300]))])
    elif choice == "foreign":  # decodes, and computes: a valid ciphertext under another key
        parts[at] = material.foreign[at]
    elif choice == "weak":
        parts[at] = material.weak_data
    elif choice == "random":
        parts[at] = data.draw(st.binary(max_size=300))
    elif choice == "wrong_count":
        parts = data.draw(st.sampled_from([[], parts[:-1], [*parts, parts[0]]]))
    lengths: list = [len(c) for c in parts]
    if choice == "wrong_length":
        lengths[at] = data.draw(wrong_lengths)
    elif choice == "wrong_types":
        lengths[at] = data.draw(junk.filter(lambda v: not isinstance(v, int)))
    elif choice == "junk":
        return data.draw(junk), parts
    return lengths, parts


HE_FIELDS = ("context", "context_id", "rows", "block", "layout", "columns", "data", "shape")


@FUZZ
@given(data=st.data())
def test_homomorphic_requests_never_answer_5xx(env, he_material, data):
    """The real request with one or two of its ``he`` fields wrong, in every way the
    drawing knows, so that each check (and the parsers behind it) is reached."""
    _, fed, key, http = env
    material = he_material
    broken = data.draw(st.sets(st.sampled_from(HE_FIELDS), min_size=1, max_size=2))
    has_context, context, raw = True, len(material.context), material.context
    if "context" in broken:
        has_context, context, raw = draw_context(data, material)
    # By default the id of the bytes sent, so that the service really parses them.
    context_id = he.context_id(raw) if has_context else material.context_id
    if "context_id" in broken:
        context_id = data.draw(
            st.sampled_from(
                [material.context_id, secrets.token_hex(16), material.context_id.upper(),
                 material.context_id[:-1], material.context_id + "0"]
            )
            | junk
        )  # fmt: skip
        if "context" not in broken:  # without it, the id must name a cached context
            has_context = data.draw(st.booleans())
    rows = ROWS_SENT
    if "rows" in broken:
        rows = data.draw(
            st.sampled_from([0, 1, 3, 256, 257, 4096, 4097, 2**31, 2**63, 10**30])
            | st.integers(min_value=-(2**70), max_value=2**70)
            | st.sampled_from([True, 2.0, "2", None, [2]])
        )
    block = material.block
    if "block" in broken:
        block = data.draw(
            st.sampled_from([0, 1, 2, 16, 33, 64, 2048, 4096, 2**40, -32])
            | st.sampled_from([True, 32.0, "32", None, [32]])
        )
    layout = "blocks"
    if "layout" in broken:  # columns is a layout, but not of these ciphertexts
        layout = data.draw(st.sampled_from(["columns", "Blocks", "", "rows"]) | junk)
    columns = material.columns
    if "columns" in broken:
        columns = data.draw(
            st.permutations(material.columns).filter(lambda c: c != material.columns)
            | st.just(material.columns[:-1])
            | st.just([*material.columns, "extra"])
            | st.lists(st.text(max_size=8), max_size=5)
            | junk
        )
    lengths, parts = [len(c) for c in material.data], list(material.data)
    if "data" in broken:
        lengths, parts = draw_data(data, material)
    he_object = {
        "context_id": context_id,
        "rows": rows,
        "block": block,
        "layout": layout,
        "columns": columns,
        "data": lengths,
    }
    if has_context:
        he_object["context"] = context
        parts = [raw, *parts]
    if "shape" in broken:  # an unknown field, or a required one missing
        field = data.draw(
            st.sampled_from(["context_id", "rows", "block", "layout", "columns", "data", "extra"])
        )
        if field == "extra":
            he_object["extra"] = 1
        else:
            he_object.pop(field)
    response_key = hpke.new_response_key()
    check_he(send_he(http, fed, key, he_object, parts, response_key), response_key)


@FUZZ
@given(target=st.integers(min_value=-1, max_value=0), how=mutations)
def test_mutated_seal_bytes_never_answer_5xx(env, he_material, target, how):
    """The real request with its context (-1) or one ciphertext truncated, flipped or
    spliced, its id always matching: every case reaches TenSEAL's and SEAL's loaders."""
    _, fed, key, http = env
    material = he_material
    context, ciphertexts = material.context, list(material.data)
    if target < 0:
        context = mutate(context, how)
    else:
        at = target % len(ciphertexts)
        ciphertexts[at] = mutate(ciphertexts[at], how)
    he_object = {
        "context_id": he.context_id(context),
        "context": len(context),
        "rows": ROWS_SENT,
        "block": material.block,
        "layout": "blocks",
        "columns": material.columns,
        "data": [len(c) for c in ciphertexts],
    }
    response_key = hpke.new_response_key()
    check_he(
        send_he(http, fed, key, he_object, [context, *ciphertexts], response_key), response_key
    )


@FUZZ
@given(how=mutations)
def test_mutated_frames_never_answer_5xx(env, he_material, how):
    """The real request's whole frame truncated, flipped or spliced: its header length,
    its JSON header and the lengths it gives against the bytes that follow."""
    _, fed, key, http = env
    material = he_material
    response_key = hpke.new_response_key()
    frame = he_frame(real_he_object(material), [material.context, *material.data], response_key)
    mutated = mutate(frame, how)
    try:  # the mutation may have changed the response key the reply is sealed with
        response_key = wire.parse_header(wire.decode_he_request(mutated)[0]).response_key
    except wire.ApiError:
        pass  # refused before the response key is read: a plain JSON error
    check_he(send_sealed_he(http, fed, key, mutated), response_key)


def test_an_uncached_context_id_without_its_context_is_refused(env, he_material):
    """What the fuzzing reaches only rarely: an id no context was ever sent under."""
    _, fed, key, http = env
    he_object = {**real_he_object(he_material), "context_id": secrets.token_hex(16)}
    he_object.pop("context")
    response_key = hpke.new_response_key()
    response = send_he(http, fed, key, he_object, list(he_material.data), response_key)
    assert response.status_code == 400
    assert opened_json(response, response_key)["code"] == wire.UNKNOWN_HE_CONTEXT.code
