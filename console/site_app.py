"""A hospital's console: its ε, its releases, its data check and its refusals, on loopback.

No patient data is on it: the ledger holds only accounting figures, the data check is
shown as counts by column and kind of problem, and a refusal as the public reason the
coordinator received.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from console.site_view import REFUSALS_SHOWN, SiteView, site_view
from console.web import Frame, Html, api, chart_slot, esc, number, secure, table
from deploy.supernode import SiteConfig
from privacy.tokens import TokenStore

FRAME = Frame("fedcare site console", (("/", "privacy and data"),))


def site_page(view: SiteView) -> HTMLResponse:
    """The site's one page.

    Parameters
    ----------
    view : SiteView
        Its data.
    """
    facts = Html(
        '<dl class="facts">'
        f"<dt>site</dt><dd>{esc(view.name)}</dd>"
        f"<dt>federation</dt><dd>{esc(view.federation)}</dd>"
        f"<dt>lifetime ε</dt><dd>{number(view.epsilon_spent, 3)} spent of "
        f"{esc(view.epsilon_budget)} (δ={esc(view.delta)}), "
        f"{number(view.epsilon_remaining, 3)} left "
        f'<meter min="0" max="{view.epsilon_budget}" value="{view.epsilon_spent}" '
        'aria-label="share of the budget spent"></meter></dd></dl>'
    )
    caps = Html(
        f"<p>caps: per federation {esc(view.epsilon_per_federation or 'none')}, "
        f"per run {esc(view.epsilon_per_run or 'none')}. A run's and a federation's ε count "
        "their own releases; the lifetime ε composes every release.</p>"
    )
    federations = table(
        "ε per federation",
        ["federation", "runs", "ε (its releases)"],
        [[f.federation, f.runs, number(f.epsilon, 3)] for f in view.federations],
    )
    runs = table(
        "ε per run",
        ["federation", "run", "rounds", "steps", "ε (its releases)", "lifetime ε after"],
        [
            [
                r.federation,
                r.run,
                r.rounds,
                r.steps,
                number(r.epsilon, 3),
                number(r.epsilon_after, 3),
            ]
            for r in view.runs
        ],
    )
    releases = table(
        "releases",
        ["run", "round", "what", "federation", "σ", "sampling rate", "steps", "lifetime ε after"],
        [
            [
                r.run,
                r.round,
                "DP-SGD" if r.is_training else "statistics",
                r.federation,
                number(r.noise_multiplier, 3),
                number(r.sample_rate, 5),
                r.steps,
                number(r.epsilon_after, 3),
            ]
            for r in view.releases
        ],
    )
    check = view.check
    labels = ", ".join(f"{k}: {n}" for k, n in check.label_counts.items())
    data = Html(
        f"<h2>data check (now)</h2><p>{check.rows} rows"
        f"{'; labels ' + esc(labels) if labels else ''}"
        f"; {sum(p.count for p in check.problems)} problem(s).</p>"
    )
    problems = table(
        "problems by column and kind (values masked)",
        ["column", "problem", "count"],
        [[p.column or "whole file", p.problem, p.count] for p in check.problems],
    )
    sent = view.refusals
    refused = Html(
        f"<h2>refusals sent</h2><p>{sent.total} refusal(s) recorded"
        f"{f'; {sent.unreadable} unreadable line(s)' if sent.unreadable else ''}"
        ", each with the reason the coordinator received.</p>"
    )
    by_code = table(
        "refusals by code", ["code", "count"], [[c, n] for c, n in sent.by_code.items()]
    )
    recent = table(
        f"refusals, newest first (at most {REFUSALS_SHOWN})",
        ["time", "message", "code", "federation", "run", "round", "reason"],
        [
            [r.time, r.message_type, r.code, r.federation, r.run, r.round, r.reason]
            for r in sent.recent
        ],
    )
    return FRAME.page(
        f"site {view.name}",
        [
            facts,
            chart_slot(view.chart.id, view.chart.title),
            caps,
            federations,
            runs,
            releases,
            data,
            problems,
            refused,
            by_code,
            recent,
        ],
        "/",
        api="/api/site",
    )


def make_site_app(cfg: SiteConfig, tokens: TokenStore) -> FastAPI:
    """The site's console, read-only, every route behind a console token.

    Parameters
    ----------
    cfg : SiteConfig
        The site's ``site.toml``.
    tokens : TokenStore
        The token store.
    """
    app = FastAPI(title="fedcare site console", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def site_html() -> HTMLResponse:
        return site_page(site_view(cfg))

    @app.get("/api/site")
    def site_json() -> Response:
        return api(site_view(cfg))

    return secure(app, FRAME, tokens)
