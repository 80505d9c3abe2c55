"""`flower-superlink` with its idle middleware skipped: how fedcare starts the SuperLink.

Flower 1.41's SuperLink serves the Fleet, Runtime and Control APIs from one FastAPI app
with nine ``BaseHTTPMiddleware`` layers, each of which costs every request a task group and
a pair of memory streams, even where its ``dispatch`` only calls the next layer. Seven of
them act on one API or when a plugin or tracing is enabled, and pass every other request
through untouched (read from flwr 1.41.0's source):

- the Control API's authentication, licence check, event log and no-cache headers act on
  ``/v1/control/…`` only;
- SuperNode authentication acts on ``/v1/fleet/…`` only;
- the Fleet event log acts on ``/v1/fleet/…`` only, and only with an event-log plugin;
- the Runtime tracing middleware acts only with ``FLWR_TRACING_ENABLED=1``.

So a SuperNode's request needs three of the nine and the ServerApp's two, yet both went
through all nine (all but a few of a round's hundreds of requests). Measured in one
process, a Fleet request cost 2.5 ms of CPU through all nine and 1.2 ms through the three.
:func:`lean_middleware` wraps each of the seven so that a request outside its reach goes
straight to the next layer, and the layer runs exactly as before for every request inside
it. The protobuf translation and error translation layers run for every request, as in
Flower.

This is tied to flwr 1.41.0's code: on another Flower version the SuperLink runs with
Flower's own middleware (and says so), since a patch release could widen what a layer
guards; on 1.41.0 :func:`check_flower_shape` fails loudly (exit code 2) unless Flower's
middleware list is exactly the nine layers described above.

    python -m deploy.superlink_lean -- <flower-superlink arguments>
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence

import flwr
from flwr.supercore.error import http_error_translator
from flwr.supercore.protobuf.translation import ProtobufTranslationMiddleware
from flwr.supercore.routers.runtime.tracing import RuntimeTracingMiddleware
from flwr.superlink import main as superlink_main
from flwr.superlink.cli.flower_superlink import flower_superlink
from flwr.superlink.routers.control.middlewares import (
    ControlAuthenticationMiddleware,
    ControlEventLogMiddleware,
    ControlLicenseMiddleware,
    ControlSensitiveResponseMiddleware,
)
from flwr.superlink.routers.fleet.middlewares import FleetEventLogMiddleware
from flwr.superlink.routers.fleet.node_auth import NodeAuthMiddleware
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from protocol.flower_waits import FlowerChanged

# The Flower release whose middleware SCOPES was read from.
FLOWER_VERSION = "1.41.0"
CONTROL_PREFIX = "/v1/control/"
FLEET_PREFIX = "/v1/fleet/"
TRACING_ENV = "FLWR_TRACING_ENABLED"

Applies = Callable[[Scope], bool]


def _path(scope: Scope) -> str:
    # Starlette's request.url.path, which the middlewares test (uvicorn's scope path
    # already holds any root_path; flower-superlink sets none)
    return str(scope["path"])


def _control(scope: Scope) -> bool:
    return _path(scope).startswith(CONTROL_PREFIX)


def _fleet(scope: Scope) -> bool:
    return _path(scope).startswith(FLEET_PREFIX)


def _fleet_with_event_log(scope: Scope) -> bool:
    state = getattr(scope.get("app"), "state", None)
    return _fleet(scope) and getattr(state, "fleet_event_log_plugin", None) is not None


def _tracing(_scope: Scope) -> bool:
    return os.getenv(TRACING_ENV) == "1"


# Which requests each of Flower's scoped layers acts on (a pass-through for all others).
SCOPES: Mapping[type, Applies] = {
    ControlSensitiveResponseMiddleware: _control,
    ControlAuthenticationMiddleware: _control,
    ControlLicenseMiddleware: _control,
    RuntimeTracingMiddleware: _tracing,
    ControlEventLogMiddleware: _control,
    NodeAuthMiddleware: _fleet,
    FleetEventLogMiddleware: _fleet_with_event_log,
}
# The layers that act on every request (the error translator is a BaseHTTPMiddleware
# given Flower's ``http_error_translator`` as its dispatch).
EVERY_REQUEST = (BaseHTTPMiddleware, ProtobufTranslationMiddleware)


class ScopedMiddleware:
    """An ASGI middleware that runs ``middleware`` only for the requests it acts on.

    Parameters
    ----------
    app : ASGIApp
        The next layer.
    middleware : Middleware
        Flower's layer (its class, arguments and options).
    applies : callable
        True for an HTTP request scope the layer acts on; other requests skip it.
    """

    def __init__(self, app: ASGIApp, middleware: Middleware, applies: Applies):
        cls, args, kwargs = middleware
        self.app = app
        self.layer: ASGIApp = cls(app, *args, **kwargs)
        self.applies = applies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass ``scope`` to Flower's layer if it acts on it, else to the next layer."""
        if scope["type"] == "http" and not self.applies(scope):
            await self.app(scope, receive, send)
        else:
            await self.layer(scope, receive, send)


def check_flower_shape(middleware: Sequence[Middleware]) -> None:
    """Raise :class:`FlowerChanged` unless ``middleware`` is flwr 1.41's list.

    Parameters
    ----------
    middleware : sequence of Middleware
        What ``flwr.superlink.main._get_middleware()`` returns.
    """
    classes = [m.cls for m in middleware]
    expected = {*SCOPES, *EVERY_REQUEST}
    unknown = [getattr(c, "__name__", repr(c)) for c in classes if c not in expected]
    missing = [c.__name__ for c in expected if c not in classes]
    translators = [m.kwargs.get("dispatch") for m in middleware if m.cls is BaseHTTPMiddleware]
    if translators != [http_error_translator]:
        unknown.append(f"BaseHTTPMiddleware dispatching to {translators}")
    if unknown or missing or len(classes) != len(SCOPES) + 2:
        raise FlowerChanged(
            f"the SuperLink's middleware is {[getattr(c, '__name__', c) for c in classes]} "
            f"(unknown: {unknown}, missing: {missing}), not flwr 1.41's nine layers: "
            "re-read flwr/superlink/main.py and update deploy/superlink_lean.py"
        )


def lean_middleware(middleware: Sequence[Middleware]) -> list[Middleware]:
    """Flower's middleware list, each scoped layer wrapped in :class:`ScopedMiddleware`.

    Parameters
    ----------
    middleware : sequence of Middleware
        Flower's list, outermost first (checked by :func:`check_flower_shape`).
    """
    check_flower_shape(middleware)
    return [
        Middleware(ScopedMiddleware, middleware=m, applies=SCOPES[m.cls]) if m.cls in SCOPES else m
        for m in middleware
    ]


def install() -> bool:
    """Make ``flwr.superlink.main`` build its app with :func:`lean_middleware`.

    Returns
    -------
    bool
        False (nothing changed) on a Flower release other than :data:`FLOWER_VERSION`.

    Raises
    ------
    FlowerChanged
        Flower is that release, but its middleware list is not as read.
    """
    if flwr.__version__ != FLOWER_VERSION:
        return False
    flower_list: Callable[[], list[Middleware]] = superlink_main._get_middleware
    lean_middleware(flower_list())  # check now, before the SuperLink starts

    def get_middleware() -> list[Middleware]:
        return lean_middleware(flower_list())

    superlink_main._get_middleware = get_middleware  # type: ignore[attr-defined]
    return True


def superlink_entry(python: str) -> list[str]:
    """The start of the command line that runs ``flower-superlink`` through this module.

    Parameters
    ----------
    python : str
        The interpreter of the environment that holds Flower and fedcare.
    """
    return [python, "-m", "deploy.superlink_lean", "--"]


def main(argv: Sequence[str] | None = None) -> None:
    """Check Flower's middleware, scope it and run ``flower-superlink``.

    Parameters
    ----------
    argv : sequence of str, optional
        ``-- <flower-superlink arguments>``; default ``sys.argv[1:]``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    rest = args[1:] if args[:1] == ["--"] else args
    try:
        scoped = install()
    except FlowerChanged as err:
        print(f"fedcare cannot start the SuperLink: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if not scoped:
        print(
            f"fedcare: flwr {flwr.__version__} is not {FLOWER_VERSION}, whose middleware "
            "deploy/superlink_lean.py was written for: the SuperLink runs with all of "
            "Flower's layers (slower, as safe)",
            file=sys.stderr,
            flush=True,
        )
    sys.argv = ["flower-superlink", *rest]
    flower_superlink()


if __name__ == "__main__":
    main()
