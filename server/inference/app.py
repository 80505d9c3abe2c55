"""The HTTP face of the inference service (FastAPI); ``docs/PROTOCOL.md`` specifies it.

Routes (their paths are :mod:`protocol.inference`'s, shared with the SDK):

- ``GET  /.well-known/fedcare-keys``  the HPKE key configuration (public, cacheable)
- ``POST /v2/models/{model}/infer``   a sealed request in, a sealed response out
- ``POST /v2/models/{model}/he-infer``   the same around CKKS ciphertexts (linear models)
- ``GET  /v2/models/{model}``         the model's metadata: inputs, outputs, version
- ``GET  /v2/health/live``, ``/v2/health/ready``   liveness and readiness
- ``GET  /openapi.json``              the OpenAPI description (no ``/docs``: its page
  would load scripts from a CDN)

Every refusal the application can shape is a JSON object ``{"error": message, "code":
code, …}`` with a 4xx status. Opening, predicting, explaining and sealing run in a pool of
``workers`` threads, so the event loop keeps answering health probes meanwhile. Every reply
carries ``Strict-Transport-Security``, ``X-Content-Type-Options: nosniff`` and
``Cache-Control: no-store`` (the key configuration: ``max-age``, it is public).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from privacy import hpke
from protocol import inference as wire
from protocol.inference import ApiError
from server.inference.config import ServiceConfig
from server.inference.linear import he_offer
from server.inference.model_store import ServedModel
from server.inference.service import InferenceService

log = logging.getLogger("fedcare.inference")
_DATATYPES = {"numeric": "FP64", "categorical": "BYTES", "binary": "BOOL"}
SECURITY_HEADERS = (
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
)
NO_STORE = (b"cache-control", b"no-store")
# The refusals the documented routes may answer, by status, for the OpenAPI description.
REFUSALS = {
    400: "Malformed envelope or request, unknown key or context, stale request",
    401: "Missing, malformed or revoked bearer token",
    403: "The token's scope does not include the model",
    404: "No such model or route",
    409: "Replayed request",
    413: "Body too large",
    415: "Unsupported media type",
    422: "The inputs do not fit the model",
    429: "Rate limited (Retry-After)",
    431: "Too many header fields",
}


def error_response(err: ApiError) -> JSONResponse:
    """The HTTP response of a refusal: its JSON body, status and headers.

    Parameters
    ----------
    err : ApiError
        The refusal.
    """
    headers = {}
    if err.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="fedcare"'
    if "retry_after" in err.details:
        headers["Retry-After"] = str(err.details["retry_after"])
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes.

    Parameters
    ----------
    request : Request
        The incoming request.
    limit : int
        The most bytes a body may have.
    """
    too_large = wire.BODY_TOO_LARGE.error(f"the body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise wire.MALFORMED_REQUEST.error("Content-Length is not a number")
        if int(declared) > limit:
            raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class Guard:
    """ASGI middleware: no ``Host`` or too many headers refused; security headers added.

    Parameters
    ----------
    app : ASGIApp
        The application it wraps.
    max_headers : int
        The most header fields a request may have.
    max_header_bytes : int
        The most bytes their names and values may have together (h11's own limit applies
        only to a head that arrives in pieces).
    """

    def __init__(self, app: ASGIApp, max_headers: int, max_header_bytes: int):
        self.app = app
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check and forward one connection event (``http`` scopes only).

        Parameters
        ----------
        scope : Scope
            The ASGI scope.
        receive : Receive
            The ASGI receive channel.
        send : Send
            The ASGI send channel.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if NO_STORE[0] not in names:
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        headers = scope.get("headers", [])
        refusal = None
        if len(headers) > self.max_headers:
            refusal = wire.HEADERS_TOO_LARGE.error(
                f"more than {self.max_headers} header fields in one request"
            )
        elif sum(len(name) + len(value) for name, value in headers) > self.max_header_bytes:
            refusal = wire.HEADERS_TOO_LARGE.error(
                f"the headers are larger than {self.max_header_bytes} bytes"
            )
        elif not any(name.lower() == b"host" and value.strip() for name, value in headers):
            refusal = wire.MISSING_HOST.error("the request has no Host header")
        if refusal is not None:
            await error_response(refusal)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's description plus the bearer scheme and every route's JSON refusals."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A token of `fedcare tokens create`",
    }
    components.setdefault("schemas", {})["Refusal"] = {
        "type": "object",
        "required": ["error", "code"],
        "properties": {
            "error": {"type": "string"},
            "code": {"type": "string", "enum": sorted(wire.ERRORS)},
            "row": {"type": "integer"},
            "feature": {"type": "string"},
            "retry_after": {"type": "integer"},
        },
    }
    refusal = {"application/json": {"schema": {"$ref": "#/components/schemas/Refusal"}}}
    guarded = (wire.INFER_PATH, wire.HE_INFER_PATH, wire.MODEL_PATH)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation body is not ours
            statuses = REFUSALS if path in guarded else {404: REFUSALS[404]}
            for status, text in statuses.items():
                responses[str(status)] = {"description": text, "content": refusal}
            if path in guarded:
                operation["security"] = [{"bearer": []}]
    app.openapi_schema = schema
    return schema


def _metadata(model: ServedModel, config: ServiceConfig) -> dict[str, Any]:
    """OIP model metadata: the inputs by feature name and what the schema says of them."""
    schema = model.predictor.schema
    max_rows = config.max_rows
    inputs = []
    if schema.kind == "table":
        inputs = [
            {"name": f.name, "datatype": _DATATYPES.get(f.type, "BYTES"), "shape": [-1]}
            for f in schema.features
        ]
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": "fedcare-pytorch",
        "inputs": inputs,
        "parameters": {
            "task": schema.task,
            "data_kind": schema.kind,
            "schema": schema.to_dict()["features"],
            "feature_order": list(schema.feature_names),
            "categories": {
                f.name: list(f.categories) for f in schema.features if f.type == "categorical"
            },
            "classes": list(schema.classes),
            "max_rows": max_rows,
            "he": he_offer(model, max_rows, config.he_context_ttl).to_json(),
        },
    }


def create_app(config: ServiceConfig) -> FastAPI:
    """The FastAPI application of one service (models load when it starts).

    Parameters
    ----------
    config : ServiceConfig
        The service's paths and limits.
    """
    service = InferenceService(config)
    pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="infer")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        if config.plaintext_payloads:
            log.warning("BENCHMARK MODE: unencrypted application/json payloads are accepted")
        yield
        pool.shutdown(wait=True)
        service.stop()

    app = FastAPI(
        title="fedcare inference",
        version=hpke.PROTOCOL,
        description="HPKE-encrypted inference on the federation's global models "
        "(see docs/PROTOCOL.md).",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN
        redoc_url=None,
    )
    app.state.service = service
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(
        Guard, max_headers=config.max_headers, max_header_bytes=config.max_header_bytes
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        routing = {e.status: e.code for e in (wire.NOT_FOUND, wire.METHOD_NOT_ALLOWED)}
        code = routing.get(exc.status_code, "bad_request")
        return error_response(ApiError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(
            wire.MALFORMED_REQUEST.error("the request's path or query is invalid")
        )

    @app.get(wire.KEYS_PATH, summary="The service's HPKE key configuration")
    async def keys() -> JSONResponse:
        return JSONResponse(
            service.keyring.keys().config().to_json(),
            headers={"Cache-Control": f"max-age={wire.KEYS_MAX_AGE}"},
        )

    @app.get(wire.LIVE_PATH, summary="Liveness")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get(wire.READY_PATH, summary="Readiness: at least one verified model is served")
    async def ready() -> JSONResponse:
        served = service.models.served()
        body = {"ready": bool(served), "models": {k: str(v) for k, v in served.items()}}
        return JSONResponse(body, status_code=200 if served else 503)

    @app.get(wire.MODEL_PATH, summary="Model metadata (inputs by feature name, HE offer)")
    async def metadata(model: str, request: Request) -> JSONResponse:
        try:
            caller = service.authorize(request.headers.get("authorization"), model)
        except ApiError as err:
            return error_response(err)
        return JSONResponse(_metadata(caller.model, config))

    async def serve(model: str, request: Request, homomorphic: bool) -> Response:
        started = time.perf_counter()
        token_id, version = None, None
        limit = config.he_max_body_bytes if homomorphic else config.max_body_bytes
        try:
            caller = service.authorize(request.headers.get("authorization"), model)
            token_id, version = caller.token.id, caller.model.version
            sealed = service.check_content_type(request.headers.get("content-type"), homomorphic)
            body = await read_body(request, limit)
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(
                pool, service.answer, caller, body, sealed, homomorphic
            )
            response: Response = Response(
                reply.body, status_code=reply.status, media_type=reply.media_type
            )
            status, code, rows = reply.status, reply.code, reply.rows
        except ApiError as err:
            response, status, code, rows = error_response(err), err.status, err.code, 0
        except Exception as err:  # a bug: say nothing of the request, not even in the log
            log.error("internal error answering %s (%s)", model, type(err).__name__)
            bug = wire.INTERNAL_ERROR.error("internal error")
            response, status, code, rows = error_response(bug), bug.status, bug.code, 0
        latency = (time.perf_counter() - started) * 1000
        service.audit.record(token_id, model, version, rows, status, code, latency)
        return response

    sealed_io = {
        "requestBody": {
            "required": True,
            "content": {
                hpke.REQUEST_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}
            },
        },
        "responses": {
            "200": {
                "description": "A sealed response",
                "content": {
                    hpke.RESPONSE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    }

    @app.post(wire.INFER_PATH, summary="Encrypted inference", openapi_extra=sealed_io)
    async def infer(model: str, request: Request) -> Response:
        return await serve(model, request, homomorphic=False)

    @app.post(
        wire.HE_INFER_PATH,
        summary="Homomorphic inference of a linear model (CKKS ciphertexts inside HPKE)",
        openapi_extra=sealed_io,
    )
    async def he_infer(model: str, request: Request) -> Response:
        return await serve(model, request, homomorphic=True)

    return app
