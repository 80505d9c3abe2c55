"""The fedcare ClientApp: what runs inside a hospital, next to its data.

Three handlers:

- ``query``: the site's feature statistics (counts, sums, sums of squares) so the
  coordinator can standardize every site alike. No row leaves the site.
- ``train``: DP-SGD on the site's training split, composed into the site's privacy ledger.
  The site refuses, with a reason the coordinator logs, a round that would exceed its ε
  budget, a schema it was not given, or data that fails validation.
- ``evaluate``: the global model's metrics on the site's validation split.

Refusals are sent as error replies that name the problem without any patient value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from client.secure_aggregation import secure_train_mod
from client.site import SiteConfigError, SiteData, load_site, resolve_settings
from models.data.features import FeatureEncoder
from models.data.schema import SchemaError
from models.data.tables import SiteDataError
from models.families import build_model, task_for
from models.spec import set_weights
from privacy.budget import (
    BudgetExceeded,
    DeltaTooLarge,
    RoundRequest,
    arrays_digest,
    train_within_budget,
)
from privacy.dp_sgd import evaluate_outputs
from protocol.federation import (
    ARRAYS,
    CONFIG,
    EPSILON,
    NUM_EXAMPLES,
    EvaluateReply,
    RefusalCode,
    RoundConfig,
    StatisticsQuery,
    StatisticsReply,
    TrainReply,
    from_array_record,
)

log = logging.getLogger("fedcare.site")
app = ClientApp()


class Refusal(Exception):
    """The site declines this message; ``code`` says why."""

    def __init__(self, code: RefusalCode, reason: str):
        super().__init__(reason)
        self.code = code


def _public_data_error(err: SiteDataError) -> str:
    """The validation failure without any cell value: rows and columns only."""
    places = [f"row {p.row} column '{p.column}'" for p in err.problems[:5] if p.row is not None]
    where = f" (first at {', '.join(places)})" if places else ""
    return (
        f"site data failed validation: {len(err.problems)} problem(s){where}; "
        "run `fedcare site check` at the site for details"
    )


def _site(context: Context, simulation_dir: str) -> SiteData:
    try:
        settings = resolve_settings(context.node_config, simulation_dir)
        return load_site(settings)
    except SiteDataError as err:
        log.error("%s", err)  # full detail stays in the site's own log
        raise Refusal(RefusalCode.SITE_DATA_INVALID, _public_data_error(err)) from err
    except (SiteConfigError, SchemaError, OSError) as err:
        raise Refusal(RefusalCode.SITE_MISCONFIGURED, f"site misconfigured: {err}") from err


def _handle(
    handler: Callable[[Message, Context], RecordDict],
) -> Callable[[Message, Context], Message]:
    """Turn a :class:`Refusal` into an error reply instead of a crashed ClientApp."""

    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return Message(handler(msg, context), reply_to=msg)
        except Refusal as refusal:
            log.warning("refused %s: %s", msg.metadata.message_type, refusal)
            return Message(Error(code=int(refusal.code), reason=str(refusal)), reply_to=msg)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


@app.query()
@_handle
def query(msg: Message, context: Context) -> RecordDict:
    """Reply with the site's additive feature statistics."""
    site = _site(context, StatisticsQuery.from_message(msg).simulation_dir)
    return StatisticsReply(
        site=site.settings.name,
        statistics=site.statistics(),
        train_examples=len(site.train_index),
        schema_sha256=site.schema_sha256,
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
    global_weights = from_array_record(msg.content[ARRAYS])
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
        seed=cfg.seed * 1000 + cfg.server_round + int(context.node_id % 997),
        input_digest=arrays_digest(global_weights),
    )
    inputs, targets = site.encoded(cfg.standardization, "train")
    model = build_model(cfg.model_spec)
    set_weights(model, global_weights)
    name = site.settings.name
    try:
        update = train_within_budget(
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
    if update.resent:
        log.info(
            "round %d of run %s: re-sending the update already released", request.round, request.run
        )
    return TrainReply(
        site=name,
        weights=update.weights,
        num_examples=update.num_examples,
        epsilon=update.epsilon,
        train_loss=update.train_loss,
        train_seconds=update.train_seconds,
        noise_multiplier=update.noise_multiplier,
    ).to_record_dict()


@app.evaluate()
@_handle
def evaluate(msg: Message, context: Context) -> RecordDict:
    """Evaluate the global model on the site's validation split."""
    cfg, site = _round(msg, context)
    inputs, targets = site.encoded(cfg.standardization, "validation")
    model = build_model(cfg.model_spec)
    set_weights(model, from_array_record(msg.content[ARRAYS]))
    task = task_for(cfg.model_spec)
    encoder = FeatureEncoder(site.schema, cfg.standardization)
    # regression metrics in the label's own units
    outputs = encoder.decode_outputs(evaluate_outputs(model, inputs))
    metrics = task.metrics(encoder.decode_outputs(targets), outputs)
    metrics[NUM_EXAMPLES] = float(len(inputs))
    metrics[EPSILON] = site.settings.ledger().spent
    return EvaluateReply(site=site.settings.name, metrics=metrics).to_record_dict()
