"""What the service does with a request, apart from HTTP: who asks, open, check, predict, seal.

:class:`InferenceService` holds the model store, the keyring, the token store, the rate
limiter, the replay guard and the audit log, and answers one request at a time through
:meth:`InferenceService.authorize` (token, scope, model, rate) and
:meth:`InferenceService.answer` (envelope to sealed reply). ``server.inference.app`` wires
these to routes.

Plaintext exists only inside :meth:`InferenceService.answer`, in local variables; it is
never logged, stored or put in an exception message.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from models.data.kinds.base import RowError

# Imported with the service, not at the first request asking for attributions: importing
# Captum (~0.4 s of bytecode under the import lock) in a worker thread stalls the event
# loop for as long, health probes included.
from models.explain import explain_rows
from privacy import hpke
from privacy.signing import load_storage_key, load_verify_key
from privacy.tokens import RateLimiter, TokenRecord, TokenStore
from protocol import inference as wire
from protocol.inference import ApiError
from server.inference.audit import AuditLog
from server.inference.config import ServiceConfig
from server.inference.keyring import Keyring
from server.inference.linear import ContextCache, LinearMap, he_scores, linear_map
from server.inference.model_store import ModelStore, ServedModel
from server.inference.ranges import check_ranges
from server.inference.replay import ReplayGuard

log = logging.getLogger("fedcare.inference")


@dataclass(frozen=True)
class Caller:
    """An authorized request's token and the model it may use.

    Parameters
    ----------
    token : TokenRecord
        The bearer token's record.
    model : ServedModel
        The model the request names, which the token's scope includes.
    """

    token: TokenRecord
    model: ServedModel


@dataclass(frozen=True)
class Reply:
    """What goes back: HTTP status, media type, body, and the row count for the audit.

    Parameters
    ----------
    status : int
        The HTTP status.
    media_type : str
        The body's ``Content-Type``.
    body : bytes
        A sealed response envelope, or plain JSON.
    rows : int
        How many rows the request carried (0 if it was refused before they were read).
    code : str
        ``ok`` or the protocol's error code.
    """

    status: int
    media_type: str
    body: bytes
    rows: int
    code: str


class InferenceService:
    """The service's state and request logic.

    Parameters
    ----------
    config : ServiceConfig
        Paths and limits.
    """

    def __init__(self, config: ServiceConfig):
        self.config = config
        storage_key = load_storage_key(config.storage_key) if config.storage_key else None
        self.models = ModelStore(
            config.registry,
            load_verify_key(config.verify_key),
            storage_key=storage_key,
            pins=config.pins,
            poll_interval=config.poll_interval,
        )
        self.keyring = Keyring(config.keyring, reload_interval=config.poll_interval)
        self.tokens = TokenStore(config.tokens, reload_interval=config.poll_interval)
        self.rate_limiter = RateLimiter(config.rate_per_second, config.burst)
        # Explanations cost ~steps forward and backward passes per row: their own budget.
        self.explain_limiter = RateLimiter(config.explain_rate_per_second, config.explain_burst)
        self.contexts = ContextCache(config.he_context_ttl, config.he_max_contexts)
        self._linear: dict[tuple[str, int], LinearMap] = {}
        self.replay = ReplayGuard(window=config.replay_window)
        self.audit = AuditLog(config.audit_log)

    def start(self) -> None:
        """Load the served models and start watching the registry."""
        self.models.start()

    def stop(self) -> None:
        """Stop watching the registry and close the audit log."""
        self.models.stop()
        self.audit.close()

    # ------------------------------------------------------------------ access

    def authenticate(self, authorization: str | None) -> TokenRecord:
        """The token of an ``Authorization: Bearer …`` header, or 401.

        Parameters
        ----------
        authorization : str or None
            The request's ``Authorization`` header.
        """
        if not authorization:
            raise wire.UNAUTHORIZED.error("missing Authorization: Bearer <token> header")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise wire.UNAUTHORIZED.error("the Authorization header must be 'Bearer <token>'")
        record = self.tokens.authenticate(token.strip())
        if record is None:
            raise wire.UNAUTHORIZED.error("unknown, malformed or revoked bearer token")
        return record

    def authorize(self, authorization: str | None, model_name: str) -> Caller:
        """Token (401), its scope (403), the model (404) and the token's rate (429).

        Parameters
        ----------
        authorization : str or None
            The request's ``Authorization`` header.
        model_name : str
            The model the request's path names.
        """
        token = self.authenticate(authorization)
        if not token.allows(model_name):
            raise wire.FORBIDDEN.error(f"this token's scope does not include '{model_name}'")
        model = self.models.get(model_name)
        if model is None:
            raise wire.UNKNOWN_MODEL.error(f"no model named '{model_name}' is served")
        wait = self.rate_limiter.acquire(token.id, token.rate_per_second, token.burst)
        if wait is not None:
            retry = max(1, math.ceil(wait))
            raise wire.RATE_LIMITED.error(
                f"rate limit reached; retry in {retry} s", retry_after=retry
            )
        return Caller(token=token, model=model)

    def check_content_type(self, content_type: str | None, homomorphic: bool = False) -> bool:
        """Whether the body is sealed (True) or benchmark plaintext (False); else 415.

        Parameters
        ----------
        content_type : str or None
            The request's ``Content-Type`` header.
        homomorphic : bool
            The request is for the homomorphic route, which has no plaintext mode.
        """
        media = (content_type or "").split(";")[0].strip().lower()
        if media == hpke.REQUEST_MEDIA_TYPE:
            return True
        if media == wire.JSON_MEDIA_TYPE and self.config.plaintext_payloads and not homomorphic:
            return False
        raise wire.UNSUPPORTED_MEDIA_TYPE.error(
            f"Content-Type must be {hpke.REQUEST_MEDIA_TYPE}, got '{media or 'none'}'"
        )

    # ------------------------------------------------------------------ answer

    def _open(self, envelope: bytes) -> bytes:
        try:
            key_id = hpke.request_key_id(envelope)
        except hpke.MalformedEnvelope as err:
            raise wire.MALFORMED_ENVELOPE.error(str(err)) from None
        keypair = self.keyring.find(key_id)
        if keypair is None:
            raise wire.UNKNOWN_KEY_ID.error(
                f"key id {key_id.hex()} is not a key of this service (retired or never "
                "published); fetch the key configuration again"
            )
        try:
            return hpke.open_request(envelope, keypair)
        except hpke.EnvelopeError as err:
            raise wire.ERRORS[err.code].error(str(err)) from None

    def linear(self, model: ServedModel) -> LinearMap:
        """The affine map of a linear model, computed once per version.

        Parameters
        ----------
        model : ServedModel
            The served model (``he_not_supported`` if it is not linear).
        """
        key = (model.name, model.version)
        if key not in self._linear:
            self._linear[key] = linear_map(model)
        return self._linear[key]

    def _predict(
        self, caller: Caller, header: wire.RequestHeader, decoded: dict[str, Any]
    ) -> tuple[bytes, int]:
        """The response JSON of a plaintext-feature request, and its row count."""
        model = caller.model
        instances = wire.parse_rows(decoded, self.config.max_rows)
        if header.explain:
            token = caller.token
            if self.explain_limiter.acquire(token.id) is not None:
                raise wire.RATE_LIMITED.error(
                    "the explanation rate limit is reached; retry later",
                    retry_after=max(1, math.ceil(1 / self.config.explain_rate_per_second)),
                )
        check_ranges(model.predictor, instances)
        predictions = model.predictor.predict_rows(instances)
        if header.explain:
            predictions = _with_attributions(model, instances, predictions)
        payload = wire.build_response(model.name, model.version, header.id, predictions)
        return wire.dumps(payload), len(instances)

    def _he_predict(
        self,
        caller: Caller,
        header: wire.RequestHeader,
        decoded: dict[str, Any],
        rest: memoryview,
    ) -> tuple[bytes, int]:
        """The response frame of a homomorphic request, and its row count.

        ``decoded`` is the frame's header, ``rest`` the context and ciphertexts after it.
        """
        model = caller.model
        linear = self.linear(model)
        if header.explain:
            raise _not_explainable(model, "a homomorphic request carries no attributions")
        request = wire.parse_he_request(decoded, rest, self.config.max_rows)
        if request.context is not None:
            context = self.contexts.put(request.context_id, request.context)
        else:
            context = self.contexts.get(request.context_id)
        scores = he_scores(linear, context, request)
        payload = wire.build_he_response(model.name, model.version, header.id, scores)
        return payload, request.rows

    def answer(self, caller: Caller, body: bytes, sealed: bool, homomorphic: bool = False) -> Reply:
        """Open, check, predict and seal one request.

        Parameters
        ----------
        caller : Caller
            The authorized token and the model it may use.
        body : bytes
            The request body: an envelope, or JSON if not ``sealed``.
        sealed : bool
            Whether the body is a sealed envelope (False only in the benchmark-only
            plaintext mode).
        homomorphic : bool
            The request is a frame of CKKS ciphertexts (``he``), not feature values; it
            is always sealed.

        Errors found before the response key is known come back as plain JSON (they
        concern only the envelope); every later reply, errors included, is sealed.
        """
        rest = memoryview(b"")
        try:
            plaintext = self._open(body) if sealed else body
            if homomorphic:
                decoded, rest = wire.decode_he_request(plaintext)
            else:
                decoded = wire.decode_request(plaintext)
            header = wire.parse_header(decoded, response_key_required=sealed)
        except ApiError as err:
            return Reply(err.status, wire.JSON_MEDIA_TYPE, wire.dumps(err.body()), 0, err.code)
        rows = 0
        try:
            self.replay.check(header.id, header.timestamp)
            if homomorphic:
                data, rows = self._he_predict(caller, header, decoded, rest)
            else:
                data, rows = self._predict(caller, header, decoded)
            status, code = 200, "ok"
        except ApiError as err:
            status, code, data = err.status, err.code, wire.dumps(err.body())
        except RowError as err:
            refused = wire.INVALID_INPUT.error(str(err), row=err.row, feature=err.feature)
            status, code, data = refused.status, refused.code, wire.dumps(refused.body())
        except (ValueError, TypeError, IndexError) as err:
            # Another data kind's encoder refusing a shape; its message may quote values.
            message = f"the inputs do not fit the model ({type(err).__name__})"
            refused = wire.INVALID_INPUT.error(message)
            status, code, data = refused.status, refused.code, wire.dumps(refused.body())
        if header.response_key is None:
            return Reply(status, wire.JSON_MEDIA_TYPE, data, rows, code)
        sealed_reply = hpke.seal_response(header.response_key, data)
        return Reply(status, hpke.RESPONSE_MEDIA_TYPE, sealed_reply, rows, code)


# ------------------------------------------------------------------ explain


def _not_explainable(model: ServedModel, why: str) -> ApiError:
    predictor = model.predictor
    return wire.NOT_EXPLAINABLE.error(
        f"model '{model.name}' (data kind '{predictor.kind.name}', family "
        f"'{predictor.spec.kind}') cannot be explained: {why}",
    )


def _summary(model: ServedModel, shown: dict[str, Any]) -> Any:
    """One row's attributions as an output value.

    A mapping per feature or term (an ``[n, k]`` tensor), or a pixel map (``[n, h, w]``).
    """
    if "features" in shown:
        return dict(shown["features"])
    if "steps" in shown:  # a series: each feature's attributions summed over its steps
        total = dict.fromkeys(model.predictor.schema.feature_names, 0.0)
        for step in shown["steps"]:
            for name, value in step["features"].items():
                total[name] += value
        return total
    if "terms" in shown:
        return dict(shown["terms"])
    if "pixels" in shown:
        return shown["pixels"]
    raise _not_explainable(model, f"its attributions come as {sorted(shown)}")


def _with_attributions(
    model: ServedModel, instances: list[dict[str, Any]], predictions: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The predictions with attributions added to each row.

    Each row gets ``attributions``, ``explained_output`` and ``baseline_output``
    (integrated gradients, ``models.explain``).
    """
    predictor = model.predictor
    if not isinstance(predictor.model, torch.nn.Module):
        raise _not_explainable(model, "it is not a differentiable network")
    explained = explain_rows(predictor, instances)
    summaries = [_summary(model, e["attributions"]) for e in explained]
    if summaries and isinstance(summaries[0], dict):
        # Terms differ from note to note: every row gets the union, 0 where absent.
        keys = list(dict.fromkeys(k for s in summaries for k in s))
        summaries = [{k: s.get(k, 0.0) for k in keys} for s in summaries]
    return [
        {
            **prediction,
            "attributions": summary,
            "explained_output": e["output"],
            "baseline_output": e["baseline_output"],
        }
        for prediction, summary, e in zip(predictions, summaries, explained, strict=True)
    ]
