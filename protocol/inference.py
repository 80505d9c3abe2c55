"""The JSON inside the envelopes: Open Inference Protocol (KServe v2) requests and responses.

Shared by the service (parsing requests, building responses) and the SDK (the reverse),
so both sides agree by construction. ``docs/PROTOCOL.md`` section 6 is the specification.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privacy import hpke

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT_TYPES = ("FP16", "FP32", "FP64")
INT_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
DATATYPES = ("BOOL", "BYTES", *FLOAT_TYPES, *INT_TYPES)
# Request parameters the service understands; anything else is refused by name.
REQUEST_PARAMETERS = ("timestamp", "response_key", "explain")


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
    return ApiError(400, "malformed_request", message)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def loads_strict(data: bytes) -> Any:
    """Parse JSON as RFC 8259 has it: no ``NaN``/``Infinity``; ``ValueError`` otherwise."""
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def dumps(value: Any) -> bytes:
    """Compact JSON as both sides send it (non-finite numbers are refused)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


# ------------------------------------------------------------------ requests (SDK)


def _plain(value: Any) -> Any:
    """A numpy scalar (from pandas) as the Python value it holds."""
    return value.item() if isinstance(value, np.generic) else value


def _column(feature: str, values: list[Any]) -> tuple[str, list[int], list[Any]]:
    """The datatype, shape and flat (row-major) values of one feature's column.

    A value that is an array (an image, a series) makes the tensor ``[n, d1, …]``; every
    row's array must then have the same shape.
    """
    if values and all(isinstance(v, list | tuple | np.ndarray) for v in values):
        arrays = []
        for row, value in enumerate(values):
            try:
                array = np.asarray(value, dtype=object)
            except ValueError:
                raise ValueError(f"row {row}, feature '{feature}': a ragged array") from None
            if array.ndim == 0 or any(isinstance(v, list | tuple) for v in array.flat):
                raise ValueError(f"row {row}, feature '{feature}': a ragged array")
            arrays.append(array)
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"feature '{feature}': the rows' arrays differ in shape")
        flat = [_plain(v) for a in arrays for v in a.reshape(-1).tolist()]
        datatype, _, data = _column(feature, flat)
        return datatype, [len(values), *arrays[0].shape], data
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
    """The request JSON for ``rows`` (mappings of feature name to a scalar value, or to an
    array of the same shape in every row, e.g. an image).

    ``explain`` asks the service for attributions. Raises ``ValueError`` naming the row
    and feature of a value that cannot be sent (missing, not finite, mixed types). Whether
    the features fit the model is the service's to say.
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


def _refused(code: str, name: str, row: int, expected: str) -> ApiError:
    message = f"row {row}, feature '{name}': expected {expected}"
    return ApiError(422, code, message, row=row, feature=name)


def _element(name: str, datatype: str, row: int, value: Any) -> Any:
    """One tensor element checked against its declared datatype."""
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise _refused("wrong_type", name, row, "a string (datatype BYTES)")
        return value
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise _refused("wrong_type", name, row, "true or false (datatype BOOL)")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refused("wrong_type", name, row, f"a number (datatype {datatype})")
    if datatype in INT_TYPES:
        if not isinstance(value, int) or not INT64_MIN <= value <= INT64_MAX:
            raise _refused("wrong_type", name, row, f"a 64-bit integer (datatype {datatype})")
        return value
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _refused("not_finite", name, row, "a finite number")
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
        raise ApiError(
            422, "too_many_rows", f"{count} rows in one request; at most {max_rows} are allowed"
        )
    width = math.prod(shape[1:])
    if len(data) != count * width:
        raise _bad(f"input '{name}': shape {shape} needs {count * width} values, got {len(data)}")
    values = [_element(name, datatype, i // max(width, 1), v) for i, v in enumerate(data)]
    if len(shape) == 1:
        return name, values
    # An array per row (images, series): nest the flat row-major values back.
    nested = np.asarray(values, dtype=object).reshape(shape).tolist()
    return name, nested


def decode_request(plaintext: bytes) -> dict[str, Any]:
    """The request's JSON object (:class:`ApiError` ``malformed_request`` otherwise)."""
    try:
        body = loads_strict(plaintext)
    except ValueError as err:
        raise _bad(f"the request is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise _bad("the request must be a JSON object")
    unknown = sorted(set(body) - {"id", "parameters", "inputs"})
    if unknown:
        raise _bad(f"unknown request field '{unknown[0]}'")
    return body


def parse_header(body: dict[str, Any], response_key_required: bool = True) -> RequestHeader:
    """The id, timestamp and response key of a decoded request.

    ``response_key_required`` is False only in the benchmark-only plaintext mode.
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

    ``max_rows`` is the most rows one request may carry (``too_many_rows`` beyond).
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
        raise ApiError(
            422,
            "out_of_range",
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

    Raises :class:`ApiError` ``out_of_range`` if the model produced a non-finite number.
    """
    count = len(predictions)
    outputs = []
    for name in predictions[0]:
        first = predictions[0][name]
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
        elif isinstance(first, list | np.ndarray):
            # An array per row (an image's attribution map): [n, d1, …], row-major.
            arrays = [np.asarray(p[name], dtype=float) for p in predictions]
            data = [_finite(v, row) for row, a in enumerate(arrays) for v in a.reshape(-1)]
            shape = [count, *arrays[0].shape]
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
    """The predictions of a response JSON; ``ValueError`` naming what does not fit."""
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
        count = shape[0]
        if predictions is None:
            predictions = [{} for _ in range(count)]
        if count != len(predictions) or len(data) != math.prod(shape):
            raise ValueError(f"output {name!r} does not match its shape {shape}")
        labels = (tensor.get("parameters") or {}).get("labels")
        width = math.prod(shape[1:])
        for row in range(count):
            if len(shape) == 1:
                predictions[row][name] = data[row]
            elif labels is not None:
                values = data[row * width : (row + 1) * width]
                predictions[row][name] = dict(zip(labels, values, strict=True))
            elif len(shape) == 2:
                predictions[row][name] = data[row * width : (row + 1) * width]
            else:
                values = data[row * width : (row + 1) * width]
                predictions[row][name] = np.asarray(values).reshape(shape[1:]).tolist()
    return InferenceResponse(
        id=str(body.get("id")),
        model_name=str(body.get("model_name")),
        model_version=str(body.get("model_version")),
        predictions=predictions or [],
    )
