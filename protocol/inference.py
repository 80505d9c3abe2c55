"""Everything both sides of the inference wire agree on.

The routes, the key configuration, the error codes, and the Open Inference Protocol
(KServe v2) JSON inside the envelopes. Shared by the service (publishing keys, parsing
requests, building responses and refusals) and the SDK (the reverse), so both agree by
construction. ``docs/PROTOCOL.md`` is the specification: routes in section 2, the key
configuration in section 3, the JSON in section 6, the error codes in section 8. This
module needs only the standard library, :mod:`privacy.hpke`, the value rules of
:mod:`models.data.values` and the declared transforms of :mod:`models.data.transforms`
(both standard library only), so the SDK installs without numpy, torch, Flower or Opacus.

A request carries one tensor per feature, by the feature's name in the model's schema,
with shape ``[n]`` for ``n`` rows (or ``[n, d1, …]``, flattened row-major, for inputs
that are arrays), plus the replay and response-key fields under ``parameters``::

    {"id": "<32 lowercase hex>",
     "parameters": {"timestamp": 1735689600, "response_key": "<base64 of 16 bytes>"},
     "inputs": [{"name": "age", "datatype": "FP64", "shape": [2], "data": [61, 47]},
                {"name": "sex", "datatype": "BYTES", "shape": [2], "data": ["M", "F"]}]}

A response carries one tensor per prediction field (``label``, ``probability`` …); a field
whose value is a mapping (class probabilities) becomes an ``[n, k]`` tensor with its keys
in ``parameters.labels``. With ``parameters.explain`` true the response also carries the
``attributions`` (``[n, k]`` per feature or term, or ``[n, h, w]`` per pixel),
``explained_output`` and ``baseline_output`` tensors (``docs/PROTOCOL.md`` section 6).
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.data import values as value_rules
from models.data.transforms import transformed
from privacy import hpke

# ------------------------------------------------------------------------- routes

# ``{model}`` is the model's name in the registry (docs/PROTOCOL.md section 2).
KEYS_PATH = "/.well-known/fedcare-keys"
INFER_PATH = "/v2/models/{model}/infer"
# Homomorphic-encryption inference of linear models (docs/PROTOCOL.md section 11).
HE_INFER_PATH = "/v2/models/{model}/he-infer"
MODEL_PATH = "/v2/models/{model}"
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
JSON_MEDIA_TYPE = "application/json"
# The key configuration's Cache-Control max-age, and how long the SDK caches it.
KEYS_MAX_AGE = 300

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
FLOAT_TYPES = ("FP16", "FP32", "FP64")
INT_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
# What each number type can hold: a value outside its declared type is refused, not cast.
INT_RANGES = {
    f"{sign}INT{bits}": (0 if sign else -(2 ** (bits - 1)), 2 ** (bits - (0 if sign else 1)) - 1)
    for sign in ("", "U")
    for bits in (8, 16, 32, 64)
}
FLOAT32_MAX = 3.4028234663852886e38
FLOAT_MAX = {"FP16": 65504.0, "FP32": FLOAT32_MAX, "FP64": sys.float_info.max}
# Every model computes in float32: a number beyond float32 is refused whatever its type.
MODEL_DTYPE, MODEL_DTYPE_MAX = "float32", FLOAT32_MAX
DATATYPES = ("BOOL", "BYTES", *FLOAT_TYPES, *INT_TYPES)
# Request parameters the service understands; anything else is refused by name.
REQUEST_PARAMETERS = ("timestamp", "response_key", "explain")
# The most dimensions of a tensor's shape (numpy's limit, which the data kinds rely on).
MAX_DIMS = 64


# ------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A refused request: the HTTP status, the protocol's error code and a message.

    Parameters
    ----------
    status : int
        The HTTP status (always 4xx for anything a client sends).
    code : str
        The machine-readable error code (``docs/PROTOCOL.md`` section 8).
    message : str
        What was wrong, for a human; it never contains a submitted value.
    details : dict
        Extra fields (``row``, ``feature``, ``retry_after`` …).
    """

    def __init__(self, status: int, code: str, message: str, **details: Any):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        """The error's JSON: OIP's ``{"error": message}`` plus ``code`` and details."""
        return {"error": self.message, "code": self.code, **self.details}


@dataclass(frozen=True)
class ErrorCode:
    """One refusal of the protocol: its machine-readable code and its HTTP status.

    Parameters
    ----------
    code : str
        The ``code`` field of the error body.
    status : int
        The HTTP status it always comes with.
    """

    code: str
    status: int

    def error(self, message: str, **details: Any) -> ApiError:
        """The exception to raise for this refusal.

        Parameters
        ----------
        message : str
            What was wrong, for a human; never a submitted value.
        **details
            Extra fields of the body (``row``, ``feature``, ``retry_after`` …).
        """
        return ApiError(self.status, self.code, message, **details)


# docs/PROTOCOL.md section 8, in its order (tests/unit/protocol checks the two agree).
MALFORMED_ENVELOPE = ErrorCode("malformed_envelope", 400)
UNKNOWN_KEY_ID = ErrorCode("unknown_key_id", 400)
DECRYPTION_FAILED = ErrorCode("decryption_failed", 400)
MALFORMED_REQUEST = ErrorCode("malformed_request", 400)
NOT_EXPLAINABLE = ErrorCode("not_explainable", 400)
STALE_REQUEST = ErrorCode("stale_request", 400)
HE_NOT_SUPPORTED = ErrorCode("he_not_supported", 400)
UNKNOWN_HE_CONTEXT = ErrorCode("unknown_he_context", 400)
INVALID_CIPHERTEXT = ErrorCode("invalid_ciphertext", 400)
MISSING_HOST = ErrorCode("missing_host", 400)
UNAUTHORIZED = ErrorCode("unauthorized", 401)
FORBIDDEN = ErrorCode("forbidden", 403)
UNKNOWN_MODEL = ErrorCode("unknown_model", 404)
NOT_FOUND = ErrorCode("not_found", 404)
METHOD_NOT_ALLOWED = ErrorCode("method_not_allowed", 405)
REPLAYED_REQUEST = ErrorCode("replayed_request", 409)
BODY_TOO_LARGE = ErrorCode("body_too_large", 413)
UNSUPPORTED_MEDIA_TYPE = ErrorCode("unsupported_media_type", 415)
HEADERS_TOO_LARGE = ErrorCode("headers_too_large", 431)
TOO_MANY_ROWS = ErrorCode("too_many_rows", 422)
WRONG_TYPE = ErrorCode("wrong_type", 422)
NOT_FINITE = ErrorCode("not_finite", 422)
INVALID_INPUT = ErrorCode("invalid_input", 422)
OUT_OF_RANGE = ErrorCode("out_of_range", 422)
RATE_LIMITED = ErrorCode("rate_limited", 429)
REPLAY_CACHE_FULL = ErrorCode("replay_cache_full", 429)
INTERNAL_ERROR = ErrorCode("internal_error", 500)  # a bug of the service, never an input

ERRORS: dict[str, ErrorCode] = {
    error.code: error
    for error in (
        MALFORMED_ENVELOPE,
        UNKNOWN_KEY_ID,
        DECRYPTION_FAILED,
        MALFORMED_REQUEST,
        NOT_EXPLAINABLE,
        STALE_REQUEST,
        HE_NOT_SUPPORTED,
        UNKNOWN_HE_CONTEXT,
        INVALID_CIPHERTEXT,
        MISSING_HOST,
        UNAUTHORIZED,
        FORBIDDEN,
        UNKNOWN_MODEL,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        REPLAYED_REQUEST,
        BODY_TOO_LARGE,
        UNSUPPORTED_MEDIA_TYPE,
        HEADERS_TOO_LARGE,
        TOO_MANY_ROWS,
        WRONG_TYPE,
        NOT_FINITE,
        INVALID_INPUT,
        OUT_OF_RANGE,
        RATE_LIMITED,
        REPLAY_CACHE_FULL,
        INTERNAL_ERROR,
    )
}


# -------------------------------------------------------------- key configuration

KEY_STATUSES = ("current", "previous")
KEY_ID_HEX = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class PublishedKey:
    """One public key of the key configuration (``docs/PROTOCOL.md`` section 3).

    Parameters
    ----------
    key_id : bytes
        The 8-byte key id, ``hpke.key_id_for(public_key)``.
    public_key : bytes
        The raw 32-byte X25519 public key.
    status : str
        ``"current"`` (new requests are sealed to it) or ``"previous"`` (still accepted).
    created : str
        When the key was made (``YYYY-MM-DDTHH:MM:SSZ``).
    """

    key_id: bytes
    public_key: bytes
    status: str
    created: str

    def to_json(self) -> dict[str, Any]:
        """The key's entry in the key configuration's ``keys`` list."""
        return {
            "key_id": self.key_id.hex(),
            "status": self.status,
            "kem_id": hpke.KEM_ID,
            "kdf_id": hpke.KDF_ID,
            "aead_id": hpke.AEAD_ID,
            "suite": hpke.SUITE_NAME,
            "public_key": hpke.b64encode(self.public_key),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, entry: Any) -> PublishedKey:
        """An entry of ``keys``, checked: the suite, the public key, the id it implies.

        Parameters
        ----------
        entry : Any
            One decoded element of the configuration's ``keys`` list.

        Raises ``ValueError`` naming the key and what does not fit.
        """
        if not isinstance(entry, dict):
            raise ValueError("a key entry is not a JSON object")
        key_id = entry.get("key_id")
        if not isinstance(key_id, str) or not KEY_ID_HEX.match(key_id):
            raise ValueError("a key's key_id is not 16 lowercase hex characters")
        suite = (entry.get("kem_id"), entry.get("kdf_id"), entry.get("aead_id"))
        if suite != (hpke.KEM_ID, hpke.KDF_ID, hpke.AEAD_ID):
            raise ValueError(f"key {key_id} uses an unsupported HPKE suite {suite}")
        try:
            public = hpke.b64decode(entry.get("public_key", ""), length=hpke.ENC_LEN)
        except ValueError as err:
            raise ValueError(f"key {key_id}: public_key {err}") from None
        if hpke.key_id_for(public).hex() != key_id:
            raise ValueError(f"key {key_id}: the id does not match its public key")
        status, created = entry.get("status"), entry.get("created")
        if status not in KEY_STATUSES:
            raise ValueError(f"key {key_id}: status must be one of {list(KEY_STATUSES)}")
        if not isinstance(created, str):
            raise ValueError(f"key {key_id}: created must be a string")
        return cls(key_id=bytes.fromhex(key_id), public_key=public, status=status, created=created)


@dataclass(frozen=True)
class KeyConfiguration:
    """The service's published HPKE keys (``GET /.well-known/fedcare-keys``).

    The service builds it and sends :meth:`to_json`; the SDK reads it back with
    :meth:`from_json`, which checks every key.

    Parameters
    ----------
    current_key_id : bytes
        The id of the key new requests are sealed to; one of ``keys``.
    keys : tuple of PublishedKey
        The current key first, then the previous ones.
    """

    current_key_id: bytes
    keys: tuple[PublishedKey, ...]

    def __post_init__(self) -> None:
        if not any(key.key_id == self.current_key_id for key in self.keys):
            raise ValueError("the key configuration lists no current key")

    @property
    def current(self) -> PublishedKey:
        """The key new requests are sealed to."""
        return next(k for k in self.keys if k.key_id == self.current_key_id)

    def to_json(self) -> dict[str, Any]:
        """The configuration's JSON object."""
        return {
            "protocol": hpke.PROTOCOL,
            "current_key_id": self.current_key_id.hex(),
            "keys": [key.to_json() for key in self.keys],
        }

    @classmethod
    def from_json(cls, config: Any) -> KeyConfiguration:
        """A decoded configuration, checked; ``ValueError`` naming what does not fit.

        Parameters
        ----------
        config : Any
            The decoded JSON of the key-configuration route.
        """
        if not isinstance(config, dict) or config.get("protocol") != hpke.PROTOCOL:
            raise ValueError(f"the key configuration is not for {hpke.PROTOCOL}")
        entries = config.get("keys")
        if not isinstance(entries, list):
            raise ValueError("the key configuration's keys are not a list")
        keys = tuple(PublishedKey.from_json(entry) for entry in entries)
        named = config.get("current_key_id")
        # An id that names none of the keys is refused by the record itself.
        current = next((key.key_id for key in keys if key.key_id.hex() == named), b"")
        return cls(current_key_id=current, keys=keys)


# ---------------------------------------------------------------------- JSON


@dataclass(frozen=True)
class RequestHeader:
    """The envelope-level fields of a request.

    Parameters
    ----------
    id : str
        The caller's random request id (32 hex characters), remembered against replay.
    timestamp : int
        When the caller made it (Unix seconds).
    response_key : bytes or None
        The 16-byte AES-128-GCM key the response is sealed with (None only in the
        benchmark-only plaintext mode).
    explain : bool
        Whether the caller asked for attributions (``parameters.explain``).
    """

    id: str
    timestamp: int
    response_key: bytes | None = field(repr=False)
    explain: bool = False


@dataclass(frozen=True)
class InferenceResponse:
    """A parsed response (the SDK's view).

    Parameters
    ----------
    id : str
        The request id it answers.
    model_name, model_version : str
        The model and the registry version that computed the predictions.
    predictions : list of dict
        One prediction per row, as ``Predictor.predict_rows`` returns them.
    """

    id: str
    model_name: str
    model_version: str
    predictions: list[dict[str, Any]] = field(repr=False)


def _bad(message: str) -> ApiError:
    return MALFORMED_REQUEST.error(message)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def loads_strict(data: bytes) -> Any:
    """Parse JSON as RFC 8259 has it: no ``NaN``/``Infinity``; ``ValueError`` otherwise.

    Parameters
    ----------
    data : bytes
        UTF-8 JSON text.
    """
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def dumps(value: Any) -> bytes:
    """Compact JSON as both sides send it (non-finite numbers are refused).

    Parameters
    ----------
    value : Any
        A JSON-able value.
    """
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


# ------------------------------------------------------------------ requests (SDK)


def _plain(value: Any) -> Any:
    """A numpy scalar or array as the Python value or nested lists it holds.

    Rows from pandas hold numpy scalars, images numpy arrays. numpy is not a dependency
    of the SDK: a numpy value can only exist once its caller imported numpy, so the
    module is looked up rather than imported.
    """
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic | numpy.ndarray):
        return value.tolist()
    return value


def _flatten(value: Any) -> tuple[tuple[int, ...], list[Any]]:
    """The shape and row-major elements of nested lists; ``ValueError`` if ragged.

    A scalar has the shape ``()`` and the one element ``value``.
    """
    value = _plain(value)
    if not isinstance(value, list | tuple):
        return (), [value]
    parts = [_flatten(v) for v in value]
    shapes = {shape for shape, _ in parts}
    if len(shapes) > 1:
        raise ValueError("a ragged array")
    inner = shapes.pop() if shapes else ()
    return (len(value), *inner), [element for _, elements in parts for element in elements]


def _nest(flat: Sequence[Any], shape: Sequence[int]) -> list[Any]:
    """Row-major ``flat`` values as nested lists of ``shape`` (:func:`_flatten` reversed)."""
    if len(shape) == 1:
        return list(flat)
    width = math.prod(shape[1:])
    return [_nest(flat[i * width : (i + 1) * width], shape[1:]) for i in range(shape[0])]


def _column(feature: str, values: list[Any]) -> tuple[str, list[int], list[Any]]:
    """The datatype, shape and flat (row-major) values of one feature's column.

    A value that is an array (an image, a series) makes the tensor ``[n, d1, …]``; every
    row's array must then have the same shape.
    """
    if values and all(isinstance(v, list | tuple) for v in values):
        arrays = []
        for row, value in enumerate(values):
            try:
                arrays.append(_flatten(value))
            except ValueError:
                raise ValueError(f"row {row}, feature '{feature}': a ragged array") from None
        shapes = {shape for shape, _ in arrays}
        if len(shapes) != 1:
            raise ValueError(f"feature '{feature}': the rows' arrays differ in shape")
        flat = [element for _, elements in arrays for element in elements]
        datatype, _, data = _column(feature, flat)
        return datatype, [len(values), *shapes.pop()], data
    shape = [len(values)]
    kinds = {type(v) for v in values}
    if kinds <= {bool}:
        return "BOOL", shape, values
    if kinds <= {str}:
        return "BYTES", shape, values
    if kinds <= {bool, int, float}:
        for row, value in enumerate(values):
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"row {row}, feature '{feature}': not a finite number")
        # A column mixing true/false with numbers (a binary feature) travels as numbers.
        return "FP64", shape, [float(v) if isinstance(v, bool) else v for v in values]
    for row, value in enumerate(values):
        if value is None:
            raise ValueError(f"row {row}, feature '{feature}': missing value")
    names = sorted(t.__name__ for t in kinds)
    raise ValueError(f"feature '{feature}': values of mixed or unsupported types {names}")


def build_request(
    rows: Sequence[Mapping[str, Any]],
    request_id: str,
    timestamp: int,
    response_key: bytes | None,
    explain: bool = False,
) -> dict[str, Any]:
    """The request JSON for ``rows``.

    Parameters
    ----------
    rows : sequence of mapping
        One mapping of feature name to a scalar value, or to an array of the same shape
        in every row (an image), per row.
    request_id : str
        32 lowercase hex characters, new for every request.
    timestamp : int
        Now, in Unix seconds.
    response_key : bytes or None
        The 16-byte key the response is to be sealed with (None only in the
        benchmark-only plaintext mode).
    explain : bool
        Ask the service for attributions.

    Raises ``ValueError`` naming the row and feature of a value that cannot be sent
    (missing, not finite, mixed types). Whether the features fit the model is the
    service's to say.
    """
    if not rows:
        raise ValueError("no rows to send")
    names: list[str] = []
    for row in rows:
        names.extend(name for name in row if name not in names)
    inputs = []
    for name in names:
        datatype, shape, values = _column(name, [_plain(row.get(name)) for row in rows])
        inputs.append({"name": name, "datatype": datatype, "shape": shape, "data": values})
    parameters: dict[str, Any] = {"timestamp": timestamp}
    if response_key is not None:
        parameters["response_key"] = hpke.b64encode(response_key)
    if explain:
        parameters["explain"] = True
    return {"id": request_id, "parameters": parameters, "inputs": inputs}


# ------------------------------------------------------------- requests (service)


def _refused(error: ErrorCode, name: str, row: int, expected: str) -> ApiError:
    return error.error(f"row {row}, feature '{name}': expected {expected}", row=row, feature=name)


def _element(name: str, datatype: str, row: int, value: Any) -> Any:
    """One tensor element checked against its declared datatype."""
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise _refused(WRONG_TYPE, name, row, "a string (datatype BYTES)")
        return value
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise _refused(WRONG_TYPE, name, row, "true or false (datatype BOOL)")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refused(WRONG_TYPE, name, row, f"a number (datatype {datatype})")
    if datatype in INT_TYPES and not isinstance(value, int):
        raise _refused(WRONG_TYPE, name, row, f"an integer (datatype {datatype})")
    if datatype in INT_TYPES:
        low, high = INT_RANGES[datatype]
        if not isinstance(value, int) or not low <= value <= high:
            raise _refused(OUT_OF_RANGE, name, row, f"an integer that fits {datatype}")
        return value
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _refused(NOT_FINITE, name, row, "a finite number")
    if abs(number) > FLOAT_MAX[datatype]:
        raise _refused(OUT_OF_RANGE, name, row, f"a number that fits {datatype}")
    if abs(number) > MODEL_DTYPE_MAX:
        raise _refused(OUT_OF_RANGE, name, row, f"a number that fits {MODEL_DTYPE}")
    return number


def _rows_of(tensor: Any, index: int, max_rows: int) -> tuple[str, list[Any]]:
    """The name and per-row values of one input tensor."""
    if not isinstance(tensor, dict):
        raise _bad(f"inputs[{index}] must be an object")
    name, datatype, shape, data = (tensor.get(k) for k in ("name", "datatype", "shape", "data"))
    if not isinstance(name, str) or not name:
        raise _bad(f"inputs[{index}].name must be a non-empty string")
    if datatype not in DATATYPES:
        raise _bad(f"input '{name}': datatype must be one of {list(DATATYPES)}")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise _bad(f"input '{name}': shape must be a list of non-negative integers")
    if not isinstance(data, list):
        raise _bad(f"input '{name}': data must be a flat list")
    count = shape[0]
    if count > max_rows:
        raise TOO_MANY_ROWS.error(f"{count} rows in one request; at most {max_rows} are allowed")
    if len(shape) > MAX_DIMS:
        raise _bad(f"input '{name}': shape has more than {MAX_DIMS} dimensions")
    width = math.prod(shape[1:])
    if len(data) != count * width:
        raise _bad(f"input '{name}': shape {shape} needs {count * width} values, got {len(data)}")
    values = [_element(name, datatype, i // max(width, 1), v) for i, v in enumerate(data)]
    # An array per row (images, series): nest the flat row-major values back.
    return name, _nest(values, shape)


def decode_request(plaintext: bytes) -> dict[str, Any]:
    """The request's JSON object (:class:`ApiError` ``malformed_request`` otherwise).

    Parameters
    ----------
    plaintext : bytes
        The opened request envelope (or the benchmark-only plaintext body).
    """
    try:
        body = loads_strict(plaintext)
    except ValueError as err:
        raise _bad(f"the request is not valid JSON ({err})") from None
    return _request_object(body, "inputs")


def _request_object(body: Any, payload_field: str) -> dict[str, Any]:
    """``body`` if it is an object of ``id``, ``parameters`` and ``payload_field`` only."""
    if not isinstance(body, dict):
        raise _bad("the request must be a JSON object")
    unknown = sorted(set(body) - {"id", "parameters", payload_field})
    if unknown:
        raise _bad(f"unknown request field '{unknown[0]}'")
    return body


def parse_header(body: dict[str, Any], response_key_required: bool = True) -> RequestHeader:
    """The id, timestamp and response key of a decoded request.

    Parameters
    ----------
    body : dict
        The request, as :func:`decode_request` returns it.
    response_key_required : bool
        False only in the benchmark-only plaintext mode.
    """
    request_id = body.get("id")
    if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
        raise _bad("id must be 32 lowercase hex characters (16 random bytes)")
    parameters = body.get("parameters")
    if not isinstance(parameters, dict):
        raise _bad("parameters must be an object with timestamp and response_key")
    extra = sorted(set(parameters) - set(REQUEST_PARAMETERS))
    if extra:
        raise _bad(f"unknown parameter '{extra[0]}'")
    timestamp = parameters.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp < 0:
        raise _bad("parameters.timestamp must be a non-negative integer (Unix seconds)")
    response_key = None
    if "response_key" in parameters or response_key_required:
        try:
            response_key = hpke.b64decode(
                parameters.get("response_key"), length=hpke.RESPONSE_KEY_LEN
            )
        except ValueError as err:
            raise _bad(f"parameters.response_key: {err}") from None
    explain = parameters.get("explain", False)
    if not isinstance(explain, bool):
        raise _bad("parameters.explain must be true or false")
    return RequestHeader(
        id=request_id, timestamp=timestamp, response_key=response_key, explain=explain
    )


def parse_rows(body: dict[str, Any], max_rows: int) -> list[dict[str, Any]]:
    """The rows of a decoded request: one mapping of input name to value per row.

    Parameters
    ----------
    body : dict
        The request, as :func:`decode_request` returns it.
    max_rows : int
        The most rows one request may carry (``too_many_rows`` beyond).

    Whether the names and values fit the model is the model's data kind to check.
    """
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("inputs must be a non-empty list of tensors")
    columns: dict[str, list[Any]] = {}
    for index, tensor in enumerate(inputs):
        name, values = _rows_of(tensor, index, max_rows)
        if name in columns:
            raise _bad(f"input '{name}' appears twice")
        columns[name] = values
    counts = {len(values) for values in columns.values()}
    if len(counts) != 1:
        raise _bad(f"every input must have the same number of rows, got {sorted(counts)}")
    count = counts.pop()
    if count == 0:
        raise _bad("the request has no rows")
    return [{name: values[i] for name, values in columns.items()} for i in range(count)]


# ------------------------------------------------------------------------ responses


def _finite(value: Any, row: int) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise OUT_OF_RANGE.error(
            f"row {row}: the model's output is not a finite number for these values "
            "(inputs far outside the range the model was trained on)",
            row=row,
        )
    return number


def build_response(
    model_name: str, model_version: int, request_id: str, predictions: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The response JSON: one output tensor per prediction field.

    A field whose value is a mapping becomes ``[n, k]`` with its keys (the same in every
    row) in ``parameters.labels``; one whose value is an array (the same shape in every
    row) becomes ``[n, d1, …]``.

    Parameters
    ----------
    model_name : str
        The model's name in the registry.
    model_version : int
        The registry version that computed the predictions.
    request_id : str
        The id of the request answered.
    predictions : sequence of mapping
        One prediction per row, as ``Predictor.predict_rows`` returns them.

    Raises :class:`ApiError` ``out_of_range`` if the model produced a non-finite number.
    """
    count = len(predictions)
    outputs: list[dict[str, Any]] = []
    for name in predictions[0]:
        first = _plain(predictions[0][name])
        if isinstance(first, str):
            data: list[Any] = [p[name] for p in predictions]
            outputs.append({"name": name, "datatype": "BYTES", "shape": [count], "data": data})
        elif isinstance(first, Mapping):
            labels = list(first)
            data = [
                _finite(p[name][label], row)
                for row, p in enumerate(predictions)
                for label in labels
            ]
            outputs.append(
                {
                    "name": name,
                    "datatype": "FP64",
                    "shape": [count, len(labels)],
                    "parameters": {"labels": labels},
                    "data": data,
                }
            )
        elif isinstance(first, list):
            # An array per row (an image's attribution map): [n, d1, …], row-major.
            arrays = [_flatten(p[name]) for p in predictions]
            data = [_finite(v, row) for row, (_, flat) in enumerate(arrays) for v in flat]
            shape = [count, *arrays[0][0]]
            outputs.append({"name": name, "datatype": "FP64", "shape": shape, "data": data})
        else:
            data = [_finite(p[name], row) for row, p in enumerate(predictions)]
            outputs.append({"name": name, "datatype": "FP64", "shape": [count], "data": data})
    return {
        "model_name": model_name,
        "model_version": str(model_version),
        "id": request_id,
        "outputs": outputs,
    }


def parse_response(body: Any) -> InferenceResponse:
    """The predictions of a response JSON; ``ValueError`` naming what does not fit.

    Parameters
    ----------
    body : Any
        The decoded JSON of an opened response.
    """
    if not isinstance(body, dict):
        raise ValueError("the response is not a JSON object")
    outputs = body.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        raise ValueError("the response has no outputs")
    predictions: list[dict[str, Any]] | None = None
    for tensor in outputs:
        name, shape, data = tensor.get("name"), tensor.get("shape"), tensor.get("data")
        if not isinstance(shape, list) or not shape or not isinstance(data, list):
            raise ValueError(f"output {name!r} has no shape or data")
        if len(shape) > MAX_DIMS:
            raise ValueError(f"output {name!r} has more than {MAX_DIMS} dimensions")
        count = shape[0]
        if predictions is None:
            predictions = [{} for _ in range(count)]
        if count != len(predictions) or len(data) != math.prod(shape):
            raise ValueError(f"output {name!r} does not match its shape {shape}")
        labels = (tensor.get("parameters") or {}).get("labels")
        width = math.prod(shape[1:])
        for row in range(count):
            values = data[row * width : (row + 1) * width]
            if len(shape) == 1:
                predictions[row][name] = data[row]
            elif labels is not None:
                predictions[row][name] = dict(zip(labels, values, strict=True))
            else:
                predictions[row][name] = _nest(values, shape[1:])
    return InferenceResponse(
        id=str(body.get("id")),
        model_name=str(body.get("model_name")),
        model_version=str(body.get("model_version")),
        predictions=predictions or [],
    )


# ------------------------------------------------ homomorphic encryption (section 11)

HE_CONTEXT_ID = re.compile(r"^[0-9a-f]{32}$")
# The link the client applies to a decrypted score, by the model's task.
HE_LINKS = {"binary": "sigmoid", "multiclass": "softmax", "regression": "identity"}
HE_SURVIVAL_LINK = "exp"
# A Cox hazard ratio is exp of the score clipped to this, as the plaintext path computes it.
HAZARD_CLIP = 50.0


# A frame's first 4 bytes: the length of its JSON header, big-endian (section 11).
FRAME_HEADER_LENGTH = struct.Struct(">I")


def pack_frame(header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    """A homomorphic message: header length, JSON header, then the binary parts in order.

    Parameters
    ----------
    header : dict
        The message's JSON object; it gives each part's length where the part belongs.
    blobs : sequence of bytes
        The parts (serialized context and ciphertexts), concatenated after the header.
    """
    text = dumps(header)
    return b"".join([FRAME_HEADER_LENGTH.pack(len(text)), text, *blobs])


def unpack_frame(frame: bytes) -> tuple[Any, memoryview]:
    """The JSON header of a frame and the bytes after it; ``ValueError`` otherwise.

    Parameters
    ----------
    frame : bytes
        A :func:`pack_frame` message.
    """
    size = FRAME_HEADER_LENGTH.size
    if len(frame) < size:
        raise ValueError(f"a frame starts with its {size}-byte header length")
    (length,) = FRAME_HEADER_LENGTH.unpack_from(frame)
    if length > len(frame) - size:
        raise ValueError(f"the header length {length} exceeds the frame")
    view = memoryview(frame)
    return loads_strict(bytes(view[size : size + length])), view[size + length :]


def _length(value: Any, where: str) -> int:
    """A header's part length; ``ValueError`` naming ``where`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where} must be a positive byte length")
    return value


def _lengths(value: Any, where: str) -> list[int]:
    """A header's list of part lengths; ``ValueError`` naming ``where`` otherwise."""
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of byte lengths")
    return [_length(n, where) for n in value]


def split_parts(rest: memoryview, lengths: Sequence[int], where: str) -> list[bytes]:
    """The parts of ``lengths`` bytes each that ``rest`` must hold, exactly.

    Parameters
    ----------
    rest : memoryview
        The bytes after a frame's header.
    lengths : sequence of int
        Each part's length, in order.
    where : str
        The header field the lengths come from, for the message.
    """
    if sum(lengths) != len(rest):
        raise ValueError(f"{where} add up to {sum(lengths)} bytes; {len(rest)} follow the header")
    parts, offset = [], 0
    for length in lengths:
        parts.append(bytes(rest[offset : offset + length]))
        offset += length
    return parts


@dataclass(frozen=True)
class HeRequest:
    """The homomorphic part of a request (``he``), parsed; its ciphertexts still opaque.

    Parameters
    ----------
    context_id : str
        The id of the client's public context (32 hex: SHA-256 prefix of its bytes).
    context : bytes or None
        The serialized public context, when the client sends it (first request, or after
        ``unknown_he_context``).
    rows : int
        How many patients the request holds.
    block : int
        Slots per patient: the least power of two greater than the number of columns.
    columns : tuple of str
        The encoded column names, in the order of a patient's block (the metadata's).
    data : tuple of bytes
        The serialized CKKS ciphertexts in order (``docs/PROTOCOL.md`` section 11).
    layout : str
        How they hold the patients: ``blocks`` or ``columns`` (``privacy.he.LAYOUTS``;
        the service checks the name).
    transforms : mapping of str to str
        The features the client put on their declared scale before encrypting, with the
        transform (:func:`he_transforms`); sent only when not empty. The service refuses a
        request whose transforms are not the model's: a client that ignored them would get
        wrong scores it could not tell from right ones.
    """

    context_id: str
    context: bytes | None = field(repr=False)
    rows: int
    block: int
    columns: tuple[str, ...]
    data: tuple[bytes, ...] = field(repr=False)
    layout: str
    transforms: Mapping[str, str] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        """The request's ``he`` object: the context's and ciphertexts' byte lengths."""
        body: dict[str, Any] = {
            "context_id": self.context_id,
            "rows": self.rows,
            "block": self.block,
            "layout": self.layout,
            "columns": list(self.columns),
            "data": [len(c) for c in self.data],
        }
        if self.context is not None:
            body["context"] = len(self.context)
        if self.transforms:
            body["transforms"] = dict(self.transforms)
        return body

    def parts(self) -> list[bytes]:
        """The binary parts after the header: the context if sent, then the ciphertexts."""
        return [*([self.context] if self.context is not None else []), *self.data]


@dataclass(frozen=True)
class HeScores:
    """The homomorphic part of a response: encrypted products and how to read them.

    Parameters
    ----------
    context_id : str
        The context the products are encrypted under.
    rows : int
        How many patients the request held.
    block : int
        Slots per patient; a patient's score is the sum of its block.
    link : str
        ``sigmoid``, ``softmax``, ``identity`` or ``exp`` (see :func:`he_predictions`).
    labels : tuple of str
        The classes (classification; empty otherwise).
    scores : tuple of tuple of bytes
        Per model output, one ciphertext per request ciphertext.
    """

    context_id: str
    rows: int
    block: int
    link: str
    labels: tuple[str, ...]
    scores: tuple[tuple[bytes, ...], ...] = field(repr=False)

    def header(self) -> dict[str, Any]:
        """The response's ``he`` object: per output, its ciphertexts' byte lengths."""
        return {
            "context_id": self.context_id,
            "rows": self.rows,
            "block": self.block,
            "link": self.link,
            "labels": list(self.labels),
            "scores": [[len(c) for c in output] for output in self.scores],
        }


def build_he_request(he: HeRequest, request_id: str, timestamp: int, response_key: bytes) -> bytes:
    """The frame of a homomorphic request (the plaintext of its HPKE envelope).

    Parameters
    ----------
    he : HeRequest
        The context and ciphertexts.
    request_id : str
        32 lowercase hex characters, new for every request.
    timestamp : int
        Now, in Unix seconds.
    response_key : bytes
        The 16-byte key the response is to be sealed with.
    """
    parameters = {"timestamp": timestamp, "response_key": hpke.b64encode(response_key)}
    header = {"id": request_id, "parameters": parameters, "he": he.header()}
    return pack_frame(header, he.parts())


def decode_he_request(plaintext: bytes) -> tuple[dict[str, Any], memoryview]:
    """The JSON header of a homomorphic request's frame and the bytes after it.

    Parameters
    ----------
    plaintext : bytes
        The opened request envelope.

    Raises :class:`ApiError` ``malformed_request`` if it is not a frame of an object.
    """
    try:
        body, rest = unpack_frame(plaintext)
    except ValueError as err:
        raise _bad(f"the request is not a homomorphic frame ({err})") from None
    return _request_object(body, "he"), rest


def parse_he_request(body: dict[str, Any], rest: memoryview, max_rows: int) -> HeRequest:
    """The ``he`` object of a decoded request and the parts it gives the lengths of.

    Parameters
    ----------
    body : dict
        The request's header (:func:`decode_he_request`).
    rest : memoryview
        The bytes after the header: the context (if ``he.context`` is given), then the
        ciphertexts.
    max_rows : int
        The most patients one request may carry (``too_many_rows`` beyond).

    Only the frame is checked here; that ``block`` fits ``columns``, ``layout`` is one,
    and ``data`` holds as many ciphertexts as ``rows`` need is checked against the
    model's columns and the CKKS parameters (``server.inference.linear``).
    """
    he = body.get("he")
    if not isinstance(he, dict):
        raise _bad("he must be an object with context_id, rows, block, layout, columns and data")
    known = {"context_id", "context", "rows", "block", "layout", "columns", "data", "transforms"}
    unknown = sorted(set(he) - known)
    if unknown:
        raise _bad(f"unknown he field '{unknown[0]}'")
    context_id = he.get("context_id")
    if not isinstance(context_id, str) or not HE_CONTEXT_ID.match(context_id):
        raise _bad("he.context_id must be 32 lowercase hex characters")
    rows, block = he.get("rows"), he.get("block")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise _bad("he.rows must be a positive integer")
    if rows > max_rows:
        raise TOO_MANY_ROWS.error(f"{rows} rows in one request; at most {max_rows} are allowed")
    if not isinstance(block, int) or isinstance(block, bool) or block < 2 or block & (block - 1):
        raise _bad("he.block must be a power of two, at least 2")
    columns, layout = he.get("columns"), he.get("layout")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise _bad("he.columns must be a list of column names")
    if not isinstance(layout, str):
        raise _bad("he.layout must be the name of a layout")
    transforms = he.get("transforms", {})
    if not isinstance(transforms, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in transforms.items()
    ):
        raise _bad("he.transforms must map feature names to transform names")
    try:
        data = _lengths(he.get("data"), "he.data")
        context = [_length(he["context"], "he.context")] if "context" in he else []
        if not data:
            raise ValueError("he.data must list at least one ciphertext")
        parts = split_parts(rest, [*context, *data], "he.context and he.data")
    except ValueError as err:
        raise _bad(str(err)) from None
    return HeRequest(
        context_id=context_id,
        context=parts[0] if context else None,
        rows=rows,
        block=block,
        columns=tuple(columns),
        data=tuple(parts[len(context) :]),
        layout=layout,
        transforms=transforms,
    )


def build_he_response(
    model_name: str, model_version: int, request_id: str, scores: HeScores
) -> bytes:
    """The frame of a homomorphic response (the plaintext of its sealed response).

    Parameters
    ----------
    model_name : str
        The model's name in the registry.
    model_version : int
        The registry version whose weights computed the scores.
    request_id : str
        The id of the request answered.
    scores : HeScores
        The encrypted scores.
    """
    header = {
        "model_name": model_name,
        "model_version": str(model_version),
        "id": request_id,
        "he": scores.header(),
    }
    return pack_frame(header, [c for output in scores.scores for c in output])


def parse_he_response(frame: bytes) -> tuple[InferenceResponse, HeScores]:
    """The header and encrypted scores of a homomorphic response; ``ValueError`` otherwise.

    Parameters
    ----------
    frame : bytes
        The opened response of status 200.
    """
    body, rest = unpack_frame(frame)
    he = body.get("he") if isinstance(body, dict) else None
    if not isinstance(he, dict):
        raise ValueError("the response has no he object")
    scores, labels = he.get("scores"), he.get("labels")
    rows, block = he.get("rows"), he.get("block")
    if not isinstance(scores, list) or not scores:
        raise ValueError("he.scores is not a list of ciphertext lengths, one list per output")
    lengths = [_lengths(output, "each list of he.scores") for output in scores]
    if not isinstance(labels, list) or not isinstance(rows, int) or not isinstance(block, int):
        raise ValueError("he.labels, he.rows or he.block is missing")
    link = he.get("link")
    if link not in (*HE_LINKS.values(), HE_SURVIVAL_LINK):
        raise ValueError(f"unknown link {link!r}")
    parts = iter(split_parts(rest, [n for output in lengths for n in output], "he.scores"))
    header = InferenceResponse(
        id=str(body.get("id")),
        model_name=str(body.get("model_name")),
        model_version=str(body.get("model_version")),
        predictions=[],
    )
    return header, HeScores(
        context_id=str(he.get("context_id")),
        rows=rows,
        block=block,
        link=link,
        labels=tuple(str(label) for label in labels),
        scores=tuple(tuple(next(parts) for _ in output) for output in lengths),
    )


def he_predictions(
    link: str, scores: Sequence[Sequence[float]], labels: Sequence[str]
) -> list[dict[str, Any]]:
    """The predictions of decrypted scores, as the plaintext route returns them.

    Parameters
    ----------
    link : str
        ``sigmoid`` (binary: ``label``, ``probability``), ``softmax`` (multiclass:
        ``label``, ``probabilities``), ``identity`` (regression: ``value``) or ``exp``
        (survival: ``risk_score``, ``hazard_ratio``).
    scores : sequence of sequence of float
        ``[k][n]``: per model output, one score per patient.
    labels : sequence of str
        The classes (classification).
    """
    rows = list(zip(*scores, strict=True))
    if link == "sigmoid":
        probabilities = [_sigmoid(row[0]) for row in rows]
        return [{"label": labels[int(p >= 0.5)], "probability": p} for p in probabilities]
    if link == "softmax":
        out = []
        for row in rows:
            top = max(row)
            weights = [math.exp(v - top) for v in row]
            total = sum(weights)
            probs = {label: w / total for label, w in zip(labels, weights, strict=True)}
            out.append({"label": labels[row.index(top)], "probabilities": probs})
        return out
    if link == "identity":
        return [{"value": row[0]} for row in rows]
    return [
        {
            "risk_score": row[0],
            "hazard_ratio": math.exp(min(max(row[0], -HAZARD_CLIP), HAZARD_CLIP)),
        }
        for row in rows
    ]


def _sigmoid(x: float) -> float:
    # Either branch keeps exp's argument non-positive, so it never overflows.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True)
class HeOffer:
    """What the model metadata says of homomorphic inference (``parameters.he``).

    Parameters
    ----------
    offered : bool
        Whether the model is linear and the route answers for it.
    reason : str
        Why not, if not offered ("" otherwise).
    columns : tuple of str
        The encoded columns, in order: a numeric or binary feature's name, or
        ``name=category`` per category of a categorical feature (one-hot, raw values:
        the service folds standardization into the weights).
    link : str
        The link the client applies ("" if not offered).
    max_rows : int
        The most patients one request may carry.
    parameters : dict
        The CKKS parameters (``scheme``, ``poly_modulus_degree``, ``coeff_mod_bit_sizes``,
        ``scale_bits``, ``security_bits``) and the context cache's ``context_ttl`` and
        ``max_context_bytes``.
    """

    offered: bool
    reason: str
    columns: tuple[str, ...]
    link: str
    max_rows: int
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``parameters.he`` object of the metadata."""
        return {
            "offered": self.offered,
            "reason": self.reason,
            "columns": list(self.columns),
            "link": self.link,
            "max_rows": self.max_rows,
            **self.parameters,
        }


def he_columns(features: Mapping[str, Any]) -> list[str]:
    """The encoded column names of a schema's features (``parameters.schema``), in order.

    Parameters
    ----------
    features : mapping
        Feature name to its schema entry (``type``, ``categories``, ``min``, ``max``).
    """
    names: list[str] = []
    for name, spec in features.items():
        if spec.get("type") == "categorical":
            names.extend(f"{name}={c}" for c in spec.get("categories", ()))
        else:
            names.append(name)
    return names


def he_transforms(features: Mapping[str, Any]) -> dict[str, str]:
    """The declared transforms of a schema's features (``parameters.schema``), by feature.

    Parameters
    ----------
    features : mapping
        Feature name to its schema entry.
    """
    return {name: spec["transform"] for name, spec in features.items() if spec.get("transform")}


# The error code of a value the rule refuses (every other refusal is invalid_input).
_HE_REFUSALS = {value_rules.OUT_OF_RANGE: OUT_OF_RANGE, value_rules.NOT_FINITE: NOT_FINITE}


def _he_value(row: int, name: str, spec: Mapping[str, Any], value: Any) -> list[float]:
    """One feature's encoded values for one row (one-hot for categories), checked.

    Read with the rule training reads a cell with (:mod:`models.data.values`).
    """
    rule = value_rules.ValueRule.of_entry(spec)
    value = _plain(value)
    if isinstance(value, float) and math.isnan(value):  # JSON cannot carry it either
        raise _refused(NOT_FINITE, name, row, "a finite number")
    if value_rules.MissingValues().is_missing(value, rule.categories):
        raise _refused(INVALID_INPUT, name, row, "a value (it is missing)")
    try:
        read = rule.read(value)
    except value_rules.ValueRefused as refused:
        error = _HE_REFUSALS.get(refused.kind, INVALID_INPUT)
        raise _refused(error, name, row, refused.expected) from None
    if rule.type == "categorical":
        return [1.0 if read == c else 0.0 for c in rule.categories]
    return [_encoded(spec, _element(name, "FP64", row, read))]


def _encoded(spec: Mapping[str, Any], value: float) -> float:
    """A checked numeric value after the feature's declared transform (``transform``)."""
    return transformed(spec.get("transform"), value, spec.get("max"))


def encode_he_rows(
    features: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> list[list[float]]:
    """Each row's encoded columns (:func:`he_columns` order), checked against the schema.

    The client's side of homomorphic inference: the service sees only ciphertexts and
    cannot check a value, so every check of the plaintext route that needs no private
    statistic happens here (types, categories, declared ranges, float32). A numeric
    feature's declared ``transform`` (``log``) is applied here too, as the plaintext
    route's encoder applies it: the service folds only the (linear) standardization
    into its weights.

    Parameters
    ----------
    features : mapping
        The metadata's ``parameters.schema``: feature name to its entry.
    rows : sequence of mapping
        One mapping of feature name to value per patient.

    Raises :class:`ApiError` (``invalid_input`` or ``out_of_range``) naming row and feature.
    """
    if not rows:
        raise _bad("no rows to send")
    # A plain float or int of a numeric feature within its bounds is taken as is (the
    # common case, ~4x faster); anything else goes through _he_value's checks.
    bounds = {
        name: (
            max(-MODEL_DTYPE_MAX, spec.get("min") if spec.get("min") is not None else -math.inf),
            min(MODEL_DTYPE_MAX, spec.get("max") if spec.get("max") is not None else math.inf),
        )
        for name, spec in features.items()
        if spec.get("type") not in ("categorical", "binary")
    }
    known = set(features)
    encoded_rows: list[list[float]] = []
    for row, values in enumerate(rows):
        if not known.issuperset(values):
            unknown = sorted(set(values) - known)[0]
            raise INVALID_INPUT.error(
                f"row {row}, feature '{unknown}': not in the model's schema",
                row=row,
                feature=unknown,
            )
        encoded: list[float] = []
        for name, spec in features.items():
            value = values.get(name)
            if value is None:
                raise _refused(INVALID_INPUT, name, row, "a value (it is missing)")
            fast = bounds.get(name)
            if fast and type(value) in (float, int) and fast[0] <= value <= fast[1]:
                encoded.append(_encoded(spec, float(value)))
            else:
                encoded.extend(_he_value(row, name, spec, value))
        encoded_rows.append(encoded)
    return encoded_rows
