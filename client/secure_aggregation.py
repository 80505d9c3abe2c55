"""The site's side of secure aggregation: Flower's ``secaggplus_mod`` around the train handler.

With secure aggregation on, the coordinator drives Flower's SecAgg+ protocol (see
``server/federation/secure_aggregation.py``): four stages per round (set-up, key sharing,
masked update, unmasking), each a TRAIN message; from the second round on, the set-up
arrives inside the previous round's unmasking message and is answered in its reply.
``secaggplus_mod`` answers the stages itself; for the masked update it calls the site's
train handler, quantizes and masks the update, and sends only the masked integers. The
coordinator can unmask the sum of the sites' updates, never one site's.

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
    SECAGG_NEXT_SETUP,
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
    next_setup = msg.content.config_records.get(SECAGG_NEXT_SETUP)
    try:
        reply = secaggplus_mod(msg, context, _legacy_train(call_next))
    except _Refused as refused:
        return Message(refused.error, reply_to=msg)
    if next_setup is not None and not reply.has_error():
        try:
            keys = _next_public_keys(msg, next_setup, context)
        except Exception:  # noqa: BLE001 - the unmasking still goes; the coordinator falls
            return reply  # back to a set-up message of its own for the next round
        reply.content.config_records[SECAGG_NEXT_SETUP] = keys
    return reply


def _next_public_keys(msg: Message, setup: ConfigRecord, context: Context) -> ConfigRecord:
    """The next round's set-up, run now: this site's fresh public keys for it.

    The coordinator sends the next round's set-up with this round's unmasking, so a
    round of SecAgg+ takes three exchanges after the first instead of four. The keys are
    as fresh as a set-up message of their own would make them; ``secaggplus_mod``
    accepts a set-up after unmasking (its next stage in the protocol).
    """
    stage = Message(
        RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(dict(setup))}),
        dst_node_id=msg.metadata.dst_node_id,
        message_type=msg.metadata.message_type,
        group_id=msg.metadata.group_id,
    )
    keys = secaggplus_mod(stage, context, _no_train)
    return keys.content.config_records[RECORD_KEY_CONFIGS]


def _no_train(msg: Message, context: Context) -> Message:
    raise RuntimeError("SecAgg+ set-up does not train")  # secaggplus_mod never calls it


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
