"""The `fedcare` command: one entry point for coordinators, hospitals and researchers."""

from __future__ import annotations

import time
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table

from cli.deploy import coordinator_app, provision_app, site_app
from cli.output import fail, print_error
from server.settings import CLASS_WEIGHTS, PARTITIONS, STRATEGIES, RunSettings, SettingsError

app = typer.Typer(
    help="fedcare: privacy-preserving federated learning for hospitals.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
# The options' defaults and choices are RunSettings' (server/settings.py), never literals.
DEFAULTS = RunSettings()
# Canaries per site for `simulate --audit`: one per direction of Breast Cancer's 20 features.
AUDIT_CANARIES = 20


def _default_out(prefix: str) -> Path:
    return Path("fedcare-runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_data_dir(data_dir: Path) -> int:
    """Check the folder, the schema and every site file before any federation starts.

    A researcher's own files fail here, in seconds, with every problem listed, rather than
    inside the simulation. Returns the number of sites.
    """
    from models.data.kinds.registry import get_kind, load_schema
    from models.data.schema import SchemaError
    from models.data.tables import SiteDataError
    from simulations.prepare import SCHEMA_FILE, find_test_set, site_files

    try:
        schema = load_schema(data_dir / SCHEMA_FILE)
        kind = get_kind(schema)
        files = site_files(data_dir, kind)
    except (SchemaError, SiteDataError) as err:
        raise fail(err, 2) from None
    if not files:
        raise fail(f"{data_dir}: no site files ({kind.name} data: {kind.sources} per site)", 2)
    test = find_test_set(data_dir, kind)
    failed = False
    for path in files + ([test] if test else []):
        try:
            kind.load(path, schema)
        except SiteDataError as err:
            print_error(err)
            failed = True
    if failed:
        raise typer.Exit(2)
    return len(files)


def _check_audit(dataset: str, data_dir: Path | None, canaries: int) -> None:
    """Refuse an audit the simulation cannot make canaries for, before anything runs."""
    from simulations.canaries import CanaryError, bounded_features
    from simulations.datasets import load_dataset

    if data_dir is not None:
        raise fail(
            "--audit puts canaries into simulated sites made from --dataset; it does not "
            "change the files of --data-dir",
            2,
        )
    try:
        bounded_features(load_dataset(dataset).schema, canaries)
    except (CanaryError, ValueError) as err:
        raise fail(err, 2) from None


@app.command()
def simulate(
    dataset: str = typer.Option(
        DEFAULTS.dataset,
        help="Built-in data set: breast_cancer, diabetes (tables), digits (images), "
        "vitals (synthetic vital-sign series), notes (synthetic clinical notes).",
    ),
    data_dir: Path | None = typer.Option(
        None,
        help="Your own hospitals: a folder with schema.toml and one site source per site: "
        "a CSV/Parquet table, or as the schema's data kind says (.npz or PNG folder for "
        "images; see docs/MODELS.md); test.*, if present, is the global test set. "
        "Overrides --dataset and --sites.",
        exists=True,
        file_okay=False,
    ),
    sites: int = typer.Option(DEFAULTS.sites, min=1, help="Number of simulated hospitals."),
    partition: str = typer.Option(
        DEFAULTS.partition,
        click_type=click.Choice(PARTITIONS),
        help="How the data is split across sites.",
    ),
    alpha: float = typer.Option(
        DEFAULTS.alpha, min=0.001, help="Dirichlet concentration (dirichlet, size)."
    ),
    rounds: int = typer.Option(DEFAULTS.num_server_rounds, min=1, help="Federated rounds."),
    local_epochs: int = typer.Option(DEFAULTS.local_epochs, min=1, help="Local epochs per round."),
    epsilon: float = typer.Option(
        DEFAULTS.epsilon, min=0.01, help="Each site's ε budget for the whole run."
    ),
    delta: float = typer.Option(DEFAULTS.delta, help="δ of each site's accounting (below 1/n)."),
    statistics_epsilon_share: float = typer.Option(
        DEFAULTS.statistics_epsilon_share,
        min=0.0,
        max=0.99,
        help="Share of each site's ε the noisy federated statistics may cost; 0: none are "
        "released and features are scaled by their declared ranges.",
    ),
    dp: bool = typer.Option(DEFAULTS.dp, "--dp/--no-dp", help="Train with DP-SGD at the sites."),
    strategy: str = typer.Option(
        DEFAULTS.strategy, click_type=click.Choice(STRATEGIES), help="Aggregation strategy."
    ),
    model: str = typer.Option(
        DEFAULTS.model,
        help="Model family: auto (the data's default), logreg, mlp (tables, notes), "
        "cox_linear, cox_mlp (survival), cnn (images), gru, lstm, attention (sequences).",
    ),
    hidden: str = typer.Option(DEFAULTS.hidden, help="MLP hidden widths, e.g. 64,32."),
    class_weights: str = typer.Option(
        DEFAULTS.class_weights,
        click_type=click.Choice(CLASS_WEIGHTS),
        help="Class-weighted loss for imbalanced classes (balanced: weights from the "
        "federation's pooled class counts).",
    ),
    learning_rate: float = typer.Option(
        DEFAULTS.learning_rate, min=1e-6, help="Local SGD learning rate."
    ),
    batch_size: int = typer.Option(DEFAULTS.batch_size, min=1, help="Expected local batch size."),
    max_grad_norm: float = typer.Option(DEFAULTS.max_grad_norm, min=1e-6, help="DP clipping norm."),
    seed: int = typer.Option(
        DEFAULTS.seed, help="Seed for the split, the initial model and the noise."
    ),
    out: Path | None = typer.Option(None, help="Output folder (default fedcare-runs/sim-<time>)."),
    resume: bool = typer.Option(
        DEFAULTS.resume, help="Continue the run in --out from its last checkpoint."
    ),
    personalize_epochs: int = typer.Option(
        DEFAULTS.personalize_epochs,
        min=0,
        help="After the last round, each site fine-tunes the global model on its own data "
        "for this many epochs (DP, within its budget); only metrics leave the site.",
    ),
    audit: bool = typer.Option(
        False,
        help="Put audit canaries into the simulated sites and bound each site's ε from "
        "below after the run (fedcare audit; docs/PRIVACY_AUDIT.md).",
    ),
    audit_canaries: int = typer.Option(
        AUDIT_CANARIES, min=2, help="Canaries per site with --audit."
    ),
    verbose: bool = typer.Option(False, help="Show Flower's and Ray's own logs."),
) -> None:
    """Run a federation of simulated hospitals on this machine and register its model."""
    out_dir = (out or _default_out("sim")).resolve()
    if data_dir is not None:
        sites = _check_data_dir(data_dir)
    if audit:
        _check_audit(dataset, data_dir, audit_canaries)
    try:
        settings = RunSettings(
            mode="simulation",
            num_server_rounds=rounds,
            local_epochs=local_epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            strategy=strategy,
            model=model,
            hidden=hidden,
            class_weights=class_weights,
            dp=dp,
            max_grad_norm=max_grad_norm,
            epsilon=epsilon,
            delta=delta,
            statistics_epsilon_share=statistics_epsilon_share,
            min_sites=min(DEFAULTS.min_sites, sites),
            dataset=dataset,
            data_dir=str(data_dir.resolve()) if data_dir else "",
            sites=sites,
            partition=partition,
            alpha=alpha,
            seed=seed,
            out_dir=str(out_dir),
            resume=resume,
            personalize_epochs=personalize_epochs,
            audit_canaries=audit_canaries if audit else 0,
        )
    except SettingsError as err:
        raise typer.BadParameter(str(err)) from err
    _run_simulation(settings, verbose)
    if audit:
        from cli.audit import audit as audit_command

        audit_command(out_dir)


def _run_simulation(settings: RunSettings, verbose: bool) -> dict:
    """Run, print progress and the outcome, and return the report (exit 2 on failure)."""
    from privacy.dp_sgd import ACCOUNTANT
    from server.federation.run_state import FederationError
    from simulations.runner import run_simulated_federation

    source = settings.data_dir or settings.dataset
    privacy = (
        f"DP ε={settings.epsilon} per site ({ACCOUNTANT.upper()} accountant, "
        f"noise seeded from --seed {settings.seed})"
        if settings.dp
        else "no DP"
    )
    console.print(
        f"[bold]fedcare simulate[/]: {settings.sites} sites, {source}, "
        f"partition {settings.partition_done}, {settings.num_server_rounds} rounds, {privacy} "
        f"→ {settings.out_dir}"
    )
    try:
        outcome = run_simulated_federation(settings, progress=console.print, verbose=verbose)
    except (FederationError, ValueError) as err:
        raise fail(err, 2) from None
    _print_outcome(outcome.report)
    return outcome.report


def _print_outcome(report: dict) -> None:
    table = Table(title=f"result ({report['final_source'].replace('_', ' ')})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(report["final"].items()):
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    privacy = report["privacy"]
    if privacy["dp"]:
        spent = ", ".join(f"{s}: {e:.3f}" for s, e in sorted(privacy["epsilon_spent"].items()))
        console.print(
            f"ε spent per site (budget {privacy['epsilon_budget']}, δ={privacy['delta']}): {spent}"
        )
    _print_personalization(report.get("personalization", {}))
    model = report["model"]
    console.print(f"model: {model['name']} v{model['version']} at {model['path']}")
    console.print(
        f"report: {Path(model['registry']).parent / 'report.json'}; plot: {report['plot']}"
    )


def _print_personalization(personalization: dict) -> None:
    """Per site: the global and the personalized model on its validation part, and the ε."""
    if not personalization:
        return
    keys = [
        k
        for k in ("roc_auc", "accuracy", "c_index", "mse", "mae")
        if k in next(iter(personalization.values()))["global"]
    ]
    table = Table(title="personalization (each site's validation part)")
    table.add_column("site")
    for key in keys:
        table.add_column(f"{key} global", justify="right")
        table.add_column(f"{key} personalized", justify="right")
    table.add_column("ε spent on it", justify="right")
    for site, entry in personalization.items():
        cells = [f"{entry[part][key]:.4f}" for key in keys for part in ("global", "personalized")]
        table.add_row(site, *cells, f"{entry['epsilon']:.3f}")
    console.print(table)


@app.command()
def demo(
    out: Path | None = typer.Option(None, help="Output folder (default fedcare-runs/demo-<time>)."),
    rounds: int = typer.Option(DEFAULTS.num_server_rounds, min=1, help="Federated rounds."),
) -> None:
    """Train the embedded default federation, then predict through the encrypted service.

    Five simulated hospitals on Breast Cancer Wisconsin with DP ε=1, then the registered
    model answering through the encrypted inference service.
    """
    from simulations.demo_inference import run_inference_demo

    out_dir = (out or _default_out("demo")).resolve()
    settings = RunSettings(num_server_rounds=rounds, out_dir=str(out_dir))
    report = _run_simulation(settings, verbose=False)
    console.rule("encrypted inference")
    run_inference_demo(Path(report["model"]["registry"]), console)


from cli.audit import audit  # noqa: E402
from cli.console import coordinator_console  # noqa: E402
from cli.evaluate import evaluate  # noqa: E402
from cli.inference import keys_app, serve, tokens_app  # noqa: E402
from cli.predict import predict  # noqa: E402

app.command("serve")(serve)
app.add_typer(keys_app, name="keys")
app.add_typer(tokens_app, name="tokens")
app.command("predict")(predict)
app.command("evaluate")(evaluate)
app.command("audit")(audit)
app.command("console")(coordinator_console)

app.add_typer(provision_app, name="provision")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(site_app, name="site")


if __name__ == "__main__":
    app()
