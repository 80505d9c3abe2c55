"""The HTTP face of the inference service (FastAPI); ``docs/PROTOCOL.md`` specifies it.

Routes (their paths are :mod:`protocol.inference`'s, shared with the SDK):

- ``GET  /.well-known/fedcare-keys``  the HPKE key configuration (public, cacheable)
- ``POST /v2/models/{model}/infer``   a sealed request in, a sealed response out
- ``GET  /v2/models/{model}``         the model's metadata: inputs, outputs, version
- ``GET  /v2/health/live``, ``/v2/health/ready``   liveness and readiness
- ``GET  /docs``, ``/openapi.json``   the OpenAPI description

Every refusal is a JSON object ``{"error": message, "code": code, …}`` with a 4xx status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from privacy import hpke
from protocol import inference as wire
from protocol.inference import ApiError
from server.inference.config import ServiceConfig
from server.inference.model_store import ServedModel
from server.inference.service import InferenceService

log = logging.getLogger("fedcare.inference")
_DATATYPES = {"numeric": "FP64", "categorical": "BYTES", "binary": "BOOL"}


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


def _metadata(model: ServedModel, max_rows: int) -> dict[str, Any]:
    """OIP model metadata: the inputs by feature name and what the schema says of them."""
    schema = model.predictor.schema
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
            "classes": list(schema.classes),
            "max_rows": max_rows,
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        if config.plaintext_payloads:
            log.warning("BENCHMARK MODE: unencrypted application/json payloads are accepted")
        yield
        service.stop()

    app = FastAPI(
        title="fedcare inference",
        version=hpke.PROTOCOL,
        description="HPKE-encrypted inference on the federation's global models "
        "(see docs/PROTOCOL.md).",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        routing = {e.status: e.code for e in (wire.NOT_FOUND, wire.METHOD_NOT_ALLOWED)}
        code = routing.get(exc.status_code, "bad_request")
        return error_response(ApiError(exc.status_code, code, str(exc.detail)))

    @app.get(wire.KEYS_PATH, summary="The service's HPKE key configuration")
    def keys() -> JSONResponse:
        return JSONResponse(
            service.keyring.keys().config().to_json(),
            headers={"Cache-Control": f"max-age={wire.KEYS_MAX_AGE}"},
        )

    @app.get(wire.LIVE_PATH, summary="Liveness")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get(wire.READY_PATH, summary="Readiness: at least one verified model is served")
    def ready() -> JSONResponse:
        served = service.models.served()
        body = {"ready": bool(served), "models": {k: str(v) for k, v in served.items()}}
        return JSONResponse(body, status_code=200 if served else 503)

    @app.get(wire.MODEL_PATH, summary="Model metadata (inputs by feature name)")
    def metadata(model: str, request: Request) -> JSONResponse:
        try:
            caller = service.authorize(request.headers.get("authorization"), model)
        except ApiError as err:
            return error_response(err)
        return JSONResponse(_metadata(caller.model, config.max_rows))

    @app.post(
        wire.INFER_PATH,
        summary="Encrypted inference",
        openapi_extra={
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
        },
    )
    async def infer(model: str, request: Request) -> Response:
        started = time.perf_counter()
        token_id, version = None, None
        try:
            caller = service.authorize(request.headers.get("authorization"), model)
            token_id, version = caller.token.id, caller.model.version
            sealed = service.check_content_type(request.headers.get("content-type"))
            body = await read_body(request, config.max_body_bytes)
            reply = service.answer(caller.model, body, sealed)
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

    return app
