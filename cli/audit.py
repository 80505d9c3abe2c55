"""`fedcare audit`: the one-run privacy audit of a simulated run (an ε lower bound per site)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cli.output import fail

console = Console()


def audit(
    run_dir: Path = typer.Argument(
        ..., exists=True, file_okay=False, help="A finished `fedcare simulate --audit` run's --out."
    ),
) -> None:
    """Bound each site's ε from below with the run's canaries; add it to report.json/png.

    The bound holds with 95% confidence and is a lower bound: the accounted ε is the
    guarantee, the audit shows how much of it the coordinator could observe.
    """
    from simulations.audit import audit_run
    from simulations.canaries import CanaryError

    try:
        entry = audit_run(run_dir.resolve())
    except (FileNotFoundError, CanaryError) as err:
        raise fail(err, 2) from None
    print_audit(entry)


def print_audit(entry: dict) -> None:
    """The audit's table: per site, guesses, lower bound, ceiling and accounted ε."""
    table = Table(title=f"privacy audit ({entry['confidence']:.0%} confidence lower bounds)")
    for column in (
        "site",
        "canaries",
        "right / guesses",
        "ε lower bound",
        "ceiling",
        "accounted ε",
    ):
        table.add_column(column, justify="left" if column == "site" else "right")
    for site, result in sorted(entry["sites"].items()):
        accounted = result["accounted_epsilon"]
        table.add_row(
            site,
            str(result["canaries"]),
            f"{result['correct']} / {result['guesses']}",
            f"{result['epsilon_lower_bound']:.3f}",
            f"{result['largest_certifiable']:.3f}",
            "∞ (no DP)" if accounted is None else f"{accounted:.3f}",
        )
    console.print(table)
