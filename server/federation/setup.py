"""The first step of a new run: sites' noisy statistics pooled, and the network chosen."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from models.data.features import FeatureStatistics, Standardization, declared_bounds
from models.data.kinds.registry import get_kind
from models.data.schema import SiteSchema
from models.families import get_task
from models.spec import ModelSpec
from protocol.federation import StatisticsQuery, StatisticsReply, site_name
from server.federation.run_state import FederationError
from server.settings import RunSettings


def reply_site(reply: Message, names: dict[int, str]) -> str:
    """The replying site's name (remembered by node id, since error replies carry none).

    Parameters
    ----------
    reply : Message
        A site's reply.
    names : dict of int to str
        Names seen so far by node id; updated.
    """
    node = reply.metadata.src_node_id
    name = site_name(reply)
    if name is not None:
        names[node] = name
    return names.get(node, f"node-{node}")


@dataclass(frozen=True)
class PooledStatistics:
    """What the sites answered to the statistics query.

    Parameters
    ----------
    statistics : FeatureStatistics
        The sum of the sites' noisy statistics.
    refusals : dict of str to str or None
        Error reasons by site name.
    schema_hashes : set of str
        The schema hashes the answering sites hold.
    epsilon : dict of str to float
        Per answering site, the ε its statistics release cost on its own.
    """

    statistics: FeatureStatistics
    refusals: dict[str, str | None]
    schema_hashes: set[str]
    epsilon: dict[str, float]


def collect_statistics(
    grid: Grid,
    nodes: Iterable[int],
    query: StatisticsQuery,
    names: dict[int, str],
    timeout: float,
) -> PooledStatistics:
    """Ask every site for its noisy feature statistics and add them up.

    Parameters
    ----------
    grid : Grid
        The connected SuperNodes.
    nodes : iterable of int
        The node ids to ask.
    query : StatisticsQuery
        What to send.
    names : dict of int to str
        Site names by node id; updated.
    timeout : float
        Seconds to wait for the replies.
    """
    messages = [
        Message(query.to_record_dict(), dst_node_id=node, message_type=MessageType.QUERY)
        for node in nodes
    ]
    pooled = PooledStatistics(FeatureStatistics(), {}, set(), {})
    for reply in grid.send_and_receive(messages, timeout=timeout):
        name = reply_site(reply, names)
        if reply.has_error():
            pooled.refusals[name] = reply.error.reason
            continue
        answer = StatisticsReply.from_message(reply)
        pooled = replace(pooled, statistics=pooled.statistics.merge(answer.statistics))
        pooled.schema_hashes.add(answer.schema_sha256)
        pooled.epsilon[name] = answer.epsilon
    return pooled


def standardization_for(schema: SiteSchema, statistics: FeatureStatistics) -> Standardization:
    """The federation's scaling from noisy pooled statistics, kept within declared ranges.

    Parameters
    ----------
    schema : SiteSchema
        Declares the ranges (a noisy count or variance at or below 0 falls back to them).
    statistics : FeatureStatistics
        The pooled statistics.
    """
    return Standardization.from_statistics(statistics, declared_bounds(schema))


def unbounded_columns(schema: SiteSchema) -> list[str]:
    """The numeric columns (features, a regression label) without both ``min`` and ``max``.

    Parameters
    ----------
    schema : SiteSchema
        The federation's schema.
    """
    numeric = [f.name for f in schema.features if f.type == "numeric"]
    if schema.task == "regression":
        numeric.append(schema.label)
    bounded = declared_bounds(schema)
    return [name for name in numeric if name not in bounded]


def model_spec_for(
    settings: RunSettings, schema: SiteSchema, statistics: FeatureStatistics
) -> ModelSpec:
    """The network for this data.

    The family asked for (or the data kind's default), its input shape from the data
    kind, and class weights from the pooled class counts.

    Parameters
    ----------
    settings : RunSettings
        ``model``, ``hidden`` and ``class_weights``.
    schema : SiteSchema
        The federation's schema.
    statistics : FeatureStatistics
        The pooled statistics (class counts).
    """
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
    """``n / (classes × n_class)`` per class from the pooled counts (an absent class gets 1).

    Parameters
    ----------
    schema : SiteSchema
        Its classes, in class-index order.
    statistics : FeatureStatistics
        The pooled class counts.
    """
    # noisy counts: a class counted below 1 weighs as if counted once
    counts = [max(statistics.label_counts.get(c, 0.0), 1.0) for c in schema.classes]
    total = sum(counts)
    return [total / (len(counts) * n) if n > 0 else 1.0 for n in counts]
