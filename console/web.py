"""What both consoles share: the token check, the page frame, escaping, JSON, assets, TLS.

Pages are f-strings whose every interpolated value goes through :func:`esc` (or is an
:class:`Html` fragment built from escaped parts), so a site or model name cannot inject
markup. A browser signs in once with its token (kept in an HttpOnly, Secure,
SameSite=Strict cookie); a script sends ``Authorization: Bearer <token>``. Either way
the token must carry the ``console`` scope: 401 without a valid token, 403 without it.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from privacy.tokens import TokenStore

COOKIE = "fedcare_console"
STATIC = Path(__file__).parent / "static"
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
PUBLIC_PATHS = ("/login", "/healthz", "/static/")
HEADERS = {
    # Everything is the app's own: no CDN, no inline script or style.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Html:
    """A fragment of markup that is already safe (built from escaped parts).

    Parameters
    ----------
    text : str
        The markup.
    """

    text: str


Cell = Html | str | int | float | None


def esc(value: object) -> str:
    """``value`` as text safe inside HTML (quotes included).

    Parameters
    ----------
    value : object
        Anything; None reads as an em dash.
    """
    return "—" if value is None else html.escape(str(value), quote=True)


def number(value: float | None, digits: int = 4) -> str:
    """A figure to ``digits`` decimals, or an em dash when missing or not finite.

    Parameters
    ----------
    value : float or None
        The figure.
    digits : int
        Decimals shown.
    """
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


def link(href: str, text: str, current: bool = False) -> Html:
    """An escaped link; ``current`` marks it as the page's own (``aria-current``).

    Parameters
    ----------
    href : str
        The target.
    text : str
        Its text.
    current : bool
        Whether it points at the page shown.
    """
    mark = ' aria-current="page"' if current else ""
    return Html(f'<a href="{esc(href)}"{mark}>{esc(text)}</a>')


def path_part(value: str) -> str:
    """``value`` quoted for use as one segment of a URL path.

    Parameters
    ----------
    value : str
        A run folder's name, a version's key.
    """
    return quote(value, safe="")


def _cell(value: Cell) -> str:
    if isinstance(value, Html):
        return f"<td>{value.text}</td>"
    if isinstance(value, float):
        # A figure is never broken over two lines ("0.00" above "0").
        return f'<td class="num">{number(value)}</td>'
    return f"<td>{esc(value)}</td>"


def table(caption: str, headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> Html:
    """A captioned table in a scroll box (narrow windows), every cell escaped.

    Parameters
    ----------
    caption : str
        Its caption (what the table is).
    headers : sequence of str
        Column headings.
    rows : sequence of sequences of cells
        The rows; floats are shown to 4 decimals.
    """
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}">none</td></tr>'
    return Html(
        f'<div class="scroll" tabindex="0" role="region" aria-label="{esc(caption)}">'
        f"<table><caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def chart_slot(chart_id: str, title: str) -> Html:
    """Where ``static/console.js`` draws the chart ``chart_id`` of the page's JSON route.

    Parameters
    ----------
    chart_id : str
        The chart's id in the JSON.
    title : str
        Its title.
    """
    return Html(
        f'<figure class="chart"><figcaption>{esc(title)}</figcaption>'
        f'<div class="plot" data-chart="{esc(chart_id)}" role="img" aria-label="{esc(title)}">'
        "loading…</div></figure>"
    )


@dataclass(frozen=True)
class Frame:
    """The frame every page of one console shares.

    Parameters
    ----------
    title : str
        The console's name (``fedcare coordinator`` …).
    nav : sequence of (href, label)
        Its menu.
    """

    title: str
    nav: Sequence[tuple[str, str]]

    def page(
        self,
        heading: str,
        body: Sequence[Html],
        active: str,
        api: str = "",
        poll_while: str = "",
        status: int = 200,
    ) -> HTMLResponse:
        """A whole page.

        Parameters
        ----------
        heading : str
            The page's ``h1`` (and title).
        body : sequence of Html
            Its sections.
        active : str
            The menu entry (href) that is this page.
        api : str
            The JSON route its charts and live fields come from ('' for none).
        poll_while : str
            ``path=value``: re-read ``api`` every 2 s while the JSON's ``path`` equals
            ``value`` (a run in progress), then reload the page.
        status : int
            The HTTP status.
        """
        menu = "".join(f"<li>{link(h, label, h == active).text}</li>" for h, label in self.nav)
        data = f' data-api="{esc(api)}"' if api else ""
        if poll_while:
            data += f' data-poll-while="{esc(poll_while)}"'
        text = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(heading)} · {esc(self.title)}</title>"
            '<link rel="stylesheet" href="/static/console.css">'
            '<script src="/static/console.js" defer></script></head><body>'
            '<a class="skip" href="#main">skip to content</a>'
            f'<header><p class="brand">{esc(self.title)}</p>'
            f'<nav aria-label="console"><ul>{menu}</ul></nav></header>'
            f'<main id="main" tabindex="-1"{data}><h1>{esc(heading)}</h1>'
            + "".join(part.text for part in body)
            + "</main></body></html>"
        )
        return HTMLResponse(text, status_code=status)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def api(record: Any) -> Response:
    """A record (dataclass, or list of them) as a JSON response.

    Parameters
    ----------
    record : dataclass instance or list of them
        What the route returns.
    """
    if isinstance(record, list):
        data: Any = [dataclasses.asdict(r) for r in record]
    else:
        data = dataclasses.asdict(record)
    body = json.dumps(_finite(data), separators=(",", ":"), ensure_ascii=False)
    return Response(body, media_type="application/json")


def _login_page(frame: Frame, message: str, next_path: str, status: int) -> HTMLResponse:
    form = Html(
        f'<p role="alert">{esc(message)}</p>'
        '<form method="post" action="/login" class="login">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<label for="token">console token</label>'
        '<input id="token" name="token" type="password" autocomplete="off" required autofocus>'
        '<button type="submit">sign in</button></form>'
    )
    return frame.page("sign in", [form], active="", status=status)


def _local_path(value: str) -> str:
    """``value`` when it is a path of this app, else ``/`` (no open redirect)."""
    return value if value.startswith("/") and not value.startswith("//") else "/"


def secure(app: FastAPI, frame: Frame, tokens: TokenStore) -> FastAPI:
    """Add the token check, the sign-in form, the assets and the headers to ``app``.

    Parameters
    ----------
    app : FastAPI
        A console app whose routes are all read-only.
    frame : Frame
        Its page frame (for the sign-in and refusal pages).
    tokens : TokenStore
        The token store; a token needs the ``console`` scope.
    """

    def refusal(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            headers = (
                {"WWW-Authenticate": 'Bearer realm="fedcare-console"'} if status == 401 else {}
            )
            return JSONResponse({"error": message}, status_code=status, headers=headers)
        return _login_page(frame, message, request.url.path, status)

    @app.middleware("http")
    async def check_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if not path.startswith(PUBLIC_PATHS):
            scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
            token = bearer.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE)
            record = tokens.authenticate(token) if token else None
            if record is None:
                return refusal(request, 401, "sign in with a console token")
            if not record.allows_console():
                return refusal(request, 403, "this token has no console scope")
        response = await call_next(request)
        response.headers.update(HEADERS)
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/login", include_in_schema=False)
    def login_form(next: str = "/") -> HTMLResponse:
        return _login_page(frame, "", _local_path(next), 200)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = form.get("token", [""])[0].strip()
        target = _local_path(form.get("next", ["/"])[0])
        record = tokens.authenticate(token)
        if record is None:
            return _login_page(frame, "unknown, malformed or revoked token", target, 401)
        if not record.allows_console():
            return _login_page(frame, "this token has no console scope", target, 403)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, secure=True, samesite="strict")
        return response

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response(status_code=404)
        return Response((STATIC / name).read_bytes(), media_type=ASSETS[name])

    return app


def serve(app: FastAPI, host: str, port: int, tls_cert: Path, tls_key: Path) -> None:
    """Run ``app`` over TLS until interrupted.

    Parameters
    ----------
    app : FastAPI
        The console.
    host, port : str, int
        Where it listens (loopback unless told otherwise).
    tls_cert, tls_key : Path
        Its certificate chain and key (PEM).
    """
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls_cert),
        ssl_keyfile=str(tls_key),
        log_level="warning",
        server_header=False,
    )
