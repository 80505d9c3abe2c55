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

import hashlib
import json
import logging
from collections.abc import Callable

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from client.round_config import NUM_EXAMPLES, SITE_RECORD, RoundConfig
from client.schema import SchemaError
from client.secure_aggregation import secure_train_mod
from client.site import SiteConfigError, SiteData, load_site, resolve_settings
from client.site_data import SiteDataError
from models.features import FeatureEncoder
from models.spec import build_model, set_weights
from models.tasks import task_for
from privacy.dp_sgd import DPSettings, batches_per_epoch, evaluate_outputs, train_locally
from privacy.ledger import BudgetExceeded

# Error codes of refusals (Flower's own codes stay below 100).
SITE_DATA_INVALID = 101
BUDGET_EXCEEDED = 102
SCHEMA_MISMATCH = 103
SITE_MISCONFIGURED = 104

LAST_RELEASE = "last_release.npz"
LAST_RELEASE_META = "last_release.json"

log = logging.getLogger("fedcare.site")
app = ClientApp()


class Refusal(Exception):
    """The site declines this message; ``code`` is one of the codes above."""

    def __init__(self, code: int, reason: str):
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


def _site(context: Context, config: dict) -> SiteData:
    try:
        settings = resolve_settings(context.node_config, config)
        return load_site(settings)
    except SiteDataError as err:
        log.error("%s", err)  # full detail stays in the site's own log
        raise Refusal(SITE_DATA_INVALID, _public_data_error(err)) from err
    except (SiteConfigError, SchemaError, OSError) as err:
        raise Refusal(SITE_MISCONFIGURED, f"site misconfigured: {err}") from err


def _handle(
    handler: Callable[[Message, Context], RecordDict],
) -> Callable[[Message, Context], Message]:
    """Turn a :class:`Refusal` into an error reply instead of a crashed ClientApp."""

    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return Message(handler(msg, context), reply_to=msg)
        except Refusal as refusal:
            log.warning("refused %s: %s", msg.metadata.message_type, refusal)
            return Message(Error(code=refusal.code, reason=str(refusal)), reply_to=msg)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _site_record(site: SiteData) -> ConfigRecord:
    return ConfigRecord({"name": site.settings.name})


@app.query()
@_handle
def query(msg: Message, context: Context) -> RecordDict:
    """Reply with the site's additive feature statistics."""
    config = dict(msg.content.config_records.get("config", ConfigRecord()))
    site = _site(context, config)
    stats = site.statistics().to_flat()
    stats[NUM_EXAMPLES] = float(len(site.train_index))
    return RecordDict(
        {
            "statistics": MetricRecord(stats),
            SITE_RECORD: _site_record(site),
            "schema": ConfigRecord({"sha256": site.schema_sha256}),
        }
    )


def _round(msg: Message, context: Context) -> tuple[RoundConfig, SiteData]:
    raw = dict(msg.content["config"])
    round_config = RoundConfig.from_record(raw)
    site = _site(context, raw)
    if round_config.schema_sha256 != site.schema_sha256:
        raise Refusal(
            SCHEMA_MISMATCH,
            f"site '{site.settings.name}' has another schema than the federation's "
            f"(site {site.schema_sha256[:12]}…, federation {round_config.schema_sha256[:12]}…)",
        )
    return round_config, site


def _arrays_digest(arrays: ArrayRecord) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name].numpy()).tobytes())
    return digest.hexdigest()


def _cached_release(site: SiteData, cfg: RoundConfig, digest: str) -> RecordDict | None:
    """The update already released for this exact request, if any.

    A coordinator that restarts mid-round asks again for a round it may already have
    received. Sending the same update again reveals nothing new, so it costs no ε;
    training again would.
    """
    meta_path = site.settings.state_dir / LAST_RELEASE_META
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    wanted = {"federation": cfg.federation, "run": cfg.run_key, "round": cfg.server_round}
    if meta.get("request") != wanted or meta.get("input_sha256") != digest:
        return None
    with np.load(site.settings.state_dir / LAST_RELEASE, allow_pickle=False) as saved:
        weights = {k: saved[k] for k in saved.files}
    return RecordDict(
        {
            "arrays": ArrayRecord({k: _array(v) for k, v in weights.items()}),
            "metrics": MetricRecord(meta["metrics"]),
            SITE_RECORD: _site_record(site),
        }
    )


def _array(value: np.ndarray) -> Array:
    return Array(np.ascontiguousarray(value))


def _remember_release(
    site: SiteData, cfg: RoundConfig, digest: str, weights: dict, metrics: dict
) -> None:
    state = site.settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    np.savez(state / LAST_RELEASE, **weights)
    request = {"federation": cfg.federation, "run": cfg.run_key, "round": cfg.server_round}
    meta = {"request": request, "input_sha256": digest, "metrics": metrics}
    (state / LAST_RELEASE_META).write_text(json.dumps(meta))


@app.train(mods=[secure_train_mod])  # SecAgg+ when the coordinator runs it
@_handle
def train(msg: Message, context: Context) -> RecordDict:
    """Train the global model on the site's data with DP-SGD and reply with the update."""
    cfg, site = _round(msg, context)
    arrays = msg.content["arrays"]
    digest = _arrays_digest(arrays)
    cached = _cached_release(site, cfg, digest)
    if cached is not None:
        log.info(
            "round %d of run %s: re-sending the update already released",
            cfg.server_round,
            cfg.run_key,
        )
        return cached

    inputs, targets = site.encoded(cfg.standardization, "train")
    n = len(inputs)
    ledger = site.settings.ledger()
    dp_settings = None
    if cfg.dp:
        if ledger.delta >= 1.0 / n:
            raise Refusal(
                SITE_MISCONFIGURED,
                f"site '{site.settings.name}': δ={ledger.delta:g} must be below "
                f"1/n = {1.0 / n:.2e}",
            )
        steps_per_round = cfg.local_epochs * batches_per_epoch(n, cfg.batch_size)
        sample_rate = 1.0 / batches_per_epoch(n, cfg.batch_size)
        plan_key = f"{cfg.federation}/{cfg.run_key}"
        try:
            sigma = ledger.plan_noise(
                plan_key, sample_rate, steps_per_round, cfg.num_rounds - cfg.server_round + 1
            )
            ledger.check(sigma, sample_rate, steps_per_round)
        except BudgetExceeded as err:
            raise Refusal(BUDGET_EXCEEDED, f"site '{site.settings.name}': {err}") from err
        dp_settings = DPSettings(noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm)

    model = build_model(cfg.model_spec)
    global_weights = {k: v.numpy() for k, v in arrays.items()}
    set_weights(model, global_weights)
    result = train_locally(
        model,
        inputs,
        targets,
        task_for(cfg.model_spec),
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        dp=dp_settings,
        proximal_mu=cfg.proximal_mu,
        global_weights=global_weights,
        seed=cfg.seed * 1000 + cfg.server_round + int(context.node_id % 997),
    )
    metrics = {
        NUM_EXAMPLES: float(n),
        "train-loss": result.mean_loss,
        "train-seconds": result.seconds,
        "epsilon": 0.0,
        "noise-multiplier": 0.0,
    }
    if dp_settings is not None:
        release = ledger.step(
            dp_settings.noise_multiplier,
            result.sample_rate,
            result.steps,
            federation=cfg.federation,
            run=cfg.run_key,
            round=cfg.server_round,
        )
        metrics["epsilon"] = release.epsilon_after
        metrics["noise-multiplier"] = dp_settings.noise_multiplier
    else:
        metrics["epsilon"] = ledger.spent
    _remember_release(site, cfg, digest, result.weights, metrics)
    return RecordDict(
        {
            "arrays": ArrayRecord({k: _array(v) for k, v in result.weights.items()}),
            "metrics": MetricRecord(metrics),
            SITE_RECORD: _site_record(site),
        }
    )


@app.evaluate()
@_handle
def evaluate(msg: Message, context: Context) -> RecordDict:
    """Evaluate the global model on the site's validation split."""
    cfg, site = _round(msg, context)
    inputs, targets = site.encoded(cfg.standardization, "validation")
    model = build_model(cfg.model_spec)
    set_weights(model, {k: v.numpy() for k, v in msg.content["arrays"].items()})
    task = task_for(cfg.model_spec)
    encoder = FeatureEncoder(site.schema, cfg.standardization)
    # regression metrics in the label's own units
    outputs = encoder.decode_outputs(evaluate_outputs(model, inputs))
    metrics = task.metrics(encoder.decode_outputs(targets), outputs)
    metrics[NUM_EXAMPLES] = float(len(inputs))
    metrics["epsilon"] = site.settings.ledger().spent
    return RecordDict({"metrics": MetricRecord(metrics), SITE_RECORD: _site_record(site)})
