"""The SuperLink's scoped middleware: Flower's shape is checked, each layer acts where it did."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from flwr.proto.fleet_pb2 import PullMessagesRequest  # pylint: disable=E0611
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.supercore.error import ApiErrorCode
from flwr.superlink import main as superlink_main
from flwr.superlink.routers.control.middlewares import ControlAuthenticationMiddleware
from flwr.superlink.routers.fleet.node_auth import NodeAuthMiddleware
from starlette.middleware import Middleware

from deploy import superlink_lean
from deploy.provision import FederationFile
from deploy.superlink import SuperLinkSettings, superlink_command
from deploy.superlink_lean import (
    SCOPES,
    FlowerChanged,
    ScopedMiddleware,
    check_flower_shape,
    lean_middleware,
)

PROTOBUF = {"content-type": "application/protobuf"}


def http_scope(path: str) -> dict:
    return {"type": "http", "path": path, "root_path": "", "app": None}


def test_flower_list_is_the_one_this_module_was_written_for():
    check_flower_shape(superlink_main._get_middleware())


def test_a_changed_flower_list_is_refused_by_name():
    class NewMiddleware:
        pass

    changed = [*superlink_main._get_middleware(), Middleware(NewMiddleware)]
    with pytest.raises(FlowerChanged, match="NewMiddleware"):
        lean_middleware(changed)
    missing = [m for m in superlink_main._get_middleware() if m.cls is not NodeAuthMiddleware]
    with pytest.raises(FlowerChanged, match="NodeAuthMiddleware"):
        lean_middleware(missing)


def test_every_scoped_layer_is_wrapped_and_the_others_kept_in_order():
    flower = superlink_main._get_middleware()
    lean = lean_middleware(flower)
    assert len(lean) == len(flower)
    for theirs, ours in zip(flower, lean, strict=True):
        if theirs.cls in SCOPES:
            assert ours.cls is ScopedMiddleware and ours.kwargs["middleware"] is theirs
        else:
            assert ours is theirs


@pytest.mark.parametrize(
    ("cls", "acts_on", "skips"),
    [
        (ControlAuthenticationMiddleware, "/v1/control/list-runs", "/v1/fleet/pull-messages"),
        (NodeAuthMiddleware, "/v1/fleet/pull-messages", "/v1/runtime/pull-messages"),
    ],
)
def test_scopes_follow_the_paths_flower_tests(cls, acts_on, skips):
    applies = SCOPES[cls]
    assert applies(http_scope(acts_on))
    assert not applies(http_scope(skips))


def test_tracing_runs_only_when_flower_would_trace(monkeypatch):
    from flwr.supercore.routers.runtime.tracing import RuntimeTracingMiddleware

    applies = SCOPES[RuntimeTracingMiddleware]
    monkeypatch.delenv(superlink_lean.TRACING_ENV, raising=False)
    assert not applies(http_scope("/v1/runtime/pull-messages"))
    monkeypatch.setenv(superlink_lean.TRACING_ENV, "1")
    assert applies(http_scope("/v1/runtime/pull-messages"))


def test_scoped_middleware_passes_other_requests_straight_on():
    calls = []

    async def app(scope, receive, send):
        calls.append(("app", scope.get("path")))

    class Layer:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            calls.append(("layer", scope.get("path")))
            await self.inner(scope, receive, send)

    scoped = ScopedMiddleware(app, Middleware(Layer), lambda s: s["path"].startswith("/a/"))
    asyncio.run(scoped(http_scope("/a/x"), None, None))
    asyncio.run(scoped(http_scope("/b/x"), None, None))
    asyncio.run(scoped({"type": "lifespan"}, None, None))  # not HTTP: the layer decides
    assert calls == [
        ("layer", "/a/x"),
        ("app", "/a/x"),
        ("app", "/b/x"),
        ("layer", None),
        ("app", None),
    ]


@pytest.fixture()
def lean_app(monkeypatch):
    """Flower's SuperLink app (in-memory state) built with the scoped middleware."""
    monkeypatch.setattr(superlink_main, "_get_middleware", superlink_main._get_middleware)
    superlink_lean.install()
    return superlink_main.create_app()


def post(app, path: str, body: bytes) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://superlink") as c:
            return await c.post(path, content=body, headers=PROTOBUF)

    return asyncio.run(send())


def test_supernode_authentication_still_guards_the_fleet_api(lean_app):
    body = PullMessagesRequest(node=Node(node_id=12345)).SerializeToString()
    response = post(lean_app, "/v1/fleet/pull-messages", body)
    assert response.status_code == 401
    assert "SuperNode authentication" in response.text


def test_control_authentication_still_runs_on_the_control_api(lean_app):
    # Without its account dependency the Control layer refuses: proof that it ran.
    lean_app.state.account_access_dep = None
    response = post(lean_app, "/v1/control/list-runs", b"")
    assert response.status_code == 503
    assert response.json()["code"] == int(ApiErrorCode.ACCOUNT_AUTHENTICATION_NOT_INITIALIZED)
    # ... and a Fleet request does not pass through it (still refused by node auth only).
    body = PullMessagesRequest(node=Node(node_id=12345)).SerializeToString()
    assert post(lean_app, "/v1/fleet/pull-messages", body).status_code == 401


def test_the_coordinator_starts_flower_superlink_through_this_module(tmp_path):
    fed = FederationFile(tmp_path, "cardio", "127.0.0.1:9092", {}, {})
    cmd = superlink_command(fed, SuperLinkSettings(tmp_path).resolved())
    assert cmd[1:4] == ["-m", "deploy.superlink_lean", "--"]
    assert "--enable-supernode-auth" in cmd


def test_a_layer_in_place_of_the_error_translator_is_refused():
    async def dispatch(request, call_next):
        return await call_next(request)

    changed = [
        Middleware(m.cls, dispatch=dispatch) if m.kwargs.get("dispatch") is not None else m
        for m in superlink_main._get_middleware()
    ]
    with pytest.raises(FlowerChanged, match="BaseHTTPMiddleware dispatching"):
        check_flower_shape(changed)


def test_another_flower_release_keeps_all_of_flowers_layers(monkeypatch):
    monkeypatch.setattr(superlink_main, "_get_middleware", superlink_main._get_middleware)
    flowers = superlink_main._get_middleware
    monkeypatch.setattr(superlink_lean.flwr, "__version__", "1.41.1")
    assert superlink_lean.install() is False
    assert superlink_main._get_middleware is flowers
