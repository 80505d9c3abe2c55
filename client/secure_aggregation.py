"""The site's side of secure aggregation: Flower's ``secaggplus_mod`` around the train handler.

With secure aggregation on, the coordinator drives Flower's SecAgg+ protocol (see
``server/federation/secure_aggregation.py``): four TRAIN messages per round (set-up, key sharing,
masked update, unmasking). ``secaggplus_mod`` answers three of them itself; for the third
it calls the site's train handler, quantizes and masks the update, and sends only the
masked integers. The coordinator can unmask the sum of the sites' updates, never one site's.

Flower 1.41's SecAgg+ speaks the legacy record layout (``fitins.*`` in, ``fitres.*`` out),
while fedcare's train handler speaks the Message API layout (``arrays`` + ``config`` in,
``arrays`` + ``metrics`` + ``site`` out). :func:`secure_train_mod` translates between the
two, so one train handler serves both paths and a refusal (budget, data, schema) still
reaches the coordinator as an error reply with its code and reason.

Trade-off made explicit: SecAgg+ clips each weight, scaled by the site's weight factor
(training rows / ``secagg-max-weight``, at most 1), to ``[-clipping range, clipping
range]``. A site reports how many of its weights lie outside the range
(``secagg-values-clipped``) so clipping never goes unnoticed.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from protocol.federation import (
    ARRAYS,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    SECAGG_ARRAY_NAMES,
    SECAGG_CLIPPING_RANGE,
    SECAGG_SITE_NAME,
    SECAGG_VALUES_CLIPPED,
    site_name,
)

# Keys shared with the coordinator's side (server/federation/secure_aggregation.py).


class _Refused(Exception):
    """The train handler replied with an error; carried past ``secaggplus_mod``."""

    def __init__(self, error: Error):
        super().__init__(error.reason)
        self.error = error


def is_secagg_message(msg: Message) -> bool:
    """True for the messages of Flower's SecAgg+ protocol."""
    return msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records


def secure_train_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A ClientApp mod for the train handler: SecAgg+ when the coordinator asks for it.

    Parameters
    ----------
    msg : Message
        A TRAIN message: either a plain round (passed through untouched) or one stage of
        SecAgg+.
    context : Context
        The node's context; ``secaggplus_mod`` keeps its per-round keys in its state.
    call_next : callable
        The train handler.
    """
    if not is_secagg_message(msg):
        return call_next(msg, context)
    try:
        return secaggplus_mod(msg, context, _legacy_train(call_next))
    except _Refused as refused:
        return Message(refused.error, reply_to=msg)


def _legacy_train(call_next: ClientAppCallable) -> ClientAppCallable:
    """The train handler, seen through the legacy ``fitins``/``fitres`` layout."""

    def train(msg: Message, context: Context) -> Message:
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        config = dict(fitins.config)
        names: list[str] = json.loads(str(config.pop(SECAGG_ARRAY_NAMES)))
        clipping_range = float(config.pop(SECAGG_CLIPPING_RANGE))
        tensors = parameters_to_ndarrays(fitins.parameters)
        arrays = ArrayRecord(
            {n: Array(np.ascontiguousarray(t)) for n, t in zip(names, tensors, strict=True)}
        )
        request = Message(
            RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(config)}),
            dst_node_id=msg.metadata.dst_node_id,
            message_type=msg.metadata.message_type,
        )
        reply = call_next(request, context)
        if reply.has_error():
            raise _Refused(reply.error)
        update = [reply.content[ARRAYS][n].numpy() for n in names]
        metrics = dict(reply.content[METRICS])
        metrics[SECAGG_SITE_NAME] = site_name(reply) or ""
        metrics[SECAGG_VALUES_CLIPPED] = int(
            sum(int((np.abs(u) > clipping_range).sum()) for u in update)
        )
        fitres = FitRes(
            status=Status(Code.OK, ""),
            parameters=ndarrays_to_parameters(update),
            num_examples=int(metrics[NUM_EXAMPLES]),
            metrics=metrics,
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)

    return train
