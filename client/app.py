"""The fedcare ClientApp: what runs inside a hospital, next to its data.

Four handlers:

- ``query``: the site's feature statistics (counts, sums, sums of squares, class counts)
  so the coordinator can standardize every site alike, with Gaussian noise paid for in
  the site's privacy ledger (``privacy.statistics``). No row leaves the site.
- ``train``: DP-SGD on the site's training split, composed into the site's privacy ledger.
  The site refuses, with a reason the coordinator logs, a round that would exceed its ε
  budget, a schema it was not given, or data that fails validation.
- ``evaluate``: the global model's metrics on the site's validation split.
- ``train.personalize``: after the last round, the site fine-tunes the global model on its
  own training split, within its budget exactly as a round (the release is recorded in
  its ledger), keeps the personalized model in its state folder (``personalized/``) and
  replies only with the global and the personalized model's validation metrics.

Refusals are sent as error replies in a closed vocabulary: problem kinds, counts, row
numbers and the schema's own column names; never a cell, a header the schema does not
declare, or a path of the site (the full message stays in the site's log). The site keeps
each refusal with that public reason in ``refusals.jsonl`` in its state folder, once its
settings resolve (a site too misconfigured to name its state folder records nothing).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from client.secure_aggregation import secure_train_mod
from client.site import (
    RefusalRecord,
    SiteConfigError,
    SiteData,
    load_site,
    record_refusal,
    resolve_settings,
)
from models.data.features import FeatureEncoder, FeatureStatistics, declared_bounds
from models.data.kinds.registry import load_schema
from models.data.schema import SchemaError
from models.data.tables import SiteDataError, public_summary, schema_columns
from models.families import build_model, task_for
from models.spec import set_weights
from privacy.budget import (
    BudgetedUpdate,
    BudgetExceeded,
    DeltaTooLarge,
    RoundRequest,
    arrays_digest,
    train_within_budget,
)
from privacy.dp_sgd import evaluate_outputs
from privacy.statistics import MissingRange, StatisticsRequest, release_statistics
from protocol.federation import (
    ARRAYS,
    CONFIG,
    EPSILON,
    NUM_EXAMPLES,
    PERSONALIZE_ACTION,
    EvaluateReply,
    PersonalizeReply,
    RefusalCode,
    RoundConfig,
    StatisticsQuery,
    StatisticsReply,
    TrainReply,
    from_array_record,
)

log = logging.getLogger("fedcare.site")
app = ClientApp()
# In the site's state folder: one personalized model per run, never sent anywhere.
PERSONALIZED_FOLDER = "personalized"


class Refusal(Exception):
    """The site declines this message; ``code`` says why."""

    def __init__(self, code: RefusalCode, reason: str):
        super().__init__(reason)
        self.code = code


def _public_data_error(err: SiteDataError, declared: list[str]) -> str:
    """The validation failure in a closed vocabulary: kinds, counts, rows, schema columns."""
    return (
        f"site data failed validation: {public_summary(err.problems, declared)}; "
        "run `fedcare site check` at the site for details"
    )


# What a misconfigured site tells the coordinator: the kind of fault, never the message
# (it names the site's own paths, and a schema's values).
_MISCONFIGURED = {
    SiteConfigError: "the site's settings are incomplete or malformed (a SuperNode needs "
    "--node-config with data-path, schema-path, state-dir and epsilon-budget)",
    SchemaError: "the site's schema file is invalid",
    OSError: "a file of the site could not be read",
}


def _site(context: Context, simulation_dir: str) -> SiteData:
    try:
        settings = resolve_settings(context.node_config, simulation_dir)
        return load_site(settings)
    except SiteDataError as err:
        log.error("%s", err)  # full detail stays in the site's own log
        declared = schema_columns(load_schema(settings.schema_path))
        raise Refusal(RefusalCode.SITE_DATA_INVALID, _public_data_error(err, declared)) from err
    except (SiteConfigError, SchemaError, OSError) as err:
        log.error("site misconfigured: %s", err)
        reason = next(text for kind, text in _MISCONFIGURED.items() if isinstance(err, kind))
        raise Refusal(
            RefusalCode.SITE_MISCONFIGURED,
            f"site misconfigured: {reason}; see the site's log for details",
        ) from err


def preload_site(node_config: Mapping[str, Any]) -> None:
    """Load and check the site's data now, into :func:`client.site.load_site`'s cache.

    The warm site executor (deploy/site_runtime.py) calls it before it forks each task:
    the task, a fork, finds the data loaded (it only reads it) instead of reading and
    checking the whole file again (~0.1 s a message for a 91-row site here, more for a
    hospital's). The cache is keyed by the file's modification time, so an edited file is
    read again. A failure is left to the task, which refuses with the site's reason.

    Parameters
    ----------
    node_config : mapping
        The SuperNode's ``--node-config``.
    """
    try:
        load_site(resolve_settings(node_config))
    except (SiteDataError, SiteConfigError, SchemaError, OSError, ValueError):
        return


def _record(msg: Message, context: Context, refusal: Refusal) -> None:
    """Keep ``refusal`` in the site's state folder, if the site's settings resolve.

    The handler already read the message and resolved the settings the same way; a
    refusal raised before they resolved has no state folder to go to and is not kept.
    """
    kind = msg.metadata.message_type.split(".")[0]
    round_: int | None = None
    if kind == MessageType.QUERY:
        asked = StatisticsQuery.from_message(msg)
        simulation_dir, federation, run = asked.simulation_dir, asked.federation, asked.run
    else:
        cfg = RoundConfig.from_record(dict(msg.content[CONFIG]))
        simulation_dir, federation, run = cfg.simulation_dir, cfg.federation, cfg.run_key
        round_ = cfg.server_round
    try:
        settings = resolve_settings(context.node_config, simulation_dir)
    except (SiteConfigError, OSError):
        return
    record = RefusalRecord(
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        message_type=kind,
        code=refusal.code.name,
        reason=str(refusal),
        federation=federation,
        run=run,
        round=round_,
    )
    record_refusal(settings.state_dir, record)


def _handle(
    handler: Callable[[Message, Context], RecordDict],
) -> Callable[[Message, Context], Message]:
    """Turn a :class:`Refusal` into an error reply instead of a crashed ClientApp."""

    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return Message(handler(msg, context), reply_to=msg)
        except Refusal as refusal:
            log.warning("refused %s: %s", msg.metadata.message_type, refusal)
            _record(msg, context, refusal)
            return Message(Error(code=int(refusal.code), reason=str(refusal)), reply_to=msg)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _site_seed(seed: int, context: Context) -> int:
    """A simulated site's own stream of a run's seed.

    By partition id, which stays the same from run to run (node ids do not).
    """
    return seed * 1000 + int(context.node_config.get("partition-id", 0))


@app.query()
@_handle
def query(msg: Message, context: Context) -> RecordDict:
    """Reply with the site's additive feature statistics, noisy and accounted.

    Asked for a share of 0, the site releases none (and spends no ε): it only names
    itself and its schema's hash.
    """
    asked = StatisticsQuery.from_message(msg)
    site = _site(context, asked.simulation_dir)
    name = site.settings.name
    if asked.epsilon_share == 0:
        return StatisticsReply(
            site=name,
            statistics=FeatureStatistics(),
            train_examples=len(site.train_index),
            schema_sha256=site.schema_sha256,
            epsilon=0.0,
        ).to_record_dict()
    seed = None if asked.seed is None else _site_seed(asked.seed, context)
    request = StatisticsRequest(asked.federation, asked.run, asked.epsilon_share, seed)
    try:
        released = release_statistics(
            site.settings.ledger(),
            site.statistics(),
            declared_bounds(site.schema),
            site.schema.classes if site.schema.task in ("binary", "multiclass") else (),
            request,
        )
    except MissingRange as err:  # names only the schema's own columns
        raise Refusal(RefusalCode.SITE_MISCONFIGURED, f"site '{name}': {err}") from err
    except BudgetExceeded as err:
        raise Refusal(RefusalCode.BUDGET_EXCEEDED, f"site '{name}': {err}") from err
    return StatisticsReply(
        site=name,
        statistics=released.statistics,
        train_examples=len(site.train_index),
        schema_sha256=site.schema_sha256,
        epsilon=released.epsilon,
    ).to_record_dict()


def _round(msg: Message, context: Context) -> tuple[RoundConfig, SiteData]:
    round_config = RoundConfig.from_record(dict(msg.content[CONFIG]))
    site = _site(context, round_config.simulation_dir)
    if round_config.schema_sha256 != site.schema_sha256:
        raise Refusal(
            RefusalCode.SCHEMA_MISMATCH,
            f"site '{site.settings.name}' has another schema than the federation's "
            f"(site {site.schema_sha256[:12]}…, federation {round_config.schema_sha256[:12]}…)",
        )
    return round_config, site


@app.train(mods=[secure_train_mod])  # SecAgg+ when the coordinator runs it
@_handle
def train(msg: Message, context: Context) -> RecordDict:
    """Train the global model on the site's data with DP-SGD and reply with the update."""
    cfg, site = _round(msg, context)
    global_weights = from_array_record(msg.content.array_records[ARRAYS])
    update = _train_within_budget(global_weights, context, cfg, site)
    if update.resent:
        log.info(
            "round %d of run %s: re-sending the update already released",
            cfg.server_round,
            cfg.run_key,
        )
    return TrainReply(
        site=site.settings.name,
        weights=update.weights,
        num_examples=update.num_examples,
        epsilon=update.epsilon,
        train_loss=update.train_loss,
        train_seconds=update.train_seconds,
        noise_multiplier=update.noise_multiplier,
        epsilon_remaining=update.epsilon_remaining,
    ).to_record_dict()


@app.train(PERSONALIZE_ACTION)
@_handle
def personalize(msg: Message, context: Context) -> RecordDict:
    """Fine-tune the global model on the site's data, keep it here, reply with metrics only."""
    cfg, site = _round(msg, context)
    global_weights = from_array_record(msg.content.array_records[ARRAYS])
    before = site.settings.ledger().spent
    update = _train_within_budget(global_weights, context, cfg, site)
    _keep_personalized(site.settings.state_dir, cfg, update.weights)
    return PersonalizeReply(
        site=site.settings.name,
        global_metrics=_validation_metrics(cfg, site, global_weights),
        personalized_metrics=_validation_metrics(cfg, site, update.weights),
        epsilon=update.epsilon,
        epsilon_before=before,
    ).to_record_dict()


def _train_within_budget(
    global_weights: dict[str, np.ndarray], context: Context, cfg: RoundConfig, site: SiteData
) -> BudgetedUpdate:
    """``global_weights`` trained as ``cfg`` says, within the site's budget."""
    request = RoundRequest(
        federation=cfg.federation,
        run=cfg.run_key,
        round=cfg.server_round,
        num_rounds=cfg.num_rounds,
        dp=cfg.dp,
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        max_grad_norm=cfg.max_grad_norm,
        proximal_mu=cfg.proximal_mu,
        seed=_site_seed(cfg.seed * 1000 + cfg.server_round, context) if cfg.seeded_noise else None,
        input_digest=arrays_digest(global_weights),
    )
    inputs, targets = site.encoded(cfg.standardization, "train")
    model = build_model(cfg.model_spec)
    set_weights(model, global_weights)
    name = site.settings.name
    try:
        return train_within_budget(
            site.settings.ledger(),
            request,
            model,
            global_weights,
            inputs,
            targets,
            task_for(cfg.model_spec),
        )
    except DeltaTooLarge as err:
        raise Refusal(RefusalCode.SITE_MISCONFIGURED, f"site '{name}': {err}") from err
    except BudgetExceeded as err:
        raise Refusal(RefusalCode.BUDGET_EXCEEDED, f"site '{name}': {err}") from err


def _keep_personalized(
    state_dir: Path, cfg: RoundConfig, weights: Mapping[str, np.ndarray]
) -> Path:
    """Save the personalized model in the site's state folder (replaced whole)."""
    folder = state_dir / PERSONALIZED_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cfg.federation}-{cfg.run_key}.npz"
    partial = folder / f".{path.name}"
    with open(partial, "wb") as handle:
        # cast: mypy would also match each array against savez's ``allow_pickle: bool``
        np.savez(handle, **cast(dict[str, Any], dict(weights)))
    os.replace(partial, path)
    return path


def _validation_metrics(
    cfg: RoundConfig, site: SiteData, weights: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """The task's metrics of ``weights`` on the site's validation part, with its size."""
    inputs, targets = site.encoded(cfg.standardization, "validation")
    model = build_model(cfg.model_spec)
    set_weights(model, dict(weights))
    encoder = FeatureEncoder(site.schema, cfg.standardization)
    # regression metrics in the label's own units
    outputs = encoder.decode_outputs(evaluate_outputs(model, inputs))
    metrics = task_for(cfg.model_spec).metrics(encoder.decode_outputs(targets), outputs)
    metrics[NUM_EXAMPLES] = float(len(inputs))
    return metrics


@app.evaluate()
@_handle
def evaluate(msg: Message, context: Context) -> RecordDict:
    """Evaluate the global model on the site's validation split."""
    cfg, site = _round(msg, context)
    metrics = _validation_metrics(cfg, site, from_array_record(msg.content.array_records[ARRAYS]))
    metrics[EPSILON] = site.settings.ledger().spent
    return EvaluateReply(site=site.settings.name, metrics=metrics).to_record_dict()
