"""Secure aggregation: the coordinator sees only the sum of the sites' updates (SecAgg+).

Flower 1.41 runs SecAgg+ only through its legacy workflow (``SecAggPlusWorkflow`` with a
``LegacyContext`` and a legacy strategy); its Message API strategies cannot drive it. The
fedcare round loop (``server/federation/rounds.py``) uses the Message API. This module joins the
two without a second round loop:

:class:`SecureAggregationGrid` wraps the run's Grid. The round loop sends its training
messages as usual; instead of delivering them, this Grid runs one SecAgg+ session over
their destination sites (set-up, key sharing, masked updates, unmasking) and answers
each site's message with a reply that carries **the unmasked aggregate**, never the site's
own update, together with the site's plaintext metrics (ε spent, training rows, site
name). Sites that refused or dropped out get error replies. The round loop's strategy
(FedAvg, FedProx or FedAdam) then averages identical arrays, i.e. takes the aggregate,
and checkpoints, ε bookkeeping and the report work unchanged. Query and evaluation
messages pass through untouched: they carry statistics and metrics, not updates.

What this costs, stated plainly:

- Robust aggregators (median, trimmed mean, Krum) need each site's update: refused by
  :class:`server.settings.RunSettings` when secure aggregation is on.
- SecAgg+ quantizes: each site's weights, times its weight factor ``n / max_weight``,
  are clipped to ``[-c, c]`` and stochastically rounded to ``2**bits`` levels, so the
  aggregate differs from the plain weighted mean by at most :func:`quantization_bound`.
- The sites' DP-SGD noise is added before masking, so each update is already
  (ε, δ)-DP on its own; quantizing and summing are post-processing and keep that.
- Dropouts: a round completes while every remaining site keeps at least the
  reconstruction threshold of live neighbours; the dead sites' masks are rebuilt from
  their shares. A site's weights enter the sum only if it sent its masked vector.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)
from flwr.common import FitIns, FitRes, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from protocol.federation import (
    ARRAYS,
    CONFIG,
    METRICS,
    SECAGG_ARRAY_NAMES,
    SECAGG_CLIPPING_RANGE,
    SECAGG_NEXT_SETUP,
    SECAGG_SITE_NAME,
    SITE_RECORD,
    RefusalCode,
    site_record,
)
from server.federation.exchange import DelegatingGrid
from server.settings import RunSettings

MODULUS_RANGE = 2**32  # Flower's maximum; the sum of the quantized updates wraps modulo this


class _SecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, tolerant of sites that leave before sharing their keys.

    Flower 1.41 counts every site sampled at set-up as "dead" if it is missing later and
    asks its neighbours for that site's key shares; a site that left during key sharing
    never sent any, so the neighbours fail and the round halts. Such a site is in nobody's
    masks (a site masks only with the neighbours whose shares it received), so after key
    sharing the round's participants are the sites that shared keys.
    """

    def share_keys_stage(self, grid, context, state) -> bool:
        proceed = super().share_keys_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)
        return proceed


def make_workflow(settings: RunSettings) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow with the run's settings (see ``RunSettings``)."""
    return _SecAggPlus(
        num_shares=float(settings.secagg_num_shares),
        reconstruction_threshold=float(settings.secagg_reconstruction_threshold),
        max_weight=settings.secagg_max_weight,
        clipping_range=settings.secagg_clipping_range,
        quantization_range=2**settings.secagg_quantization_bits,
        modulus_range=MODULUS_RANGE,
        timeout=settings.round_timeout,
    )


def quantization_bound(settings: RunSettings, num_examples: Iterable[int]) -> float:
    """The largest difference SecAgg+'s rounding can make to one aggregated weight.

    Each site's scaled weight is rounded to a grid of step ``2c / 2**bits``; the sum of
    the rounding errors (at most one step per site) is divided by the sum of the weight
    factors. The weight factors are rounded too (to ``1 / 2**bits``), which moves the
    mean by at most ``c`` times their relative error.

    Parameters
    ----------
    settings : RunSettings
        The run's SecAgg+ settings.
    num_examples : iterable of int
        The training rows of the sites in the sum.
    """
    levels = 2**settings.secagg_quantization_bits
    factors = [n / settings.secagg_max_weight for n in num_examples]
    step = 2 * settings.secagg_clipping_range / levels
    rounding = len(factors) * step / sum(factors)
    weighting = settings.secagg_clipping_range * len(factors) / (levels * sum(factors))
    return rounding + weighting


@dataclass
class EarlySetup:
    """The next round's SecAgg+ set-up, sent with this round's unmasking.

    A set-up message carries only the protocol's parameters (the number of sites, shares,
    threshold, ranges), the same every round for the same sites, and each site answers
    with two fresh public keys. So the unmasking messages of round ``r`` also carry
    round ``r``'s set-up (:data:`protocol.federation.SECAGG_NEXT_SETUP`), each site answers
    it after unmasking, and round ``r + 1``'s set-up is answered from those keys without
    an exchange: three exchanges a round instead of four. When the set-up the workflow
    sends differs (other parameters) or a site has no early keys (it dropped out, or
    joined), the set-up goes out as usual.

    Parameters
    ----------
    setup : ConfigRecord, optional
        The last set-up the workflow sent.
    keys : dict
        Node id → its public keys for the next set-up (the record ``secaggplus_mod``
        replies to a set-up with).
    """

    setup: ConfigRecord | None = None
    keys: dict[int, ConfigRecord] = field(default_factory=dict)

    def saw_setup(self, messages: list[Message]) -> None:
        """Remember the set-up the workflow sends (and forget older keys)."""
        self.setup = ConfigRecord(dict(messages[0].content.config_records[RECORD_KEY_CONFIGS]))
        self.keys = {}

    def attach(self, unmasking: list[Message]) -> list[Message]:
        """The unmasking messages, each also carrying the remembered set-up."""
        if self.setup is None:
            return unmasking
        setup = dict(self.setup)
        return [_with_record(m, SECAGG_NEXT_SETUP, ConfigRecord(setup)) for m in unmasking]

    def keep_keys(self, replies: list[Message]) -> None:
        """Keep each site's answer to the set-up that came with its unmasking."""
        self.keys = {
            r.metadata.src_node_id: r.content.config_records[SECAGG_NEXT_SETUP]
            for r in replies
            if not r.has_error() and SECAGG_NEXT_SETUP in r.content.config_records
        }

    def answer(self, setup: list[Message]) -> list[Message]:
        """Replies to ``setup`` from the kept keys; [] unless every site has them."""
        nodes = [m.metadata.dst_node_id for m in setup]
        wanted = dict(setup[0].content.config_records[RECORD_KEY_CONFIGS])
        if self.setup is None or dict(self.setup) != wanted or not set(nodes) <= set(self.keys):
            return []
        replies = [
            Message(RecordDict({RECORD_KEY_CONFIGS: self.keys[node]}), reply_to=m)
            for node, m in zip(nodes, setup, strict=True)
        ]
        self.keys = {}  # each key pair answers one set-up
        return replies


def _with_record(msg: Message, key: str, record: ConfigRecord) -> Message:
    """A copy of ``msg`` whose content also holds ``record`` under ``key``."""
    content = RecordDict({**msg.content.config_records, key: record})
    return Message(
        content,
        dst_node_id=msg.metadata.dst_node_id,
        message_type=msg.metadata.message_type,
        group_id=msg.metadata.group_id,
    )


def _secagg_stage(messages: list[Message]) -> str | None:
    """The SecAgg+ stage the messages are (None for other messages)."""
    if not messages or not messages[0].has_content():
        return None
    record = messages[0].content.config_records.get(RECORD_KEY_CONFIGS)
    return None if record is None else str(record.get(SecAggKey.STAGE))


@dataclass
class _SecureRound:
    """The two strategy methods ``SecAggPlusWorkflow`` calls, for one round.

    ``configure_fit`` names the sites and what they train on; ``aggregate_fit`` receives
    the unmasked aggregate (set by the workflow as every result's parameters) and the
    sites' plaintext metrics.
    """

    grid: Grid
    run_id: int
    nodes: list[int]
    fit_ins: FitIns
    results: list[tuple[ClientProxy, FitRes]] = field(default_factory=list)
    aggregate: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters, client_manager):
        return [
            (GridClientProxy(node, self.grid, self.run_id), self.fit_ins) for node in self.nodes
        ]

    def aggregate_fit(self, server_round: int, results, failures):
        self.results = list(results)
        if not self.results:
            return None, {}
        parameters = self.results[0][1].parameters
        self.aggregate = parameters_to_ndarrays(parameters)
        return parameters, {}


class SecureAggregationGrid(DelegatingGrid):
    """A Grid that turns each round's training messages into one SecAgg+ session.

    Parameters
    ----------
    grid : Grid
        The run's Grid (in fedcare's ServerApp a :class:`~server.federation.exchange.PromptGrid`
        over the SuperLink's): it delivers SecAgg+'s own messages and everything else.
    context : Context
        The ServerApp's context (run id and config for the workflow).
    settings : RunSettings
        SecAgg+ parameters and the round timeout.
    """

    def __init__(self, grid: Grid, context: Context, settings: RunSettings):
        super().__init__(grid)
        self._context = context
        self._settings = settings
        self._errors: dict[int, Error] = {}
        self._early_setup = EarlySetup()

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver messages; a round's training requests go through SecAgg+ instead."""
        messages = list(messages)
        if messages and all(_is_training_request(m) for m in messages):
            return self._secure_round(messages)
        stage = _secagg_stage(messages)
        if stage == Stage.SETUP:
            if answered := self._early_setup.answer(messages):
                return answered
            self._early_setup.saw_setup(messages)
        if stage == Stage.UNMASK and self._has_next_round(messages):
            messages = self._early_setup.attach(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():  # a SecAgg+ stage a site failed; kept to explain it
                self._errors[reply.metadata.src_node_id] = reply.error
        if stage == Stage.UNMASK:
            self._early_setup.keep_keys(replies)
        return replies

    def _has_next_round(self, messages: list[Message]) -> bool:
        # SecAgg+'s messages carry their round as the group id
        return int(messages[0].metadata.group_id) < self._settings.num_server_rounds

    # -- one round
    def _secure_round(self, requests: list[Message]) -> list[Message]:
        # _is_training_request checked that ARRAYS holds an ArrayRecord; CONFIG holds a
        # RoundConfig's values, all scalars
        arrays = cast(ArrayRecord, requests[0].content[ARRAYS])
        names = list(arrays.keys())
        dtypes = {n: arrays[n].numpy().dtype for n in names}
        config = cast(dict[str, Scalar], dict(requests[0].content[CONFIG]))
        config[SECAGG_ARRAY_NAMES] = json.dumps(names)
        config[SECAGG_CLIPPING_RANGE] = float(self._settings.secagg_clipping_range)
        parameters = ndarrays_to_parameters([arrays[n].numpy() for n in names])
        nodes = [m.metadata.dst_node_id for m in requests]
        strategy = _SecureRound(self, self._context.run_id, nodes, FitIns(parameters, config))

        scratch = copy.copy(self._context)  # the workflow's records stay out of the run's
        scratch.state = RecordDict()
        # the workflow calls only configure_fit and aggregate_fit, not a whole legacy Strategy
        legacy = LegacyContext(scratch, strategy=strategy)  # type: ignore[arg-type]
        legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            parameters, keep_input=True
        )
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: int(config["server-round"])}
        )
        self._errors = {}
        make_workflow(self._settings)(self, legacy)

        summed = (
            {proxy.node_id: fitres for proxy, fitres in strategy.results}
            if strategy.aggregate is not None
            else {}
        )
        replies = []
        for request in requests:
            node = request.metadata.dst_node_id
            if node in summed:
                assert strategy.aggregate is not None  # summed is empty without an aggregate
                aggregate = ArrayRecord(
                    {
                        n: Array(np.ascontiguousarray(a.astype(dtypes[n])))
                        for n, a in zip(names, strategy.aggregate, strict=True)
                    }
                )
                replies.append(Message(_reply_content(aggregate, summed[node]), reply_to=request))
            else:
                replies.append(Message(self._left_out(node, strategy), reply_to=request))
        return replies

    def _left_out(self, node: int, strategy: _SecureRound) -> Error:
        if node in self._errors:
            error = self._errors[node]
            return Error(code=error.code, reason=error.reason)
        if strategy.aggregate is None:
            reason = (
                "secure aggregation halted: too few sites stayed to reconstruct the masks "
                f"(threshold {self._settings.secagg_reconstruction_threshold:.0%} of shares)"
            )
        else:
            reason = "no masked update from this site in time (dropped out of the round)"
        return Error(code=int(RefusalCode.SECURE_AGGREGATION_FAILED), reason=reason)


def _is_training_request(msg: Message) -> bool:
    """A round loop's TRAIN message (not one of SecAgg+'s own protocol messages)."""
    return (
        msg.metadata.message_type == MessageType.TRAIN
        and msg.has_content()
        and ARRAYS in msg.content.array_records
        and RECORD_KEY_CONFIGS not in msg.content.config_records
    )


def _reply_content(aggregate: ArrayRecord, fitres: FitRes) -> RecordDict:
    """What the round loop reads of a site's reply: the aggregate and the site's metrics."""
    metrics = dict(fitres.metrics)
    site = str(metrics.pop(SECAGG_SITE_NAME))
    numeric: dict[str, MetricRecordValues] = {
        k: v for k, v in metrics.items() if isinstance(v, int | float)
    }
    return RecordDict(
        {
            ARRAYS: aggregate,
            METRICS: MetricRecord(numeric),
            SITE_RECORD: site_record(site),
        }
    )
