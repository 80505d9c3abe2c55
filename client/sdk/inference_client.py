"""The SDK clinical applications use to call the encrypted inference service.

    from client.sdk import InferenceClient

    with InferenceClient("https://inference.example:8443", token, model="breast_cancer",
                         ca_cert="ca.pem") as client:
        predictions = client.predict([{"mean radius": 14.2, ...}, ...])

For each call the client fetches (and caches) the service's HPKE key configuration,
checks it, seals the request to the current key with a fresh response key inside,
sends it with the bearer token over TLS, opens the sealed response with that response
key, checks that it answers this request, and returns the predictions.

With ``mode="he"`` (``pip install fedcare-sdk[he]``, linear models only) the features are
not sent at all: the client one-hot encodes them from the schema the metadata publishes,
packs each patient's encoded columns into a block of a CKKS ciphertext (or, for a large
batch, each column of 2048 patients into one) under a key that never leaves this object
(:mod:`privacy.he`), and sends them as raw parts of a frame inside the same HPKE
envelope; the service computes the linear score on them; the client decrypts what comes
back, sums each patient's block into its score and applies the link (sigmoid, softmax,
identity or exp), so the host never sees a feature value or a prediction. Every failure is
an :class:`InferenceError` subclass saying what went wrong. ``docs/PROTOCOL.md`` is the
wire format this implements.
"""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from privacy import hpke
from protocol import inference as wire


class InferenceError(Exception):
    """A prediction could not be made; ``status`` and ``code`` say why (0/"" if local).

    Parameters
    ----------
    message : str
        What went wrong.
    status : int
        The HTTP status of the service's refusal (0 if refused before sending).
    code : str
        The protocol's error code (``docs/PROTOCOL.md`` section 8; "" if none).
    **details
        The refusal's other fields (``row``, ``feature``, ``retry_after`` …).
    """

    def __init__(self, message: str, status: int = 0, code: str = "", **details: Any):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details


class AuthenticationError(InferenceError):
    """401: the token is missing, malformed or revoked."""


class PermissionDenied(InferenceError):
    """403: the token's scope does not include the model."""


class ModelNotFound(InferenceError):
    """404: the service serves no model of that name."""


class RateLimited(InferenceError):
    """429: too many requests; ``retry_after`` is the seconds to wait."""

    @property
    def retry_after(self) -> float:
        """Seconds to wait before the next request."""
        return float(self.details.get("retry_after", 1))


class InvalidInput(InferenceError):
    """422, or refused before sending: a row does not fit the model (``row``, ``feature``)."""

    @property
    def row(self) -> int | None:
        """The 0-based index of the row at fault, if one is."""
        return self.details.get("row")

    @property
    def feature(self) -> str | None:
        """The feature at fault, if one is."""
        return self.details.get("feature")


class RequestRejected(InferenceError):
    """Another 4xx: malformed envelope, stale or replayed request, body too large, etc."""


class ServiceError(InferenceError):
    """5xx: the service failed."""


class ProtocolViolation(InferenceError):
    """The service's answer or key configuration does not follow the protocol."""


class ConnectionFailed(InferenceError):
    """The service could not be reached (DNS, TCP, TLS)."""


_BY_STATUS: dict[int, type[InferenceError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: ModelNotFound,
    422: InvalidInput,
    429: RateLimited,
}


def _error_for(status: int, body: Any) -> InferenceError:
    """The typed error of a refusal's JSON body."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message, code = body["error"], str(body.get("code", ""))
        details = {k: v for k, v in body.items() if k not in ("error", "code")}
    else:
        message, code, details = f"HTTP {status} without a protocol error body", "", {}
    kind = _BY_STATUS.get(status) or (ServiceError if status >= 500 else RequestRejected)
    return kind(f"{message} (HTTP {status}, {code or 'no code'})", status, code, **details)


@dataclass(frozen=True)
class ServiceKey:
    """The service's current HPKE public key, as the key configuration published it.

    Parameters
    ----------
    key_id : bytes
        The key's 8-byte id, checked against ``public_key``.
    public_key : bytes
        The raw 32-byte X25519 public key requests are sealed to.
    fetched_at : float
        When it was fetched (``time.monotonic()``), for the cache.
    """

    key_id: bytes
    public_key: bytes
    fetched_at: float


@dataclass(frozen=True)
class InferenceResult:
    """The predictions of one request and the model version that made them.

    Parameters
    ----------
    model_name : str
        The model that answered.
    model_version : str
        The registry version that computed the predictions.
    predictions : list of dict
        One prediction per row sent.
    """

    model_name: str
    model_version: str
    predictions: list[dict[str, Any]]


class InferenceClient:
    """A connection to one model of an inference service.

    Parameters
    ----------
    url : str
        The service's base URL, e.g. ``https://inference.example:8443``.
    token : str
        The application's bearer token (``fedcare tokens create``).
    model : str
        The model's name in the registry.
    ca_cert : path, optional
        The CA that signed the service's TLS certificate (default: the system's).
    client_cert, client_key : path, optional
        The application's certificate and key, when the service requires mTLS.
    timeout : float
        Seconds to wait for the service.
    key_cache_seconds : float
        How long a fetched key configuration is used before it is fetched again (by
        default the service's ``Cache-Control`` max-age).
    plaintext_for_benchmark : bool
        BENCHMARK ONLY: send unencrypted JSON (the service must run with
        ``--benchmark-plaintext``) to measure what payload encryption costs.
    mode : str
        ``"plain"``: the features travel inside the HPKE envelope. ``"he"``: they travel
        as CKKS ciphertexts the service cannot decrypt (linear models; needs the ``he``
        extra, TenSEAL).
    """

    def __init__(
        self,
        url: str,
        token: str,
        model: str,
        *,
        ca_cert: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        timeout: float = 30.0,
        key_cache_seconds: float = wire.KEYS_MAX_AGE,
        plaintext_for_benchmark: bool = False,
        mode: str = "plain",
    ):
        if mode not in ("plain", "he"):
            raise ValueError(f"mode must be 'plain' or 'he', not {mode!r}")
        if mode == "he" and plaintext_for_benchmark:
            raise ValueError("mode='he' seals every request; it has no plaintext mode")
        self.url = url.rstrip("/")
        self.model = model
        self.mode = mode
        self.key_cache_seconds = key_cache_seconds
        self.plaintext_for_benchmark = plaintext_for_benchmark
        verify: ssl.SSLContext | bool = True
        if ca_cert is not None or client_cert is not None:
            verify = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
            if client_cert is not None:
                verify.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        self._http = httpx.Client(
            verify=verify, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )
        self._key: ServiceKey | None = None
        self._metadata: dict[str, Any] | None = None
        self._he: Any = None  # privacy.he.SecretContext, made on the first HE request
        self._context_sent = False

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    # ------------------------------------------------------------------ HTTP

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, self.url + path, **kwargs)
        except httpx.HTTPError as err:
            raise ConnectionFailed(f"{self.url}: {type(err).__name__}: {err}") from None

    def _json(self, response: httpx.Response) -> Any:
        try:
            return wire.loads_strict(response.content)
        except ValueError:
            raise ProtocolViolation(f"HTTP {response.status_code}: the body is not JSON") from None

    def key(self, refresh: bool = False) -> ServiceKey:
        """The service's current key, from the cache unless stale or ``refresh``.

        Parameters
        ----------
        refresh : bool
            Fetch the key configuration again even if the cached one is fresh.

        Raises :class:`ProtocolViolation` if the configuration does not check out.
        """
        key = self._key
        if refresh or key is None or time.monotonic() - key.fetched_at > self.key_cache_seconds:
            response = self._send("GET", wire.KEYS_PATH)
            if response.status_code != 200:
                raise _error_for(response.status_code, self._json(response))
            try:
                current = wire.KeyConfiguration.from_json(self._json(response)).current
            except ValueError as err:
                raise ProtocolViolation(str(err)) from None
            key = ServiceKey(current.key_id, current.public_key, fetched_at=time.monotonic())
            self._key = key
        return key

    def metadata(self, refresh: bool = True) -> dict[str, Any]:
        """The model's metadata: inputs by feature name, task, classes, version, HE offer.

        Parameters
        ----------
        refresh : bool
            Fetch it again even if this client fetched it before.
        """
        if refresh or self._metadata is None:
            response = self._send("GET", wire.MODEL_PATH.format(model=self.model))
            body = self._json(response)
            if response.status_code != 200:
                raise _error_for(response.status_code, body)
            self._metadata = body
        return self._metadata

    # ---------------------------------------------------------------- predict

    def predict(
        self, rows: Sequence[Mapping[str, Any]], explain: bool = False
    ) -> list[dict[str, Any]]:
        """One prediction per row.

        Parameters
        ----------
        rows : sequence of mapping
            Per row, a mapping of feature name to value (or to an array, e.g. an image).
        explain : bool
            Each prediction also holds ``attributions`` (per feature or term, or a pixel
            map), ``explained_output`` and ``baseline_output``.
        """
        return self.infer(rows, explain=explain).predictions

    def infer(self, rows: Sequence[Mapping[str, Any]], explain: bool = False) -> InferenceResult:
        """Predictions with the model version that made them.

        Parameters
        ----------
        rows : sequence of mapping
            As for :meth:`predict`.
        explain : bool
            As for :meth:`predict`.

        If the service no longer knows the cached key (rotated and retired), the key
        configuration is fetched again and the request, sealed anew, is sent once more.
        """
        if self.mode == "he":
            if explain:
                raise InvalidInput("mode='he' computes no attributions")
            return self._he_infer(rows)
        try:
            return self._infer_once(rows, refresh_key=False, explain=explain)
        except RequestRejected as err:
            if err.code != wire.UNKNOWN_KEY_ID.code or self.plaintext_for_benchmark:
                raise
        return self._infer_once(rows, refresh_key=True, explain=explain)

    def _infer_once(
        self, rows: Sequence[Mapping[str, Any]], refresh_key: bool, explain: bool = False
    ) -> InferenceResult:
        request_id = secrets.token_hex(16)
        response_key = None if self.plaintext_for_benchmark else hpke.new_response_key()
        try:
            request = wire.build_request(
                rows, request_id, int(time.time()), response_key, explain=explain
            )
            body = wire.dumps(request)
        except ValueError as err:
            raise InvalidInput(str(err)) from None
        if response_key is None:
            content_type, payload = wire.JSON_MEDIA_TYPE, body
        else:
            key = self.key(refresh=refresh_key)
            content_type = hpke.REQUEST_MEDIA_TYPE
            payload = hpke.seal_request(key.public_key, body)
        answer = self._post(wire.INFER_PATH, content_type, payload, response_key)
        try:
            parsed = wire.parse_response(answer)
        except ValueError as err:
            raise ProtocolViolation(f"the response does not parse: {err}") from None
        if parsed.id != request_id or parsed.model_name != self.model:
            raise ProtocolViolation("the response answers another request or model")
        if len(parsed.predictions) != len(rows):
            raise ProtocolViolation(
                f"{len(parsed.predictions)} predictions for {len(rows)} rows in the response"
            )
        return InferenceResult(parsed.model_name, parsed.model_version, parsed.predictions)

    def _post(
        self,
        path: str,
        content_type: str,
        payload: bytes,
        response_key: bytes | None,
        frame: bool = False,
    ) -> Any:
        """POST a request to the model's ``path``; the opened JSON of a 200, else raise.

        With ``frame``, a 200's opened bytes as they are (a homomorphic response frame).
        """
        response = self._send(
            "POST",
            path.format(model=self.model),
            content=payload,
            headers={"Content-Type": content_type},
        )
        if frame and response.status_code == 200 and response_key is not None:
            return self._unseal(response, response_key)
        answer = self._open(response, response_key)
        if response.status_code != 200:
            raise _error_for(response.status_code, answer)
        return answer

    # ------------------------------------------------------------------ HE

    def _he_infer(self, rows: Sequence[Mapping[str, Any]]) -> InferenceResult:
        """Predictions of a linear model computed on CKKS ciphertexts, in batches."""
        try:
            from privacy import he
        except ImportError:
            raise InferenceError("mode='he' needs TenSEAL: pip install 'fedcare-sdk[he]'") from None
        parameters = self.metadata(refresh=False)["parameters"]
        offer = parameters.get("he") or {}
        if not offer.get("offered"):
            raise RequestRejected(
                f"the service offers no homomorphic inference for '{self.model}': "
                f"{offer.get('reason', 'no offer in its metadata')}",
                code=wire.HE_NOT_SUPPORTED.code,
            )
        try:
            encoded = wire.encode_he_rows(parameters["schema"], rows)
        except wire.ApiError as err:
            raise InvalidInput(err.message, 0, err.code, **err.details) from None
        if self._he is None:
            self._he = he.SecretContext()
        transforms = wire.he_transforms(parameters["schema"])
        batch, names = int(offer["max_rows"]), tuple(offer["columns"])
        block = he.block_width(len(names))
        predictions: list[dict[str, Any]] = []
        result = InferenceResult(self.model, "", predictions)
        for start in range(0, len(rows), batch):
            chunk = encoded[start : start + batch]
            layout = he.choose_layout(len(chunk), len(names))
            result = self._he_once(chunk, names, block, layout, transforms)
            predictions.extend(result.predictions)
        return InferenceResult(result.model_name, result.model_version, predictions)

    def _he_once(
        self,
        encoded: list[list[float]],
        names: tuple[str, ...],
        block: int,
        layout: str,
        transforms: dict[str, str],
    ) -> InferenceResult:
        """One homomorphic request; its context is resent once if the service lost it."""
        secret, count = self._he, len(encoded)
        data = tuple(secret.encrypt_rows(encoded, layout))
        for attempt in range(2):
            request = wire.HeRequest(
                context_id=secret.context_id,
                context=None if self._context_sent else secret.public_bytes(),
                rows=count,
                block=block,
                columns=names,
                data=data,
                layout=layout,
                transforms=transforms,
            )
            request_id, response_key = secrets.token_hex(16), hpke.new_response_key()
            body = wire.build_he_request(request, request_id, int(time.time()), response_key)
            key = self.key(refresh=attempt > 0)
            try:
                answer = self._post(
                    wire.HE_INFER_PATH,
                    hpke.REQUEST_MEDIA_TYPE,
                    hpke.seal_request(key.public_key, body),
                    response_key,
                    frame=True,
                )
            except RequestRejected as err:
                if attempt or err.code not in (
                    wire.UNKNOWN_HE_CONTEXT.code,
                    wire.UNKNOWN_KEY_ID.code,
                ):
                    raise
                self._context_sent = False
                continue
            self._context_sent = True
            return self._he_result(answer, request_id, request)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _he_result(
        self, answer: bytes, request_id: str, request: wire.HeRequest
    ) -> InferenceResult:
        """Decrypt a homomorphic response's scores (summing blocks) and apply the link."""
        rows, block = request.rows, request.block
        try:  # privacy.he.HeError is a ValueError
            header, scores = wire.parse_he_response(answer)
            if scores.rows != rows or scores.block != block:
                raise ValueError("it holds another number of patients or another block")
            values = [
                self._he.decrypt_scores(output, rows, block, request.layout)
                for output in scores.scores
            ]
        except ValueError as err:
            raise ProtocolViolation(f"the homomorphic response does not parse: {err}") from None
        if header.id != request_id or header.model_name != self.model:
            raise ProtocolViolation("the response answers another request or model")
        predictions = wire.he_predictions(scores.link, values, scores.labels)
        return InferenceResult(header.model_name, header.model_version, predictions)

    def _unseal(self, response: httpx.Response, response_key: bytes) -> bytes:
        """The opened bytes of a sealed response; ``ProtocolViolation`` if it is not one."""
        media = response.headers.get("content-type", "").split(";")[0].strip()
        if media != hpke.RESPONSE_MEDIA_TYPE:
            raise ProtocolViolation(f"a successful response must be sealed, got '{media}'")
        try:
            return hpke.open_response(response_key, response.content)
        except hpke.EnvelopeError as err:
            raise ProtocolViolation(f"the sealed response does not open: {err}") from None

    def _open(self, response: httpx.Response, response_key: bytes | None) -> Any:
        """The JSON of a response: opened if sealed, as is if plain."""
        media = response.headers.get("content-type", "").split(";")[0].strip()
        if response_key is not None and (
            media == hpke.RESPONSE_MEDIA_TYPE or response.status_code == 200
        ):
            try:
                return wire.loads_strict(self._unseal(response, response_key))
            except ValueError:
                raise ProtocolViolation("the sealed response holds no JSON") from None
        return self._json(response)
