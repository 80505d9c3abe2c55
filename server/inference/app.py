"""The HTTP face of the inference service (FastAPI); ``docs/PROTOCOL.md`` specifies it.

Routes:

- ``GET  /.well-known/fedcare-keys``  the HPKE key configuration (public, cacheable)
- ``POST /v2/models/{name}/infer``    a sealed request in, a sealed response out
- ``GET  /v2/models/{name}``          the model's metadata: inputs, outputs, version
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
from protocol.inference import ApiError
from server.inference.config import ServiceConfig
from server.inference.model_store import ServedModel
from server.inference.service import InferenceService

log = logging.getLogger("fedcare.inference")
KEYS_PATH = "/.well-known/fedcare-keys"
_DATATYPES = {"numeric": "FP64", "categorical": "BYTES", "binary": "BOOL"}


def error_response(err: ApiError) -> JSONResponse:
    headers = {}
    if err.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="fedcare"'
    if "retry_after" in err.details:
        headers["Retry-After"] = str(err.details["retry_after"])
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    too_large = ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "malformed_request", "Content-Length is not a number")
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
    """The FastAPI application of one service (models load when it starts)."""
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
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return error_response(ApiError(exc.status_code, code, str(exc.detail)))

    @app.get(KEYS_PATH, summary="The service's HPKE key configuration")
    def keys() -> JSONResponse:
        return JSONResponse(
            service.keyring.keys().config(), headers={"Cache-Control": "max-age=300"}
        )

    @app.get("/v2/health/live", summary="Liveness")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="Readiness: at least one verified model is served")
    def ready() -> JSONResponse:
        served = service.models.served()
        body = {"ready": bool(served), "models": {k: str(v) for k, v in served.items()}}
        return JSONResponse(body, status_code=200 if served else 503)

    @app.get("/v2/models/{name}", summary="Model metadata (inputs by feature name)")
    def metadata(name: str, request: Request) -> JSONResponse:
        try:
            caller = service.authorize(request.headers.get("authorization"), name)
        except ApiError as err:
            return error_response(err)
        return JSONResponse(_metadata(caller.model, config.max_rows))

    @app.post(
        "/v2/models/{name}/infer",
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
    async def infer(name: str, request: Request) -> Response:
        started = time.perf_counter()
        token_id, version = None, None
        try:
            caller = service.authorize(request.headers.get("authorization"), name)
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
            log.error("internal error answering %s (%s)", name, type(err).__name__)
            internal = ApiError(500, "internal_error", "internal error")
            response, status, code, rows = error_response(internal), 500, "internal_error", 0
        latency = (time.perf_counter() - started) * 1000
        service.audit.record(token_id, name, version, rows, status, code, latency)
        return response

    return app
