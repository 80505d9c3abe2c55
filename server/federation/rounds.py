"""The coordinator's round loop: train, aggregate, evaluate and checkpoint each round.

The run is opened (or resumed) first and its model registered at the end. The loop
drives one of Flower's strategies through its ``configure_*``/``aggregate_*`` methods
instead of ``strategy.start``, because the coordinator must also checkpoint after every
round (and resume), record each site's ε and refusals by name, and evaluate on a global
test set when there is one. After the last round the sites may personalize the global
model (``personalize-epochs``). Each step is a function over a :class:`RunState`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from models.data.features import Standardization
from models.data.kinds.registry import load_schema
from models.families import build_model
from models.spec import ModelSpec, get_weights
from privacy.dp_sgd import ACCOUNTANT
from protocol.federation import (
    NUM_EXAMPLES,
    PERSONALIZE,
    EvaluateReply,
    PersonalizeReply,
    RoundConfig,
    StatisticsQuery,
    TrainReply,
    from_array_record,
    personalize_request,
    to_array_record,
)
from server.federation.audit_view import RoundView, keep_round
from server.federation.checkpoint import Checkpoint
from server.federation.evaluation import evaluate_on_table, weighted_mean
from server.federation.report import PLOT_FILE, plot_report, write_report
from server.federation.run_state import (
    FederationError,
    Progress,
    RunOutcome,
    RunState,
    SiteFiles,
    SitePreparer,
)
from server.federation.setup import (
    collect_statistics,
    model_spec_for,
    reply_site,
    standardization_for,
    unbounded_columns,
)
from server.federation.strategies import make_strategy, restore_strategy_state, strategy_state
from server.registry import ModelRegistry, Signer
from server.settings import RunSettings

log = logging.getLogger("fedcare.coordinator")

SITE_POLL_SECONDS = 1.0
# Each site's ε for the run's statistics (kept beside the checkpoint for a resumed run).
STATISTICS_FILE = "statistics.json"


def run_federation(
    grid: Grid,
    settings: RunSettings,
    progress: Progress | None = None,
    signer: Signer | None = None,
    prepare_sites: SitePreparer | None = None,
) -> RunOutcome:
    """Run (or resume) a whole federated training run and register its model.

    Parameters
    ----------
    grid : Grid
        Flower's grid: the connected SuperNodes.
    settings : RunSettings
        The run's configuration.
    progress : callable, optional
        Receives one human-readable line per event (round finished, site refused …).
    signer : callable, optional
        Signs the registered model's manifest (the coordinator's Ed25519 key).
    prepare_sites : callable, optional
        Lays out the simulated sites; required when ``settings.mode`` is ``simulation``.
    """
    say = progress or (lambda line: log.info("%s", line))
    out, checkpoint = open_output(settings)
    nodes = wait_for_sites(grid, settings.min_sites, settings.round_timeout, say)
    settings, files = locate_site_files(settings, len(nodes), out, prepare_sites, say)
    if checkpoint is not None:
        state = resume_run(settings, out, files, checkpoint, len(nodes), say)
    else:
        state = start_run(grid, settings, out, files, nodes, say)
    for server_round in range(state.next_round, settings.num_server_rounds + 1):
        entry = run_round(grid, state, server_round, say)
        save_checkpoint(state, entry)
        say(round_line(entry, settings.num_server_rounds))
    if not any(entry["sites_trained"] for entry in state.history):
        raise FederationError("no site trained in any round; see the refusals above")
    personalize_step(grid, state, say)
    return finish_run(state, signer)


def open_output(settings: RunSettings) -> tuple[Path, Checkpoint | None]:
    """The run's output folder, and its checkpoint when the run resumes."""
    out = Path(settings.out_dir).resolve()
    checkpoint = Checkpoint.load(out)
    if settings.resume and checkpoint is None:
        raise FederationError(f"{out}: no checkpoint to resume from")
    if not settings.resume and checkpoint is not None:
        raise FederationError(
            f"{out} already holds a run (checkpoint at round {checkpoint.round}); "
            "resume it or choose another output folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out, checkpoint


def wait_for_sites(grid: Grid, minimum: int, timeout: float, say: Progress) -> list[int]:
    """Block until ``minimum`` SuperNodes are connected (or raise after ``timeout`` s)."""
    start = time.monotonic()
    announced = False
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if not announced:
            say(f"waiting for sites: {len(nodes)} of at least {minimum} connected")
            announced = True
        if time.monotonic() - start > timeout:
            raise FederationError(
                f"only {len(nodes)} site(s) connected after {timeout:.0f} s; need {minimum}"
            )
        time.sleep(SITE_POLL_SECONDS)


def locate_site_files(
    settings: RunSettings,
    connected: int,
    out: Path,
    prepare_sites: SitePreparer | None,
    say: Progress,
) -> tuple[RunSettings, SiteFiles]:
    """The schema and test set: the simulation's (laid out now) or the deployment's."""
    if settings.mode != "simulation":
        test_path = Path(settings.test_path) if settings.test_path else None
        return settings, SiteFiles(Path(settings.schema_path), test_path)
    if prepare_sites is None:
        raise FederationError("a simulation needs a site preparer; none was given")
    if not settings.data_dir and connected != settings.sites:
        # Under `flwr run`, the SuperLink decides how many SuperNodes there are.
        say(f"simulating {connected} hospitals, one per SuperNode")
        settings = replace(settings, sites=connected)
    return settings, prepare_sites(settings, out / "simulation")


def start_run(
    grid: Grid,
    settings: RunSettings,
    out: Path,
    files: SiteFiles,
    nodes: list[int],
    say: Progress,
) -> RunState:
    """A new run: pool the sites' statistics, choose the network, initialize it."""
    schema = load_schema(files.schema_path)
    unbounded = unbounded_columns(schema)
    if unbounded:
        raise FederationError(
            f"{files.schema_path}: numeric column(s) {unbounded} declare no min and max; "
            "the sites' private statistics need both"
        )
    names: dict[int, str] = {}
    run_key = uuid.uuid4().hex[:12]  # the statistics' ε is spent in this run's name
    query = StatisticsQuery(
        simulation_dir=files.simulation_dir,
        federation=settings.federation,
        run=run_key,
        epsilon_share=settings.statistics_epsilon_share,
        seed=settings.seed if settings.mode == "simulation" else None,
    )
    # With a share of 0 the sites only say who they are and which schema they hold; every
    # feature is then scaled by its declared range.
    pooled = collect_statistics(grid, nodes, query, names, settings.round_timeout)
    for site, reason in pooled.refusals.items():
        say(f"site {site} left out of the statistics: {reason}")
    if not pooled.schema_hashes:
        raise FederationError("no site could provide feature statistics; see the refusals above")
    if pooled.schema_hashes - {schema.sha256}:
        say(
            "warning: some sites hold another schema than the federation's; they will refuse rounds"
        )
    stats = pooled.statistics
    (out / STATISTICS_FILE).write_text(json.dumps({"epsilon": pooled.epsilon}, indent=2))
    spec = model_spec_for(settings, schema, stats)
    rows = f"about {stats.rows} training rows" if stats.rows else "no statistics released"
    say(f"run {run_key}: {len(nodes)} sites, {rows}, model {spec.kind}")
    return RunState(
        settings=settings,
        out=out,
        schema=schema,
        files=files,
        run_key=run_key,
        standardization=standardization_for(schema, stats),
        spec=spec,
        weights=get_weights(build_model(spec, seed=settings.seed)),
        strategy=make_strategy(settings, len(nodes)),
        site_names=names,
        site_epsilon=dict(pooled.epsilon),
    )


def resume_run(
    settings: RunSettings,
    out: Path,
    files: SiteFiles,
    checkpoint: Checkpoint,
    connected: int,
    say: Progress,
) -> RunState:
    """The run as its checkpoint left it, strategy state included."""
    say(
        f"resuming run {checkpoint.run_key} after round {checkpoint.round} "
        f"of {settings.num_server_rounds}"
    )
    strategy = make_strategy(settings, connected)
    restore_strategy_state(strategy, checkpoint.strategy_state)
    return RunState(
        settings=settings,
        out=out,
        schema=load_schema(files.schema_path),
        files=files,
        run_key=checkpoint.run_key,
        standardization=Standardization.from_dict(checkpoint.meta["standardization"]),
        spec=ModelSpec.from_dict(checkpoint.meta["model"]),
        weights=checkpoint.weights,
        strategy=strategy,
        next_round=checkpoint.round + 1,
        history=checkpoint.meta["history"],
        site_epsilon=checkpoint.meta["epsilon"],
        site_epsilon_remaining=checkpoint.meta.get("epsilon_remaining", {}),
    )


def round_config(state: RunState, server_round: int) -> RoundConfig:
    """What every site is told for ``server_round``."""
    s = state.settings
    return RoundConfig(
        server_round=server_round,
        num_rounds=s.planned_rounds,
        federation=s.federation,
        run_key=state.run_key,
        model_spec=state.spec,
        standardization=state.standardization,
        schema_sha256=state.schema.sha256,
        local_epochs=s.local_epochs,
        batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        dp=s.dp,
        max_grad_norm=s.max_grad_norm,
        proximal_mu=s.proximal_mu if s.strategy == "fedprox" else 0.0,
        seed=s.seed,
        simulation_dir=state.files.simulation_dir,
        seeded_noise=s.mode == "simulation",
    )


def run_round(grid: Grid, state: RunState, server_round: int, say: Progress) -> dict[str, Any]:
    """Train, aggregate and evaluate one round; the round's history entry."""
    started = time.perf_counter()
    config = round_config(state, server_round)
    replies = train_step(grid, state, server_round, config)
    if state.settings.audit_canaries:
        keep_audit_view(state, server_round, replies)
    refused = refusals_of(replies, state, server_round, say)
    trained = len(replies) - len(refused)
    train_metrics = aggregate_step(state, server_round, replies, trained, say)
    federated, per_site = evaluate_step(grid, state, server_round, config)
    global_test = (
        evaluate_on_table(
            state.weights, state.spec, state.schema, state.standardization, state.files.test_path
        )
        if state.files.test_path
        else {}
    )
    return {
        "round": server_round,
        "wall_seconds": time.perf_counter() - started,
        "sites_trained": trained,
        "train": {k: v for k, v in train_metrics.items() if k != NUM_EXAMPLES},
        "federated_evaluation": federated,
        "per_site_evaluation": per_site,
        "global_test": global_test,
        "epsilon": dict(state.site_epsilon),
        "refused": refused,
    }


def train_step(
    grid: Grid, state: RunState, server_round: int, config: RoundConfig
) -> list[Message]:
    """Send the global model to the sites for training; their replies (updates or errors)."""
    messages = state.strategy.configure_train(
        server_round,
        to_array_record(state.weights),
        ConfigRecord(config.to_record_values()),
        grid,
    )
    # Sorted by site: the aggregate's floating-point sum must not depend on arrival order.
    replies = sorted(
        grid.send_and_receive(messages, timeout=state.settings.round_timeout),
        key=lambda reply: reply_site(reply, state.site_names),
    )
    for reply in replies:
        name = reply_site(reply, state.site_names)
        if not reply.has_error():
            update = TrainReply.from_message(reply)
            state.site_epsilon[name] = update.epsilon
            if update.epsilon_remaining is not None:
                state.site_epsilon_remaining[name] = update.epsilon_remaining
    return replies


def keep_audit_view(state: RunState, server_round: int, replies: list[Message]) -> None:
    """Keep the weights sent and each site's update received (a simulation's audit)."""
    updates = {
        reply_site(reply, state.site_names): TrainReply.from_message(reply).weights
        for reply in replies
        if not reply.has_error()
    }
    keep_round(state.out, RoundView(server_round, dict(state.weights), updates))


def refusals_of(
    replies: list[Message], state: RunState, server_round: int, say: Progress
) -> dict[str, str | None]:
    """The round's refusals by site name (each also told through ``say``)."""
    refused = {
        reply_site(reply, state.site_names): reply.error.reason
        for reply in replies
        if reply.has_error()
    }
    for name, reason in refused.items():
        say(f"round {server_round}: site {name} did not train: {reason}")
    return refused


def aggregate_step(
    state: RunState, server_round: int, replies: list[Message], trained: int, say: Progress
) -> dict[str, float]:
    """Aggregate the updates into the new global model (unchanged below ``min-sites``)."""
    if trained < state.settings.min_sites:
        say(
            f"round {server_round}: only {trained} site(s) trained, fewer than min-sites="
            f"{state.settings.min_sites}; the global model is unchanged"
        )
        return {}
    new_arrays, aggregated = state.strategy.aggregate_train(server_round, replies)
    if new_arrays is not None:
        state.weights = from_array_record(new_arrays)
    # the sites' training metrics are numbers, so their weighted means are too
    return cast(dict[str, float], dict(aggregated or {}))


def evaluate_step(
    grid: Grid, state: RunState, server_round: int, config: RoundConfig
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The sites' metrics of the new global model: pooled, and per site."""
    messages = state.strategy.configure_evaluate(
        server_round,
        to_array_record(state.weights),
        ConfigRecord(config.to_record_values()),
        grid,
    )
    per_site: dict[str, dict[str, float]] = {}
    for reply in grid.send_and_receive(messages, timeout=state.settings.round_timeout):
        name = reply_site(reply, state.site_names)
        if not reply.has_error():
            per_site[name] = EvaluateReply.from_message(reply).metrics
    # In site order, so the pooled means do not depend on arrival order either.
    per_site = dict(sorted(per_site.items()))
    return weighted_mean(per_site), per_site


def personalize_step(grid: Grid, state: RunState, say: Progress) -> None:
    """After the last round, each site fine-tunes the global model on its own data.

    It trains within its budget as for a round (round ``num_server_rounds + 1``), keeps
    the personalized model and replies with the global and personalized model's
    validation metrics, kept in ``state.personalization``.
    """
    s = state.settings
    if not s.personalize_epochs:
        return
    config = replace(
        round_config(state, s.num_server_rounds + 1),
        local_epochs=s.personalize_epochs,
        proximal_mu=0.0,
    )
    content = personalize_request(state.weights, config)
    messages = [
        Message(content, dst_node_id=node, message_type=PERSONALIZE)
        for node in sorted(grid.get_node_ids())
    ]
    for reply in grid.send_and_receive(messages, timeout=s.round_timeout):
        name = reply_site(reply, state.site_names)
        if reply.has_error():
            say(f"site {name} did not personalize: {reply.error.reason}")
            continue
        answer = PersonalizeReply.from_message(reply)
        state.site_epsilon[name] = answer.epsilon
        state.personalization[name] = {
            "global": answer.global_metrics,
            "personalized": answer.personalized_metrics,
            "epsilon": answer.epsilon - answer.epsilon_before,
        }
    state.personalization = dict(sorted(state.personalization.items()))
    say(f"personalized at {len(state.personalization)} site(s), {s.personalize_epochs} epoch(s)")


def save_checkpoint(state: RunState, entry: dict[str, Any]) -> None:
    """Record the round in the history and write the checkpoint it can resume from."""
    state.history.append(entry)
    state.next_round = entry["round"] + 1
    Checkpoint(
        round=entry["round"],
        run_key=state.run_key,
        weights=state.weights,
        strategy_state=strategy_state(state.strategy),
        meta={
            "standardization": state.standardization.to_dict(),
            "model": state.spec.to_dict(),
            "history": state.history,
            "epsilon": state.site_epsilon,
            "epsilon_remaining": state.site_epsilon_remaining,
            "settings": state.settings.to_dict(),
        },
    ).save(state.out)


def round_line(entry: dict[str, Any], total: int) -> str:
    """One line for a finished round: its metrics, the largest ε, its wall time."""
    shown = entry["global_test"] or entry["federated_evaluation"]
    where = "test" if entry["global_test"] else "sites"
    keys = [k for k in ("roc_auc", "accuracy", "c_index", "mse", "mae") if k in shown]
    metrics = " ".join(f"{k}={shown[k]:.4f}" for k in keys)
    eps = entry["epsilon"]
    eps_text = f"ε max={max(eps.values()):.3f}" if eps else "ε n/a"
    return (
        f"round {entry['round']}/{total}: {entry['sites_trained']} sites trained, "
        f"{where} {metrics}, {eps_text}, {entry['wall_seconds']:.1f} s"
    )


def statistics_epsilon(out: Path) -> dict[str, float]:
    """Each site's ε for the run's statistics, as :func:`start_run` recorded it."""
    path = out / STATISTICS_FILE
    return dict(json.loads(path.read_text())["epsilon"]) if path.is_file() else {}


def finish_run(state: RunState, signer: Signer | None) -> RunOutcome:
    """Register the global model, write the report and its plot."""
    settings = state.settings
    last = state.history[-1] if state.history else {}
    final = dict(last.get("global_test") or last.get("federated_evaluation") or {})
    epsilon_budget = settings.epsilon if settings.mode == "simulation" else None
    registry = ModelRegistry(state.out / "registry")
    version = registry.register(
        name=state.schema.name,
        weights=state.weights,
        spec=state.spec,
        schema=state.schema,
        standardization=state.standardization,
        metrics=final,
        privacy={
            "delta": settings.delta,
            "epsilon_budget": epsilon_budget,
            "epsilon_per_site": dict(state.site_epsilon),
        },
        extra={
            "run": state.run_key,
            "strategy": settings.strategy,
            "rounds": settings.num_server_rounds,
        },
        signer=signer,
    )
    report = {
        "run": state.run_key,
        "settings": {**settings.to_dict(), "partition": settings.partition_done},
        "final": final,
        "final_source": "global_test" if last.get("global_test") else "federated_evaluation",
        "history": state.history,
        "privacy": {
            "dp": settings.dp,
            "delta": settings.delta,
            "epsilon_budget": epsilon_budget,
            "epsilon_spent": dict(state.site_epsilon),
            # what each site said is left of its lifetime budget, in its last reply
            "epsilon_remaining": dict(state.site_epsilon_remaining),
            # ε of each site's statistics release alone (included in epsilon_spent)
            "statistics_epsilon": statistics_epsilon(state.out),
            "statistics_epsilon_share": settings.statistics_epsilon_share,
            "accountant": ACCOUNTANT,
            # what the sites were told to draw noise and batches from
            "rng": "seeded"
            if round_config(state, settings.num_server_rounds).seeded_noise
            else "site-entropy",
        },
        "model": {
            "name": version.name,
            "version": version.version,
            "path": str(version.path),
            "registry": str(registry.root),
            "kind": state.spec.kind,
        },
        "personalization": state.personalization,
        "plot": str(state.out / PLOT_FILE),
    }
    path = write_report(state.out, report)
    plot_report(report, state.out / PLOT_FILE)
    return RunOutcome(report=report, report_path=path, model=version)
