"""What the coordinator and a site say to each other in Flower messages.

Both directions of every exchange are here, so the keys stay in step:

- the statistics query (:class:`StatisticsQuery`) and its reply (:class:`StatisticsReply`);
- each round's settings (:class:`RoundConfig`), sent with the global weights;
- the train reply (:class:`TrainReply`) and the evaluate reply (:class:`EvaluateReply`);
- personalization after the last round (:data:`PERSONALIZE`, :func:`personalize_request`)
  and its reply (:class:`PersonalizeReply`): metrics only, the model stays at the site;
- the codes of a site's refusals (:class:`RefusalCode`), sent as Flower error replies;
- the keys fedcare adds to the legacy SecAgg+ records.

The server builds a record with ``to_record…`` and the ClientApp reads it back with
``from_…`` (or the other way round); no other module spells a key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any, cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from models.data.features import FeatureStatistics, Standardization
from models.spec import ModelSpec

# Record names in a message's RecordDict.
CONFIG = "config"  # ConfigRecord: a StatisticsQuery or a RoundConfig
ARRAYS = "arrays"  # ArrayRecord: model weights, one flat Array per dtype (to_array_record)
METRICS = "metrics"  # MetricRecord: a TrainReply's or an EvaluateReply's figures
STATISTICS = "statistics"  # MetricRecord: FeatureStatistics.to_flat(), NUM_EXAMPLES, EPSILON
SCHEMA = "schema"  # ConfigRecord: {"sha256": the site's schema hash}
SITE_RECORD = "site"  # ConfigRecord: {"name": site name}
GLOBAL_METRICS = "global-metrics"  # MetricRecord: the global model on a site's validation
PERSONALIZED_METRICS = "personalized-metrics"  # MetricRecord: the personalized model's

# The ClientApp's action for personalization, and the message type that reaches it.
PERSONALIZE_ACTION = "personalize"
PERSONALIZE = f"{MessageType.TRAIN}.{PERSONALIZE_ACTION}"

# Metric keys.
NUM_EXAMPLES = "num-examples"
EPSILON = "epsilon"
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
NOISE_MULTIPLIER = "noise-multiplier"
EPSILON_BEFORE = "epsilon-before"
EPSILON_REMAINING = "epsilon-remaining"
# A reply's figures that describe the site, not the model: never averaged as metrics.
SITE_FIGURES = frozenset({NUM_EXAMPLES, EPSILON, EPSILON_REMAINING})

# Keys fedcare adds to the legacy SecAgg+ FitIns config and FitRes metrics.
SECAGG_ARRAY_NAMES = "secagg-array-names"  # FitIns: JSON list naming the legacy tensors
SECAGG_CLIPPING_RANGE = "secagg-clipping-range"  # FitIns: the range SecAgg+ clips to
SECAGG_SITE_NAME = "site-name"  # FitRes: the site's name (plaintext, like every metric)
SECAGG_VALUES_CLIPPED = "secagg-values-clipped"  # FitRes: weights outside the clipping range
# A SecAgg+ unmask message's second config record: the next round's set-up, which the site
# answers (its next public keys) under the same key in its reply.
SECAGG_NEXT_SETUP = "fedcare.secagg-next-setup"


class RefusalCode(IntEnum):
    """Error codes of a site's refusals (Flower's own codes stay below 100)."""

    SITE_DATA_INVALID = 101
    BUDGET_EXCEEDED = 102
    SCHEMA_MISMATCH = 103
    SITE_MISCONFIGURED = 104
    APP_NOT_APPROVED = 105  # the run's FAB is not in the site's approved-apps
    SECURE_AGGREGATION_FAILED = 110  # set by the coordinator for sites left out of a sum


def metric_record(values: Mapping[str, float]) -> MetricRecord:
    """Figures as a MetricRecord (every value a float)."""
    record: dict[str, int | float | list[int] | list[float]] = {
        k: float(v) for k, v in values.items()
    }
    return MetricRecord(record)


def metrics_of(reply: Message, name: str) -> dict[str, float]:
    """The figures of a reply's MetricRecord ``name``, as floats."""
    return {k: float(cast(float, v)) for k, v in reply.content.metric_records[name].items()}


def site_name(reply: Message) -> str | None:
    """The site name a reply carries, or None (an error reply carries none)."""
    if reply.has_error() or SITE_RECORD not in reply.content.config_records:
        return None
    return str(reply.content.config_records[SITE_RECORD]["name"])


def site_record(name: str) -> ConfigRecord:
    """The record naming the replying site."""
    return ConfigRecord({"name": name})


def to_array_record(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Model weights as an ArrayRecord: one flat Array per dtype (one for most models).

    Flower moves every Array of a message as separate objects (the Array and its chunk),
    each one signed HTTPS request from a SuperNode to the SuperLink and one more from the
    SuperLink to the ServerApp; a model of N tensors in one Array saves 2(N − 1) requests
    per message each way. Each Array's key is the layout of what it holds (a JSON list of
    ``[name, shape]``), so the record describes itself through Flower's strategies, which
    aggregate element-wise and keep keys, and :func:`from_array_record` splits it again.
    """
    groups: dict[np.dtype, list[tuple[str, np.ndarray]]] = {}
    for name, value in weights.items():
        array = np.asarray(value)
        groups.setdefault(array.dtype, []).append((name, array))
    return ArrayRecord(
        {
            json.dumps([[name, list(a.shape)] for name, a in group], separators=(",", ":")): (
                Array(np.concatenate([a.ravel() for _, a in group]))
            )
            for group in groups.values()
        }
    )


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Model weights by name from an ArrayRecord of :func:`to_array_record`'s layout.

    Raises
    ------
    ValueError
        A key is not such a layout, or an Array's size differs from its layout's.
    """
    weights: dict[str, np.ndarray] = {}
    for key, array in record.items():
        try:
            layout = [(str(name), tuple(int(n) for n in shape)) for name, shape in json.loads(key)]
        except (ValueError, TypeError) as err:
            raise ValueError(f"array record key {key[:80]!r} is not a weight layout") from err
        flat = array.numpy().ravel()
        sizes = [int(np.prod(shape)) for _, shape in layout]
        if sum(sizes) != flat.size:
            raise ValueError(
                f"array of {flat.size} values does not match its layout of {sum(sizes)}"
            )
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        weights.update(
            {name: part.reshape(shape) for (name, shape), part in zip(layout, parts, strict=True)}
        )
    return weights


@dataclass(frozen=True)
class StatisticsQuery:
    """The coordinator asks each site for its (noisy) feature statistics.

    Parameters
    ----------
    simulation_dir : str
        Set only in simulation: where the simulated sites' files are.
    federation, run : str
        The run the statistics are for: their ε counts against its caps in each site's
        ledger.
    epsilon_share : float
        The share, in (0, 1), of the ε a site has left for the run that the statistics
        may cost (``statistics-epsilon-share``); training gets the rest.
    seed : int or None
        Set only in simulation, for reproducible noise; in deployment each site draws
        its noise from its own entropy.
    """

    simulation_dir: str = ""
    federation: str = ""
    run: str = ""
    epsilon_share: float = 0.2
    seed: int | None = None

    def to_record_dict(self) -> RecordDict:
        """The query as a message's content."""
        return RecordDict(
            {
                CONFIG: ConfigRecord(
                    {
                        "simulation-dir": self.simulation_dir,
                        "federation": self.federation,
                        "run": self.run,
                        "epsilon-share": float(self.epsilon_share),
                        # -1: no seed (a ConfigRecord holds no None)
                        "seed": -1 if self.seed is None else int(self.seed),
                    }
                )
            }
        )

    @classmethod
    def from_message(cls, msg: Message) -> StatisticsQuery:
        """The query a QUERY message carries."""
        config = dict(msg.content.config_records.get(CONFIG, ConfigRecord()))
        return cls(
            simulation_dir=str(config.get("simulation-dir", "")),
            federation=str(config.get("federation", "")),
            run=str(config.get("run", "")),
            epsilon_share=float(cast(float, config.get("epsilon-share", 0.2))),
            seed=seed if (seed := int(cast(int, config.get("seed", -1)))) >= 0 else None,
        )


@dataclass(frozen=True)
class StatisticsReply:
    """A site's answer to :class:`StatisticsQuery`.

    Parameters
    ----------
    site : str
        The site's name.
    statistics : FeatureStatistics
        Its additive statistics over its training part, with Gaussian noise.
    train_examples : int
        The size of its training part (also every train reply's aggregation weight).
    schema_sha256 : str
        The hash of the schema the site holds.
    epsilon : float
        ε of the statistics release alone, at the site's δ.
    """

    site: str
    statistics: FeatureStatistics
    train_examples: int
    schema_sha256: str
    epsilon: float = 0.0

    def to_record_dict(self) -> RecordDict:
        """The reply as a message's content."""
        flat = self.statistics.to_flat()
        flat[NUM_EXAMPLES] = float(self.train_examples)
        flat[EPSILON] = self.epsilon
        return RecordDict(
            {
                STATISTICS: metric_record(flat),
                SITE_RECORD: site_record(self.site),
                SCHEMA: ConfigRecord({"sha256": self.schema_sha256}),
            }
        )

    @classmethod
    def from_message(cls, reply: Message) -> StatisticsReply:
        """The reply a site's QUERY answer carries."""
        flat = metrics_of(reply, STATISTICS)
        return cls(
            site=site_name(reply) or f"node-{reply.metadata.src_node_id}",
            statistics=FeatureStatistics.from_flat(flat),
            train_examples=int(flat.get(NUM_EXAMPLES, 0)),
            schema_sha256=str(reply.content.config_records[SCHEMA]["sha256"]),
            epsilon=float(flat.get(EPSILON, 0.0)),
        )


@dataclass(frozen=True)
class RoundConfig:
    """Everything a site needs to train or evaluate one round.

    Parameters
    ----------
    server_round, num_rounds : int
        This round and the releases the run plans (its rounds, then personalization
        counted as rounds: ``RunSettings.planned_rounds``), so the site can plan its
        noise for the rest. Personalization is round ``num_server_rounds + 1``.
    federation, run_key : str
        Names the run in the site's ledger (stable across a coordinator restart).
    model_spec : ModelSpec
        The network to build.
    standardization : Standardization
        Federated feature scaling.
    schema_sha256 : str
        The federation schema's hash; a site with another schema refuses.
    local_epochs, batch_size, learning_rate : training settings.
    dp : bool
        Whether to train with DP-SGD.
    max_grad_norm : float
        Clipping norm.
    proximal_mu : float
        FedProx's μ (0 for FedAvg).
    seed : int
        For reproducible simulations.
    simulation_dir : str
        Set only in simulation: where the simulated sites' files are.
    seeded_noise : bool
        Whether sites seed DP noise and batches with ``seed`` (a reproducible simulation).
        False in deployment: each site draws them from its own entropy, so the
        coordinator cannot replay a site's noise.
    """

    server_round: int
    num_rounds: int
    federation: str
    run_key: str
    model_spec: ModelSpec
    standardization: Standardization
    schema_sha256: str
    local_epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.1
    dp: bool = True
    max_grad_norm: float = 1.0
    proximal_mu: float = 0.0
    seed: int = 0
    simulation_dir: str = ""
    seeded_noise: bool = True

    def to_record_values(self) -> dict[str, Any]:
        """The config as ConfigRecord values (dashed keys, JSON for nested records)."""
        values = asdict(self)
        values["model_spec"] = json.dumps(self.model_spec.to_dict())
        values["standardization"] = json.dumps(self.standardization.to_dict())
        return {k.replace("_", "-"): v for k, v in values.items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RoundConfig:
        """The config from the values of a round's ConfigRecord."""
        values = {k.replace("-", "_"): v for k, v in record.items()}
        values["model_spec"] = ModelSpec.from_dict(json.loads(values["model_spec"]))
        values["standardization"] = Standardization.from_dict(json.loads(values["standardization"]))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class TrainReply:
    """A site's update after one round of local training.

    Parameters
    ----------
    site : str
        The site's name.
    weights : dict of str to ndarray
        The locally trained model's weights (plain parameter names).
    num_examples : int
        How many examples it trained on (the aggregation weight).
    epsilon : float
        The site's ε spent after this round, over everything it ever released.
    train_loss, train_seconds : float
        The mean training loss and the time local training took.
    noise_multiplier : float
        σ of this round's DP-SGD (0 without DP).
    epsilon_remaining : float or None
        What is left of the site's lifetime budget, when the site says (a figure of its
        settings and past releases, no patient's).
    """

    site: str
    weights: dict[str, np.ndarray]
    num_examples: int
    epsilon: float
    train_loss: float = 0.0
    train_seconds: float = 0.0
    noise_multiplier: float = 0.0
    epsilon_remaining: float | None = None

    def metrics(self) -> dict[str, float]:
        """The reply's MetricRecord values."""
        values = {
            NUM_EXAMPLES: float(self.num_examples),
            TRAIN_LOSS: self.train_loss,
            TRAIN_SECONDS: self.train_seconds,
            EPSILON: self.epsilon,
            NOISE_MULTIPLIER: self.noise_multiplier,
        }
        if self.epsilon_remaining is not None:
            values[EPSILON_REMAINING] = self.epsilon_remaining
        return values

    def to_record_dict(self) -> RecordDict:
        """The reply as a message's content."""
        return RecordDict(
            {
                ARRAYS: to_array_record(self.weights),
                METRICS: metric_record(self.metrics()),
                SITE_RECORD: site_record(self.site),
            }
        )

    @classmethod
    def from_parts(
        cls, site: str, weights: Mapping[str, np.ndarray], metrics: Mapping[str, Any]
    ) -> TrainReply:
        """A reply from weights and the values of its MetricRecord."""
        return cls(
            site=site,
            weights=dict(weights),
            num_examples=int(metrics[NUM_EXAMPLES]),
            epsilon=float(metrics[EPSILON]),
            train_loss=float(metrics.get(TRAIN_LOSS, 0.0)),
            train_seconds=float(metrics.get(TRAIN_SECONDS, 0.0)),
            noise_multiplier=float(metrics.get(NOISE_MULTIPLIER, 0.0)),
            epsilon_remaining=(
                float(metrics[EPSILON_REMAINING]) if EPSILON_REMAINING in metrics else None
            ),
        )

    @classmethod
    def from_message(cls, reply: Message) -> TrainReply:
        """The reply a site's TRAIN answer carries."""
        return cls.from_parts(
            site_name(reply) or f"node-{reply.metadata.src_node_id}",
            from_array_record(reply.content.array_records[ARRAYS]),
            metrics_of(reply, METRICS),
        )


@dataclass(frozen=True)
class EvaluateReply:
    """A site's metrics of the global model on its validation part.

    Parameters
    ----------
    site : str
        The site's name.
    metrics : dict of str to float
        The task's metrics, with :data:`NUM_EXAMPLES` and the site's :data:`EPSILON`.
    """

    site: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_record_dict(self) -> RecordDict:
        """The reply as a message's content."""
        return RecordDict(
            {METRICS: metric_record(self.metrics), SITE_RECORD: site_record(self.site)}
        )

    @classmethod
    def from_message(cls, reply: Message) -> EvaluateReply:
        """The reply a site's EVALUATE answer carries."""
        return cls(
            site=site_name(reply) or f"node-{reply.metadata.src_node_id}",
            metrics=metrics_of(reply, METRICS),
        )


def personalize_request(weights: Mapping[str, np.ndarray], config: RoundConfig) -> RecordDict:
    """The content of a :data:`PERSONALIZE` message: the global model and its settings.

    Parameters
    ----------
    weights : mapping of str to ndarray
        The final global model.
    config : RoundConfig
        The personalization's settings (``local_epochs``: the personalization's epochs).
    """
    return RecordDict(
        {ARRAYS: to_array_record(weights), CONFIG: ConfigRecord(config.to_record_values())}
    )


@dataclass(frozen=True)
class PersonalizeReply:
    """A site's answer to :data:`PERSONALIZE`: how its own fine-tuned model compares.

    The personalized model never leaves the site; only these metrics do, as federated
    evaluation's do.

    Parameters
    ----------
    site : str
        The site's name.
    global_metrics, personalized_metrics : dict of str to float
        The task's metrics of the global and the personalized model on the site's
        validation part (with :data:`NUM_EXAMPLES`).
    epsilon : float
        The site's ε spent after personalizing, over everything it ever released.
    epsilon_before : float
        Its ε spent before (the difference is what personalization cost).
    """

    site: str
    global_metrics: dict[str, float]
    personalized_metrics: dict[str, float]
    epsilon: float
    epsilon_before: float

    def to_record_dict(self) -> RecordDict:
        """The reply as a message's content."""
        return RecordDict(
            {
                GLOBAL_METRICS: metric_record(self.global_metrics),
                PERSONALIZED_METRICS: metric_record(self.personalized_metrics),
                METRICS: metric_record(
                    {EPSILON: self.epsilon, EPSILON_BEFORE: self.epsilon_before}
                ),
                SITE_RECORD: site_record(self.site),
            }
        )

    @classmethod
    def from_message(cls, reply: Message) -> PersonalizeReply:
        """The reply a site's PERSONALIZE answer carries."""
        privacy = metrics_of(reply, METRICS)
        return cls(
            site=site_name(reply) or f"node-{reply.metadata.src_node_id}",
            global_metrics=metrics_of(reply, GLOBAL_METRICS),
            personalized_metrics=metrics_of(reply, PERSONALIZED_METRICS),
            epsilon=privacy[EPSILON],
            epsilon_before=privacy[EPSILON_BEFORE],
        )
