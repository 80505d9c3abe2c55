"""`fedcare provision | coordinator | site`: the deployment commands (docs/DEPLOYMENT.md)."""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import asdict, replace
from pathlib import Path

import typer
from flwr.common.config import parse_config_args
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.console import site_console
from cli.output import fail
from deploy.process import ManagedProcess
from deploy.provision import DEFAULT_PORT, ProvisionError, load_federation, provision
from deploy.site_check import DEFAULT_DELTA, DEFAULT_MIN_ROWS, SiteCheck, check_site_data
from deploy.site_supervisor import SiteEnded, supervise_site
from deploy.superlink import CONNECTION, CoordinatorError, open_coordinator
from deploy.supernode import (
    SiteAlreadyRunning,
    SiteConfig,
    check_site,
    load_site_config,
    site_ledger,
)
from models.data.site_config import SiteConfigError
from models.data.tables import MAX_REPORTED_PROBLEMS
from privacy.pki import PKIError

console = Console()
provision_app = typer.Typer(help="Make a federation's keys and certificates.")
coordinator_app = typer.Typer(help="The coordinator: SuperLink and runs.", no_args_is_help=True)
site_app = typer.Typer(help="A hospital's agent: check, start, budget.", no_args_is_help=True)
site_app.command("console")(site_console)
# The most dropped rows `site check` lists by number.
MAX_SHOWN_ROWS = 20


def _split(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


@provision_app.callback(invoke_without_command=True)
def provision_command(
    federation: str = typer.Option(..., help="The federation's name."),
    sites: str = typer.Option(..., help="Comma-separated site names, e.g. a,b,c."),
    out: Path = typer.Option(..., help="Folder for the CA, the coordinator and the sites."),
    dns: str = typer.Option(
        "localhost", "--san-dns", help="DNS names of the SuperLink certificate."
    ),
    ip: str = typer.Option(
        "127.0.0.1", "--san-ip", help="IP addresses of the SuperLink certificate."
    ),
    address: str | None = typer.Option(
        None,
        help=f"host:port the sites dial (default: first DNS name, else IP, port {DEFAULT_PORT}).",
    ),
    port: int = typer.Option(DEFAULT_PORT, help="The SuperLink's port."),
    force: bool = typer.Option(False, help="Replace existing private keys (all of them)."),
) -> None:
    """Make a federation's keys and certificates, in one folder per participant.

    A CA, the SuperLink's TLS certificate, each site's authentication key pair and the
    coordinator's model-signing key.
    """
    try:
        result = provision(
            federation,
            _split(sites),
            out,
            san_dns=_split(dns),
            san_ips=_split(ip),
            force=force,
            superlink_address=address,
            port=port,
        )
    except (ProvisionError, PKIError) as err:
        raise fail(err) from None
    console.print(result.summary())


def _stop_on_signals() -> threading.Event:
    """An event that Ctrl-C or SIGTERM sets."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _wait_until_stopped(process: ManagedProcess) -> None:
    """Block until Ctrl-C / SIGTERM or the process exits; then stop it by PID."""
    ended = process.wait_for_end(_stop_on_signals(), poll=1.0)
    process.stop()
    if ended is not None:
        console.print(ended.log_text()[-3000:])
        raise fail(f"{ended.name} exited with {ended.popen.returncode}")


@coordinator_app.command("start")
def coordinator_start(
    folder: Path = typer.Option(
        ..., "--dir", help="The coordinator's folder made by `fedcare provision`."
    ),
    host: str = typer.Option("0.0.0.0", help="Address the SuperLink listens on."),
    port: int | None = typer.Option(None, help="Port (default: the provisioned address's)."),
    keep_state: bool = typer.Option(
        False,
        "--keep-state",
        help="Keep runs and registered keys on disk across restarts (state/superlink.db); "
        "costs ~2.5x the SuperLink's CPU per request. Default: in memory; after a restart "
        "the sites' `site start` rejoins by itself.",
    ),
) -> None:
    """Run the SuperLink and register every provisioned site's public key; Ctrl-C stops it.

    `flower-superlink` with TLS, SuperNode authentication and no runtime installs; its
    state in memory (Flower's default) unless --keep-state.
    """
    try:
        coordinator = open_coordinator(folder, host=host, port=port, keep_state=keep_state)
        coordinator.start()
    except (ProvisionError, CoordinatorError) as err:
        raise fail(err) from None
    try:
        registered = coordinator.register_sites()
    except CoordinatorError as err:
        coordinator.stop()
        raise fail(err) from None
    console.print(
        f"SuperLink up at {coordinator.address} (PID {coordinator.process.pid}); "
        f"log {coordinator.settings.log_path}"
    )
    for site, node in registered.items():
        console.print(f"  site {site}: {'registered before' if node == 'already' else node}")
    console.print(
        f"run a federation: FLWR_HOME={coordinator.settings.flwr_home} "
        f'flwr run . {CONNECTION} --run-config \'mode="deployment" schema-path="…"\''
    )
    _wait_until_stopped(coordinator.process)


@coordinator_app.command("run")
def coordinator_run(
    folder: Path = typer.Option(..., "--dir", help="The coordinator's folder."),
    app_dir: Path = typer.Option(Path("."), "--app", help="The Flower App (fedcare's root)."),
    run_config: str = typer.Option(
        "", help="Run config overrides, as for `flwr run --run-config`, e.g. 'schema-path=\"…\"'."
    ),
    timeout: float = typer.Option(3600.0, help="Seconds to wait for the run to finish."),
) -> None:
    """`flwr run` against the running SuperLink; unlike it, fails unless the run completed.

    It adds mode="deployment", the federation's name and its signing key to the run config.
    """
    try:
        coordinator = open_coordinator(folder)
        fed = load_federation(folder)
        config: dict[str, object] = {
            "mode": "deployment",
            "federation": fed.federation,
            "signing-key": str(fed.signing_key.resolve()),
        }
        config.update(parse_config_args([run_config]) if run_config.strip() else {})
        run = coordinator.run(app_dir.resolve(), config, timeout=timeout)
    except (ProvisionError, CoordinatorError, ValueError) as err:
        raise fail(err) from None
    console.print(f"run {run['run-id']}: {run['status']} in {run.get('elapsed', 0):.0f} s")


def _site(config: Path):
    try:
        return load_site_config(config)
    except SiteConfigError as err:
        raise fail(err) from None


def _cap(value: float | None) -> str:
    return "no cap" if value is None else f"cap {value:g}"


def _print_budget(summary: dict) -> None:
    console.print(
        f"privacy budget: lifetime ε spent {summary['epsilon_spent']:.3f} of "
        f"{summary['epsilon_budget']:g} (δ={summary['delta']:g}), "
        f"left {summary['epsilon_remaining']:.3f}; per federation "
        f"{_cap(summary['epsilon_per_federation'])}, per run {_cap(summary['epsilon_per_run'])}"
    )


@site_app.command("check")
def site_check(
    config: Path | None = typer.Option(
        None, help="The site's site.toml (its data, schema, δ, budget and approved apps)."
    ),
    data: Path | None = typer.Option(
        None, help="A data file to check (instead of site.toml's; needs --schema without it)."
    ),
    schema: Path | None = typer.Option(
        None, help="The federation's schema.toml (instead of site.toml's)."
    ),
    delta: float | None = typer.Option(
        None, help=f"δ of the site's accounting (default: site.toml's, else {DEFAULT_DELTA:g})."
    ),
    min_rows: int = typer.Option(
        DEFAULT_MIN_ROWS, min=1, help="The fewest examples a site may have."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
) -> None:
    """Validate a site's data against the federation's schema; exit 1 on any problem.

    With --config, the site's own files and its privacy budget; or without a site.toml,
    --data FILE --schema schema.toml. Data-quality warnings are shown by count, never by
    value; they do not fail the check.
    """
    result = _check(config, data, schema, delta, min_rows)
    if as_json:
        print(json.dumps(asdict(result) | {"ok": result.ok}, indent=2))
    else:
        _print_check(result)
    if not result.ok:
        raise typer.Exit(1)


def _check(
    config: Path | None,
    data: Path | None,
    schema: Path | None,
    delta: float | None,
    min_rows: int,
) -> SiteCheck:
    """What `site check` checks: site.toml's files, or --data and --schema alone."""
    if config is None:
        if data is None or schema is None:
            raise fail("give --config site.toml, or --data FILE and --schema schema.toml")
        delta = DEFAULT_DELTA if delta is None else delta
        return check_site_data(data, schema, delta, min_rows=min_rows)
    cfg = _site(config)
    cfg = replace(
        cfg,
        data_path=data or cfg.data_path,
        schema_path=schema or cfg.schema_path,
        delta=cfg.delta if delta is None else delta,
    )
    return check_site(cfg, min_rows)


def _print_check(result: SiteCheck) -> None:
    """A check's findings as lines: counts, dropped rows, warnings, problems, budget."""
    console.print(f"rows: {result.rows}")
    if result.label_counts:
        balance = ", ".join(f"{k}: {v}" for k, v in result.label_counts.items())
        console.print(f"labels: {balance}")
    if result.dropped_rows:
        shown = ", ".join(str(r) for r in result.dropped_rows[:MAX_SHOWN_ROWS])
        more = ", …" if len(result.dropped_rows) > MAX_SHOWN_ROWS else ""
        console.print(
            f"dropped: {len(result.dropped_rows)} row(s) with a missing value "
            f"(missing = drop_row): rows {shown}{more}"
        )
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for problem in result.problems[:MAX_REPORTED_PROBLEMS]:
        console.print(f"[red]problem:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if len(result.problems) > MAX_REPORTED_PROBLEMS:
        console.print(f"… and {len(result.problems) - MAX_REPORTED_PROBLEMS} more")
    if result.budget:
        _print_budget(result.budget)
        for digest in result.approved_apps:
            console.print(f"approved app (FAB sha256): {digest}")
        if not result.approved_apps:
            console.print("[yellow]no approved app:[/] the site refuses every run")
    console.print("[green]ok[/]" if result.ok else f"{len(result.problems)} problem(s)")


@site_app.command("start")
def site_start(
    config: Path = typer.Option(..., help="The site's site.toml."),
    warm: bool = typer.Option(
        True,
        "--warm/--flower-isolation",
        help="The site's own executor (approved apps only, imports once) or Flower's "
        "default: a fresh flwr-clientapp process per message, running the run's code.",
    ),
) -> None:
    """Run this site's SuperNode (TLS, authentication key, node config). Stops on Ctrl-C.

    By default with the warm site runtime: an executor that imports the site's ClientApp
    once, runs it only for approved apps, and forks a child per message. A SuperNode that
    ends by itself after it had joined (the coordinator restarted) is started again.
    """
    cfg = _site(config)
    try:
        supervise_site(
            cfg,
            _stop_on_signals(),
            warm=warm,
            on_start=lambda process: _print_site_processes(cfg, process),
            on_restart=lambda why: console.print(f"[yellow]{escape(why)}[/]"),
        )
    except SiteAlreadyRunning as err:
        raise fail(err) from None
    except SiteEnded as err:
        console.print(err.process.log_text()[-3000:])
        raise fail(err) from None


def _print_site_processes(cfg: SiteConfig, process: ManagedProcess) -> None:
    console.print(
        f"SuperNode for {cfg.name} → {cfg.superlink} (PID {process.pid}); log {process.log_path}"
    )
    for companion in process.companions:
        console.print(
            f"{companion.name} (PID {companion.pid}), approving "
            f"{len(cfg.approved_apps)} app(s); log {companion.log_path}"
        )


@site_app.command("budget")
def site_budget(
    config: Path = typer.Option(..., help="The site's site.toml."),
    as_json: bool = typer.Option(False, "--json", help="Print the ledger summary as JSON."),
) -> None:
    """ε spent per federation and run, the caps, and what is left of the lifetime budget."""
    summary = site_ledger(_site(config)).summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    federations = Table("federation", "runs", "ε of its releases")
    for fed in summary["federations"]:
        federations.add_row(fed["federation"], str(fed["runs"]), f"{fed['epsilon']:.3f}")
    runs = Table("federation", "run", "rounds", "ε of the run", "lifetime ε after")
    for run in summary["runs"]:
        runs.add_row(
            run["federation"],
            run["run"],
            str(run["rounds"]),
            f"{run['epsilon']:.3f}",
            f"{run['epsilon_after']:.3f}",
        )
    console.print(federations)
    console.print(runs)
    _print_budget(summary)
