"""The coordinator's round loop: statistics, training rounds, evaluation, checkpoints.

It drives one of Flower's strategies through its ``configure_*``/``aggregate_*`` methods
instead of ``strategy.start``, because the coordinator must also checkpoint after every
round (and resume), record each site's ε and refusals by name, and evaluate on a global
test set when there is one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from client.kinds import get_kind
from client.round_config import NUM_EXAMPLES, SITE_RECORD, RoundConfig
from client.schema import SiteSchema, load_schema
from models.features import FeatureEncoder, FeatureStatistics, Standardization
from models.spec import ModelSpec, build_model, get_weights, set_weights
from models.tasks import get_task, task_for
from privacy.dp_sgd import evaluate_outputs
from server.checkpoint import Checkpoint
from server.registry import ModelRegistry, ModelVersion, Signer
from server.report import PLOT_FILE, plot_history, write_report
from server.settings import RunSettings
from server.strategies import make_strategy, restore_strategy_state, strategy_state

log = logging.getLogger("fedcare.coordinator")
Progress = Callable[[str], None]


class FederationError(RuntimeError):
    """The run cannot go on (too few sites, no checkpoint to resume …)."""


@dataclass
class RunOutcome:
    """What a finished run produced."""

    report: dict[str, Any]
    report_path: Path
    model: ModelVersion


def _to_array_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def _from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _site_name(reply: Message, names: dict[int, str]) -> str:
    node = reply.metadata.src_node_id
    if not reply.has_error() and SITE_RECORD in reply.content.config_records:
        names[node] = str(reply.content.config_records[SITE_RECORD]["name"])
    return names.get(node, f"node-{node}")


def wait_for_sites(grid: Grid, minimum: int, timeout: float, progress: Progress) -> list[int]:
    """Block until ``minimum`` SuperNodes are connected (or raise after ``timeout`` s)."""
    start = time.monotonic()
    announced = False
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if not announced:
            progress(f"waiting for sites: {len(nodes)} of at least {minimum} connected")
            announced = True
        if time.monotonic() - start > timeout:
            raise FederationError(
                f"only {len(nodes)} site(s) connected after {timeout:.0f} s; need {minimum}"
            )
        time.sleep(1.0)


def collect_statistics(
    grid: Grid, nodes: Iterable[int], config: dict[str, Any], names: dict[int, str], timeout: float
) -> tuple[FeatureStatistics, dict[str, str], set[str]]:
    """Ask every site for its feature statistics and add them up.

    Returns the pooled statistics, the refusals by site name, and the schema hashes seen.
    """
    messages = [
        Message(
            RecordDict({"config": ConfigRecord(config)}),
            dst_node_id=node,
            message_type=MessageType.QUERY,
        )
        for node in nodes
    ]
    pooled = FeatureStatistics()
    refusals: dict[str, str] = {}
    schema_hashes: set[str] = set()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        name = _site_name(reply, names)
        if reply.has_error():
            refusals[name] = reply.error.reason
            continue
        pooled = pooled.merge(FeatureStatistics.from_flat(dict(reply.content["statistics"])))
        schema_hashes.add(str(reply.content["schema"]["sha256"]))
    return pooled, refusals, schema_hashes


def evaluate_on_table(
    weights: dict[str, np.ndarray],
    spec: ModelSpec,
    schema: SiteSchema,
    standardization: Standardization,
    path: Path,
) -> dict[str, float]:
    """The global model's metrics on held-out data (the simulation's global test set),
    read by the schema's data kind."""
    examples = get_kind(schema).load(path, schema)
    encoded = examples.encode(np.arange(examples.num_examples), standardization)
    encoder = FeatureEncoder(schema, standardization)
    model = build_model(spec)
    set_weights(model, weights)
    outputs = encoder.decode_outputs(evaluate_outputs(model, encoded.inputs))
    targets = encoder.decode_outputs(encoded.targets)
    metrics = task_for(spec).metrics(targets, outputs)
    metrics[NUM_EXAMPLES] = float(examples.num_examples)
    return metrics


def _weighted_mean(per_site: dict[str, dict[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics in per_site.values():
        n = metrics.get(NUM_EXAMPLES, 0.0)
        for key, value in metrics.items():
            if key in (NUM_EXAMPLES, "epsilon") or value is None or not np.isfinite(value):
                continue
            totals[key] = totals.get(key, 0.0) + n * value
            weights[key] = weights.get(key, 0.0) + n
    return {k: totals[k] / weights[k] for k in totals if weights[k] > 0}


def model_spec_for(
    settings: RunSettings, schema: SiteSchema, statistics: FeatureStatistics
) -> ModelSpec:
    """The network for this data: the family asked for (or the data kind's default), its
    input shape from the data kind, and class weights from the pooled class counts."""
    kind = get_kind(schema)
    fitting = kind.families(schema)
    family = fitting[0] if settings.model == "auto" else settings.model
    if family not in fitting:
        raise FederationError(
            f"model '{family}' does not fit {kind.name} data with task {schema.task}; "
            f"choose one of {list(fitting)} (or auto)"
        )
    model_input = kind.model_input(schema)
    options: dict[str, Any] = dict(model_input.options)
    if family in ("mlp", "cox_mlp"):
        options["hidden"] = settings.hidden_sizes
    if settings.class_weights == "balanced" and schema.classes:
        options["class_weights"] = balanced_class_weights(schema, statistics)
    return ModelSpec(
        kind=family,
        task=schema.task,
        input_dim=model_input.input_dim,
        output_dim=get_task(schema.task).output_dim(schema.num_classes),
        options=options,
    )


def balanced_class_weights(schema: SiteSchema, statistics: FeatureStatistics) -> list[float]:
    """``n / (classes × n_class)`` per class from the pooled counts (an absent class gets 1)."""
    counts = [statistics.label_counts.get(c, 0.0) for c in schema.classes]
    total = sum(counts)
    return [total / (len(counts) * n) if n > 0 else 1.0 for n in counts]


def run_federation(
    grid: Grid,
    settings: RunSettings,
    progress: Progress | None = None,
    signer: Signer | None = None,
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
    """
    say = progress or (lambda line: log.info("%s", line))
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

    nodes = wait_for_sites(grid, settings.min_sites, settings.round_timeout, say)
    simulation_dir = ""
    if settings.mode == "simulation":
        from simulations.prepare import prepare_simulation  # coordinator-only dependency

        if not settings.data_dir and len(nodes) != settings.sites:
            # Under `flwr run`, the SuperLink decides how many SuperNodes there are.
            say(f"simulating {len(nodes)} hospitals, one per SuperNode")
            settings = replace(settings, sites=len(nodes))
        layout = prepare_simulation(settings, out / "simulation")
        schema_path, test_path = layout.schema_path, layout.test_path
        simulation_dir = str(layout.root)
    else:
        schema_path = Path(settings.schema_path)
        test_path = Path(settings.test_path) if settings.test_path else None
    schema = load_schema(schema_path)
    schema_sha256 = schema.sha256

    names: dict[int, str] = {}
    refusals: dict[str, dict[int, str]] = {}
    if checkpoint is not None:
        run_key = checkpoint.run_key
        standardization = Standardization.from_dict(checkpoint.meta["standardization"])
        spec = ModelSpec.from_dict(checkpoint.meta["model"])
        weights = checkpoint.weights
        history: list[dict[str, Any]] = checkpoint.meta["history"]
        site_epsilon: dict[str, float] = checkpoint.meta["epsilon"]
        first_round = checkpoint.round + 1
        say(
            f"resuming run {run_key} after round {checkpoint.round} of {settings.num_server_rounds}"
        )
    else:
        run_key = uuid.uuid4().hex[:12]
        query_config = {"simulation-dir": simulation_dir}
        stats, stat_refusals, hashes = collect_statistics(
            grid, nodes, query_config, names, settings.round_timeout
        )
        for site, reason in stat_refusals.items():
            say(f"site {site} left out of the statistics: {reason}")
        if stats.rows == 0:
            raise FederationError(
                "no site could provide feature statistics; see the refusals above"
            )
        if hashes - {schema_sha256}:
            say(
                "warning: some sites hold another schema than the federation's; "
                "they will refuse rounds"
            )
        standardization = Standardization.from_statistics(stats)
        spec = model_spec_for(settings, schema, stats)
        weights = get_weights(build_model(spec, seed=settings.seed))
        history = []
        site_epsilon = {}
        first_round = 1
        say(f"run {run_key}: {len(nodes)} sites, {stats.rows} training rows, model {spec.kind}")

    strategy = make_strategy(settings, len(nodes))
    if checkpoint is not None:
        restore_strategy_state(strategy, checkpoint.strategy_state)

    for server_round in range(first_round, settings.num_server_rounds + 1):
        started = time.perf_counter()
        round_config = RoundConfig(
            server_round=server_round,
            num_rounds=settings.num_server_rounds,
            federation=settings.federation,
            run_key=run_key,
            model_spec=spec,
            standardization=standardization,
            schema_sha256=schema_sha256,
            local_epochs=settings.local_epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            dp=settings.dp,
            max_grad_norm=settings.max_grad_norm,
            proximal_mu=settings.proximal_mu if settings.strategy == "fedprox" else 0.0,
            seed=settings.seed,
            simulation_dir=simulation_dir,
        )
        arrays = _to_array_record(weights)
        config = ConfigRecord(round_config.to_record_values())
        train_replies = list(
            grid.send_and_receive(
                strategy.configure_train(server_round, arrays, config, grid),
                timeout=settings.round_timeout,
            )
        )
        round_refusals: dict[str, str] = {}
        trained = 0
        for reply in train_replies:
            name = _site_name(reply, names)
            if reply.has_error():
                round_refusals[name] = reply.error.reason
            else:
                trained += 1
                site_epsilon[name] = float(reply.content["metrics"]["epsilon"])
        for name, reason in round_refusals.items():
            refusals.setdefault(name, {})[server_round] = reason
            say(f"round {server_round}: site {name} did not train: {reason}")
        train_metrics: dict[str, float] = {}
        if trained >= settings.min_sites:
            new_arrays, aggregated = strategy.aggregate_train(server_round, train_replies)
            if new_arrays is not None:
                weights = _from_array_record(new_arrays)
            train_metrics = dict(aggregated or {})
        else:
            say(
                f"round {server_round}: only {trained} site(s) trained, fewer than min-sites="
                f"{settings.min_sites}; the global model is unchanged"
            )

        arrays = _to_array_record(weights)
        eval_replies = grid.send_and_receive(
            strategy.configure_evaluate(
                server_round, arrays, ConfigRecord(round_config.to_record_values()), grid
            ),
            timeout=settings.round_timeout,
        )
        per_site_eval = {
            _site_name(r, names): dict(r.content["metrics"])
            for r in eval_replies
            if not r.has_error()
        }
        federated = _weighted_mean(per_site_eval)
        global_test = (
            evaluate_on_table(weights, spec, schema, standardization, test_path)
            if test_path
            else {}
        )
        entry = {
            "round": server_round,
            "wall_seconds": time.perf_counter() - started,
            "sites_trained": trained,
            "train": {k: v for k, v in train_metrics.items() if k != NUM_EXAMPLES},
            "federated_evaluation": federated,
            "per_site_evaluation": per_site_eval,
            "global_test": global_test,
            "epsilon": dict(site_epsilon),
            "refused": round_refusals,
        }
        history.append(entry)
        Checkpoint(
            round=server_round,
            run_key=run_key,
            weights=weights,
            strategy_state=strategy_state(strategy),
            meta={
                "standardization": standardization.to_dict(),
                "model": spec.to_dict(),
                "history": history,
                "epsilon": site_epsilon,
                "settings": settings.to_dict(),
            },
        ).save(out)
        say(_round_line(entry, settings.num_server_rounds))

    return _finish(
        out,
        settings,
        schema,
        spec,
        standardization,
        weights,
        history,
        site_epsilon,
        run_key,
        signer,
    )


def _round_line(entry: dict[str, Any], total: int) -> str:
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


def _finish(
    out: Path,
    settings: RunSettings,
    schema: SiteSchema,
    spec: ModelSpec,
    standardization: Standardization,
    weights: dict[str, np.ndarray],
    history: list[dict[str, Any]],
    site_epsilon: dict[str, float],
    run_key: str,
    signer: Signer | None,
) -> RunOutcome:
    last = history[-1] if history else {}
    final = dict(last.get("global_test") or last.get("federated_evaluation") or {})
    privacy = {
        "dp": settings.dp,
        "delta": settings.delta,
        "epsilon_budget": settings.epsilon if settings.mode == "simulation" else None,
        "epsilon_spent": dict(site_epsilon),
    }
    registry = ModelRegistry(out / "registry")
    version = registry.register(
        name=schema.name,
        weights=weights,
        spec=spec,
        schema=schema,
        standardization=standardization,
        metrics=final,
        privacy={
            "delta": settings.delta,
            "epsilon_budget": privacy["epsilon_budget"],
            "epsilon_per_site": dict(site_epsilon),
        },
        extra={"run": run_key, "strategy": settings.strategy, "rounds": settings.num_server_rounds},
        signer=signer,
    )
    report = {
        "run": run_key,
        "settings": settings.to_dict(),
        "final": final,
        "final_source": "global_test" if last.get("global_test") else "federated_evaluation",
        "history": history,
        "privacy": privacy,
        "model": {
            "name": version.name,
            "version": version.version,
            "path": str(version.path),
            "registry": str(registry.root),
            "kind": spec.kind,
        },
        "plot": str(out / PLOT_FILE),
    }
    path = write_report(out, report)
    plot_history(history, out / PLOT_FILE, f"{schema.name}: {settings.strategy}, DP={settings.dp}")
    return RunOutcome(report=report, report_path=path, model=version)
