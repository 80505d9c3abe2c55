"""The coordinator's console: federation, runs, models and inference, pages and JSON routes.

Every page has a JSON route with the same records under ``/api``; the pages' charts are
drawn in the browser from those routes by ``static/console.js``, and a script can call
them with ``Authorization: Bearer <console token>``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response

from console.federation import NEVER_CONNECTED, FederationView, SiteRow, federation_view
from console.runs import FINISHED, IN_PROGRESS, RunDetail, RunSummary, read_run, run_detail
from console.runs import run_folders as find_run_folders
from console.traffic import AuditReader, Traffic, last_answered, traffic
from console.versions import (
    MetricDiff,
    Serving,
    VersionRow,
    ask_service,
    mark_served,
    metric_diff,
    version_rows,
)
from console.web import Frame, Html, api, chart_slot, esc, link, number, path_part, secure, table
from deploy.nodes import OFFLINE, ONLINE
from privacy.signing import VerifyKey, load_storage_key, load_verify_key
from privacy.tokens import TokenStore

FRAME = Frame(
    "fedcare coordinator console",
    (("/", "federation"), ("/runs", "runs"), ("/models", "models"), ("/inference", "inference")),
)
SERVED = "served"
# The metrics a runs list shows first, when a run has them.
HEADLINE_METRICS = ("roc_auc", "accuracy", "c_index", "mse", "mae")


@dataclass(frozen=True)
class CoordinatorSources:
    """Where the coordinator's console reads from (nothing is copied for it).

    Parameters
    ----------
    runs_dir : Path
        A folder of run folders (or one run folder).
    registries : tuple of Path
        Registries to list besides the runs' own.
    verify_key : Path or None
        The coordinator's public signing key (``signing.pub``), to verify versions.
    audit_log : Path or None
        The inference service's audit log.
    coordinator_dir : Path or None
        The provisioned coordinator folder, for the SuperLink's nodes.
    storage_key : Path or None
        The registry's storage key file, to verify versions encrypted at rest.
    service : str or None
        The inference service's base URL, to ask which versions it serves.
    service_ca : Path or None
        The CA of the service's TLS certificate.
    """

    runs_dir: Path
    registries: tuple[Path, ...] = field(default_factory=tuple)
    verify_key: Path | None = None
    audit_log: Path | None = None
    coordinator_dir: Path | None = None
    storage_key: Path | None = None
    service: str | None = None
    service_ca: Path | None = None


@dataclass(frozen=True)
class ModelsView:
    """The models page.

    Parameters
    ----------
    versions : list of VersionRow
        Every version, newest first.
    diff : list of MetricDiff
        The metrics of the two versions compared (empty when none are).
    served_by : str
        How the served versions are known (the service asked, or the audit log).
    a, b : str
        The compared versions' keys ('' when none).
    """

    versions: list[VersionRow]
    diff: list[MetricDiff]
    served_by: str
    a: str = ""
    b: str = ""


class CoordinatorConsole:
    """The console's reads: each call reads the files (and the SuperLink) again.

    Parameters
    ----------
    sources : CoordinatorSources
        Where to read.
    """

    def __init__(self, sources: CoordinatorSources):
        self.sources = sources
        self.key: VerifyKey | None = (
            load_verify_key(sources.verify_key) if sources.verify_key else None
        )
        self.storage_key: bytes | None = (
            load_storage_key(sources.storage_key) if sources.storage_key else None
        )
        self.audit = AuditReader(sources.audit_log)

    def runs(self) -> list[RunSummary]:
        """Every run, newest first."""
        return [read_run(p)[0] for p in find_run_folders(self.sources.runs_dir)]

    def run(self, name: str) -> RunDetail:
        """The run folder called ``name`` (404 when there is none).

        Parameters
        ----------
        name : str
            The run folder's name.
        """
        for path in find_run_folders(self.sources.runs_dir):
            if path.name == name:
                return run_detail(path)
        raise HTTPException(404, f"no run called {name!r}")

    def federation(self) -> FederationView:
        """Sites, their ε in the newest run, and the SuperLink's nodes."""
        return federation_view(self.sources.coordinator_dir, self.runs())

    def traffic(self) -> Traffic:
        """The audit log, counted."""
        return traffic(self.audit)

    def serving(self, models: set[str]) -> Serving:
        """The versions served: the service asked now, else the audit log's last answers.

        Parameters
        ----------
        models : set of str
            The model names to look for in the audit log.
        """
        note = ""
        if self.sources.service:
            try:
                return ask_service(self.sources.service, self.sources.service_ca)
            except ValueError as err:
                note = f" ({err})"
        answered = last_answered(self.sources.audit_log, models)
        return Serving(answered, f"the audit log (last answered){note}")

    def models(self, a: str = "", b: str = "") -> ModelsView:
        """Every registry version, and the metrics diff of versions ``a`` and ``b``.

        Parameters
        ----------
        a, b : str
            Version keys to compare ('' for none).
        """
        registries = list(self.sources.registries)
        for run in self.runs():
            if run.model is not None:
                registries.append(Path(run.model.registry))
            elif (Path(run.path) / "registry").is_dir():
                registries.append(Path(run.path) / "registry")
        unique = list(dict.fromkeys(p.resolve() for p in registries))
        versions = version_rows(unique, self.key, self.storage_key)
        serving = self.serving({v.name for v in versions})
        versions = mark_served(versions, serving.versions)
        by_key = {v.key: v for v in versions}
        if a in by_key and b in by_key:
            return ModelsView(versions, metric_diff(by_key[a], by_key[b]), serving.source, a, b)
        return ModelsView(versions, [], serving.source)


# ------------------------------------------------------------------ pages


def _epsilon_text(values: dict[str, float]) -> str:
    return ", ".join(f"{site}: {number(eps, 3)}" for site, eps in sorted(values.items()))


def _headline(metrics: dict[str, float]) -> str:
    keys = [k for k in HEADLINE_METRICS if k in metrics] or sorted(metrics)[:2]
    return ", ".join(f"{k} {number(metrics[k])}" for k in keys)


def _when(stamp: str) -> str:
    """An ISO 8601 time as ``2026-12-04 16:56:08Z`` ('' stays '')."""
    if not stamp:
        return ""
    return dt.datetime.fromisoformat(stamp).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _last_seen(site: SiteRow, now: str) -> str:
    if not site.last_seen:
        return ""
    what = "heartbeat" if site.status == ONLINE else "went offline"
    text = f"{what} {_when(site.last_seen)}"
    if now:  # both times are the SuperLink's
        ago = dt.datetime.fromisoformat(now) - dt.datetime.fromisoformat(site.last_seen)
        text += f" ({_duration(ago.total_seconds())} ago)"
    return text


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def federation_page(view: FederationView) -> HTMLResponse:
    """The federation page.

    Parameters
    ----------
    view : FederationView
        Its data.
    """
    counts = ", ".join(
        f"{view.count(status)} {status}" for status in (ONLINE, OFFLINE, NEVER_CONNECTED)
    )
    intro = Html(
        f"<p>federation <strong>{esc(view.federation or 'not provisioned here')}</strong>; "
        f"{esc(view.superlink)}"
        f"{'; its clock ' + esc(_when(view.now)) if view.now else ''}; sites: {esc(counts)}.</p>"
        "<p>A site is matched to its SuperNode by the key it authenticates with. Its ε is "
        "the one in its last training reply of the newest run it took part in "
        "(over everything it ever released); ε left is what that reply said is left of "
        "the site's lifetime budget (per-run and per-federation caps stay with the site)."
        "</p>"
    )
    sites = table(
        "sites",
        ["site", "status", "last seen", "online since", "node id", "ε spent", "ε left", "run"],
        [
            [
                s.name,
                Html(f'<span class="{_status_class(s.status)}">{esc(s.status)}</span>'),
                _last_seen(s, view.now) or None,
                _when(s.online_since) or None,
                s.node_id or None,
                number(s.epsilon.spent, 3) if s.epsilon else None,
                number(s.epsilon.left, 3) if s.epsilon else None,
                link("/runs/" + path_part(s.epsilon.run), s.epsilon.run) if s.epsilon else None,
            ]
            for s in view.sites
        ],
    )
    parts = [intro, sites]
    if view.strangers:
        parts.append(
            table(
                "SuperNodes of no provisioned site",
                ["node id", "registered as", "key fingerprint", "status", "registered at"],
                [
                    [n.node_id, n.name or None, n.fingerprint, n.status, _when(n.registered_at)]
                    for n in view.strangers
                ],
            )
        )
    return FRAME.page("federation", parts, "/", api="/api/federation")


def _status_class(status: str) -> str:
    return {ONLINE: "ok", OFFLINE: "warn"}.get(status, "")


def runs_page(runs: list[RunSummary]) -> HTMLResponse:
    """The runs list.

    Parameters
    ----------
    runs : list of RunSummary
        Every run.
    """
    rows = [
        [
            link("/runs/" + path_part(r.name), r.name),
            r.status,
            f"{r.rounds_done}/{r.rounds_total}",
            _headline(r.final),
            number(max(r.epsilon_spent.values()), 3) if r.epsilon_spent else None,
            f"{r.model.name} v{r.model.version}" if r.model else None,
            r.updated,
        ]
        for r in runs
    ]
    headers = ["run", "status", "rounds", "metrics", "largest ε", "model", "updated"]
    return FRAME.page("runs", [table("runs", headers, rows)], "/runs", api="/api/runs")


def run_page(detail: RunDetail) -> HTMLResponse:
    """A run's page; it re-reads its JSON route while the run goes on.

    Parameters
    ----------
    detail : RunDetail
        The run.
    """
    s = detail.summary
    model = link("/models", f"{s.model.name} v{s.model.version}").text if s.model else "not yet"
    facts = Html(
        '<dl class="facts">'
        f"<dt>run key</dt><dd>{esc(s.run_key)}</dd>"
        f'<dt>status</dt><dd data-field="summary.status">{esc(s.status)}</dd>'
        f'<dt>rounds</dt><dd><span data-field="summary.rounds_done">{s.rounds_done}</span>'
        f" of {s.rounds_total} "
        f'<progress max="{s.rounds_total}" value="{s.rounds_done}" '
        f'data-field="summary.rounds_done" aria-label="rounds finished"></progress></dd>'
        f"<dt>DP</dt><dd>{'DP-SGD' if s.dp else 'off'}, δ={esc(s.delta)}, ε budget "
        f"{esc(s.epsilon_budget if s.epsilon_budget is not None else 'set by each site')}</dd>"
        f"<dt>model</dt><dd>{model}</dd>"
        f"<dt>folder</dt><dd>{esc(s.path)}</dd></dl>"
    )
    epsilon = table(
        "ε spent per site (last reported)",
        ["site", "ε spent", "ε budget"],
        [[site, number(e, 3), s.epsilon_budget] for site, e in sorted(s.epsilon_spent.items())],
    )
    refusals = table(
        "refusals by site and reason",
        ["site", "reason", "rounds refused", "which"],
        [[r.site, r.reason, len(r.rounds), ", ".join(map(str, r.rounds))] for r in detail.refusals],
    )
    rounds = table(
        "rounds",
        [
            "round",
            "sites trained",
            "wall time (s)",
            "sites' training (s)",
            "test set",
            "sites' validation",
            "refused",
        ],
        [
            [
                r.round,
                r.sites_trained,
                number(r.wall_seconds, 2),
                number(r.train_seconds, 2),
                _headline(r.global_test) or None,
                _headline(r.federated_evaluation) or None,
                len(r.refused),
            ]
            for r in detail.rounds
        ],
    )
    charts = Html(
        '<section class="charts" aria-label="charts">'
        + "".join(chart_slot(c.id, c.title).text for c in detail.charts)
        + "</section>"
    )
    poll = f"summary.status={IN_PROGRESS}" if s.status != FINISHED else ""
    return FRAME.page(
        f"run {s.name}",
        [facts, charts, epsilon, refusals, rounds],
        "/runs",
        api="/api/runs/" + path_part(s.name),
        poll_while=poll,
    )


def _version_form(view: ModelsView) -> Html:
    def select(name: str, label: str, chosen: str) -> str:
        options = "".join(
            f'<option value="{esc(v.key)}"{" selected" if v.key == chosen else ""}>'
            f"{esc(v.name)} v{v.version} ({esc(v.created)})</option>"
            for v in view.versions
        )
        field = f'<select id="{name}" name="{name}">{options}</select>'
        return f'<label for="{name}">{label}</label>{field}'

    return Html(
        '<form method="get" action="/models" class="diff">'
        + select("a", "compare", view.a)
        + select("b", "with", view.b)
        + '<button type="submit">compare metrics</button></form>'
    )


def models_page(view: ModelsView) -> HTMLResponse:
    """Every registry version, and a metrics diff of two.

    Parameters
    ----------
    view : ModelsView
        Its data.
    """
    versions = table(
        "registry versions",
        [
            "model",
            "version",
            "created",
            "run",
            "kind",
            "metrics",
            "δ",
            "ε per site",
            "signature",
            "served",
        ],
        [
            [
                v.name,
                v.version,
                v.created,
                v.run,
                v.kind,
                _headline(v.metrics),
                esc(v.delta),
                _epsilon_text(v.epsilon_per_site),
                Html(f'<span class="{"ok" if v.verified else "warn"}">{esc(v.signature)}</span>'),
                SERVED if v.served else "",
            ]
            for v in view.versions
        ],
    )
    parts = [Html(f"<p>served versions as known from {esc(view.served_by)}.</p>"), versions]
    if len(view.versions) > 1:
        parts.append(_version_form(view))
    if view.diff:
        parts.append(
            table(
                "metrics diff (second minus first)",
                ["metric", "first", "second", "change"],
                [[d.metric, d.a, d.b, d.change] for d in view.diff],
            )
        )
    return FRAME.page("models", parts, "/models", api="/api/models")


def inference_page(view: Traffic) -> HTMLResponse:
    """Requests per model and status over time, from the audit log (counts only).

    Parameters
    ----------
    view : Traffic
        Its data.
    """
    intro = Html(
        f"<p>{view.total} requests in {esc(view.source or 'no audit log configured')}"
        f"{f'; {view.unreadable} unreadable lines skipped' if view.unreadable else ''}. "
        "The log holds no feature and no prediction.</p>"
    )
    models = table(
        "requests per model",
        ["model", "requests", "served version (last answered)", "by outcome"],
        [
            [
                m.model,
                m.total,
                m.served_version,
                ", ".join(f"{k}: {n}" for k, n in m.by_code.items()),
            ]
            for m in view.models
        ],
    )
    chart = chart_slot(view.chart.id, view.chart.title)
    return FRAME.page("inference", [intro, models, chart], "/inference", api="/api/inference")


def make_coordinator_app(sources: CoordinatorSources, tokens: TokenStore) -> FastAPI:
    """The coordinator's console, read-only, every route behind a console token.

    Parameters
    ----------
    sources : CoordinatorSources
        Where it reads.
    tokens : TokenStore
        The token store.
    """
    console = CoordinatorConsole(sources)
    app = FastAPI(title="fedcare coordinator console", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def federation_html() -> HTMLResponse:
        return federation_page(console.federation())

    @app.get("/api/federation")
    def federation_json() -> Response:
        return api(console.federation())

    @app.get("/runs", response_class=HTMLResponse)
    def runs_html() -> HTMLResponse:
        return runs_page(console.runs())

    @app.get("/api/runs")
    def runs_json() -> Response:
        return api(console.runs())

    @app.get("/runs/{name}", response_class=HTMLResponse)
    def run_html(name: str) -> HTMLResponse:
        return run_page(console.run(name))

    @app.get("/api/runs/{name}")
    def run_json(name: str) -> Response:
        return api(console.run(name))

    @app.get("/models", response_class=HTMLResponse)
    def models_html(a: str = "", b: str = "") -> HTMLResponse:
        return models_page(console.models(a, b))

    @app.get("/api/models")
    def models_json(a: str = "", b: str = "") -> Response:
        return api(console.models(a, b))

    @app.get("/inference", response_class=HTMLResponse)
    def inference_html() -> HTMLResponse:
        return inference_page(console.traffic())

    @app.get("/api/inference")
    def inference_json() -> Response:
        return api(console.traffic())

    return secure(app, FRAME, tokens)
