"""A hospital's page: its ledger's ε, releases, data check and the refusals it sent.

Everything comes from the site's own files on each request: the privacy ledger and the
refusals (``refusals.jsonl``) in its state folder, and the check `fedcare site check`
makes. No value of a record is shown: the data check is counted by column and kind of
problem, with numbers and quoted values masked out of the messages, and a refusal shows
only the public reason the coordinator received.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from client.site import REFUSALS_FILE, RefusalRecord
from console.charts import Chart, Series, Threshold
from deploy.supernode import SiteConfig, check_site, site_ledger
from privacy.ledger import Release

# A problem reads "<file>[, row N][, column 'c']: <message>" (models/data/tables.py).
_PROBLEM = re.compile(r"^.*?(?:, row \d+)?(?:, column '(?P<column>[^']*)')?: (?P<message>.*)$")
# Quoted text and numbers in a message may be a record's values.
_VALUE = re.compile(r"'[^']*'|\"[^\"]*\"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
REFUSALS_SHOWN = 50


@dataclass(frozen=True)
class RunEpsilon:
    """ε of one run's releases.

    Parameters
    ----------
    federation, run : str
        The run and its federation.
    rounds : int
        Its releases.
    steps : int
        Their optimizer steps.
    epsilon : float
        ε of this run's releases alone (what a per-run cap limits).
    epsilon_after : float
        The site's lifetime ε after the run's last release.
    """

    federation: str
    run: str
    rounds: int
    steps: int
    epsilon: float
    epsilon_after: float


@dataclass(frozen=True)
class FederationEpsilon:
    """ε of one federation's releases.

    Parameters
    ----------
    federation : str
        The federation.
    runs : int
        Its runs.
    epsilon : float
        ε of its releases alone (what a per-federation cap limits).
    """

    federation: str
    runs: int
    epsilon: float


@dataclass(frozen=True)
class ProblemCount:
    """How many records have one kind of problem in one column.

    Parameters
    ----------
    column : str
        The column ('' for the whole file).
    problem : str
        The problem, values masked.
    count : int
        How often it was found.
    """

    column: str
    problem: str
    count: int


@dataclass(frozen=True)
class DataCheck:
    """The site's data against the federation's schema, checked now.

    Parameters
    ----------
    rows : int
        Examples read.
    label_counts : dict of str to int
        Examples per class.
    problems : list of ProblemCount
        Problems by column and kind.
    """

    rows: int
    label_counts: dict[str, int]
    problems: list[ProblemCount]


@dataclass(frozen=True)
class SiteRefusals:
    """The refusals the site sent, as its state folder keeps them.

    Parameters
    ----------
    total : int
        Refusals recorded.
    by_code : dict of str to int
        Refusals per refusal code.
    recent : list of RefusalRecord
        The newest ones, newest first (at most ``REFUSALS_SHOWN``).
    unreadable : int
        Lines that are no record (a write cut short).
    """

    total: int
    by_code: dict[str, int]
    recent: list[RefusalRecord]
    unreadable: int


@dataclass(frozen=True)
class SiteView:
    """The site page.

    Parameters
    ----------
    name, federation : str
        The site and its federation.
    epsilon_budget, delta : float
        Its lifetime ε budget and δ.
    epsilon_per_run, epsilon_per_federation : float or None
        Its caps on one run's and one federation's ε (None: not capped).
    epsilon_spent, epsilon_remaining : float
        Its lifetime ε spent (every release composed), and what is left.
    federations : list of FederationEpsilon
        ε per federation.
    runs : list of RunEpsilon
        ε per run.
    releases : list of Release
        Every release, oldest first.
    check : DataCheck
        The data check.
    refusals : SiteRefusals
        The refusals it sent.
    chart : Chart
        Lifetime, federation and run ε after each release, with the budget lines.
    """

    name: str
    federation: str
    epsilon_budget: float
    delta: float
    epsilon_per_run: float | None
    epsilon_per_federation: float | None
    epsilon_spent: float
    epsilon_remaining: float
    federations: list[FederationEpsilon]
    runs: list[RunEpsilon]
    releases: list[Release]
    check: DataCheck
    refusals: SiteRefusals
    chart: Chart


def count_problems(problems: list[str]) -> list[ProblemCount]:
    """Problems counted by column and message, rows and values left out.

    Parameters
    ----------
    problems : list of str
        The data check's problems, as `fedcare site check` prints them.
    """
    counts: Counter[tuple[str, str]] = Counter()
    for text in problems:
        match = _PROBLEM.match(text)
        column = (match.group("column") or "") if match else ""
        message = match.group("message") if match else text
        counts[(column, _VALUE.sub("…", message))] += 1
    return [ProblemCount(c, p, n) for (c, p), n in sorted(counts.items())]


def read_refusals(state_dir: Path) -> SiteRefusals:
    """The refusals in the site's ``refusals.jsonl``, counted by code, the newest listed.

    Parameters
    ----------
    state_dir : Path
        The site's state folder (no file yet: no refusal).
    """
    path = state_dir / REFUSALS_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    records, unreadable = [], 0
    for line in lines:
        try:
            records.append(RefusalRecord.from_json(line))
        except (ValueError, KeyError, TypeError):
            unreadable += 1
    return SiteRefusals(
        total=len(records),
        by_code=dict(sorted(Counter(r.code for r in records).items())),
        recent=records[::-1][:REFUSALS_SHOWN],
        unreadable=unreadable,
    )


def site_view(cfg: SiteConfig) -> SiteView:
    """The site page's data, read from the site's ledger and data now.

    Parameters
    ----------
    cfg : SiteConfig
        The site's ``site.toml``.
    """
    ledger = site_ledger(cfg)
    checked = check_site(cfg)
    releases = list(ledger.releases)
    summary = ledger.summary()
    steps = list(enumerate(releases, start=1))
    series = [
        Series("lifetime", [(float(i), r.epsilon_after) for i, r in steps]),
        Series("its federation", [(float(i), r.federation_epsilon_after) for i, r in steps]),
        Series("its run", [(float(i), r.run_epsilon_after) for i, r in steps]),
    ]
    caps = (
        ("lifetime budget", ledger.epsilon_budget),
        ("per-federation cap", ledger.epsilon_per_federation),
        ("per-run cap", ledger.epsilon_per_run),
    )
    chart = Chart(
        "epsilon",
        "ε after each release",
        "release",
        "ε",
        series,
        [Threshold(name, cap) for name, cap in caps if cap is not None],
    )
    return SiteView(
        name=cfg.name,
        federation=cfg.federation,
        epsilon_budget=ledger.epsilon_budget,
        delta=ledger.delta,
        epsilon_per_run=ledger.epsilon_per_run,
        epsilon_per_federation=ledger.epsilon_per_federation,
        epsilon_spent=summary["epsilon_spent"],
        epsilon_remaining=summary["epsilon_remaining"],
        federations=[
            FederationEpsilon(f["federation"], f["runs"], f["epsilon"])
            for f in summary["federations"]
        ],
        runs=[
            RunEpsilon(
                r["federation"], r["run"], r["rounds"], r["steps"], r["epsilon"], r["epsilon_after"]
            )
            for r in summary["runs"]
        ],
        releases=releases,
        check=DataCheck(checked.rows, checked.label_counts, count_problems(checked.problems)),
        refusals=read_refusals(cfg.state_dir),
        chart=chart,
    )
