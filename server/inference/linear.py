"""The service's side of homomorphic inference: a linear model as one affine map.

A served model is offered for homomorphic inference when its family is linear (``logreg``
for binary, multiclass and regression tasks, ``cox_linear`` for survival) and its data
kind is a table. Its map takes the client's *raw* encoded columns (numbers as measured,
or after the feature's declared transform, ``log``, which the client applies as the
plaintext encoder does; 0/1, one-hot categories): standardization ``(x - mean) / std``,
whose mean and std are on that transformed scale, is folded into the weights
and intercept, and so is a regression label's de-standardization ``y * std + mean`` (an
affine map of an affine map stays affine), so that the encrypted score is the plaintext
route's model output before the task's link.

The public contexts clients send are kept in a :class:`ContextCache` under their id, each
for a limited time, at most a fixed number of them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from models.spec import get_weights
from privacy import he
from protocol import inference as wire
from server.inference.model_store import ServedModel

LINEAR_FAMILIES = ("logreg", "cox_linear")


@dataclass(frozen=True)
class LinearMap:
    """``scores = weights @ columns + bias`` on raw encoded columns, and how to read it.

    Parameters
    ----------
    columns : tuple of str
        The encoded column names, in the order the client sends them.
    weights : tuple of tuple of float
        ``[k][d]``: per model output, one weight per column.
    bias : tuple of float
        Per model output, its intercept.
    link : str
        What the client applies to a decrypted score (``protocol.inference.HE_LINKS``).
    labels : tuple of str
        The classes (classification; empty otherwise).
    transforms : mapping of str to str
        The features the client must put on their declared scale before encrypting.
    """

    columns: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...]
    bias: tuple[float, ...]
    link: str
    labels: tuple[str, ...]
    transforms: Mapping[str, str] = field(default_factory=dict)


def not_linear_reason(model: ServedModel) -> str:
    """Why ``model`` cannot be evaluated homomorphically, or "" if it can.

    Parameters
    ----------
    model : ServedModel
        A served model.
    """
    predictor = model.predictor
    family, task = predictor.spec.kind, predictor.spec.task
    if family not in LINEAR_FAMILIES:
        return (
            f"model '{model.name}' is of family '{family}', which is not linear; homomorphic "
            f"inference serves only the families {list(LINEAR_FAMILIES)}"
        )
    if predictor.schema.kind != "table":
        return f"model '{model.name}' reads '{predictor.schema.kind}' data, not a table"
    if task not in wire.HE_LINKS and task != "survival":
        return f"model '{model.name}' has the task '{task}', which has no link"
    if len(predictor.encoder.column_names) >= he.PARAMETERS.slots // 2:
        return (
            f"model '{model.name}' has {len(predictor.encoder.column_names)} encoded columns; "
            f"homomorphic inference packs fewer than {he.PARAMETERS.slots // 2} per patient"
        )
    return ""


def linear_map(model: ServedModel) -> LinearMap:
    """The affine map of a linear model on raw encoded columns.

    Parameters
    ----------
    model : ServedModel
        A model for which :func:`not_linear_reason` is "".

    Raises :class:`ApiError` ``he_not_supported`` naming the family otherwise.
    """
    reason = not_linear_reason(model)
    if reason:
        raise wire.HE_NOT_SUPPORTED.error(reason)
    predictor = model.predictor
    state = get_weights(predictor.model)
    weights = np.asarray(state["0.weight"], dtype=np.float64)
    bias = np.asarray(state.get("0.bias", np.zeros(weights.shape[0])), dtype=np.float64)
    columns = predictor.encoder.column_names
    scale = predictor.standardization
    folded, intercept = weights.copy(), bias.copy()
    column = 0
    for spec in predictor.schema.features:
        if spec.type == "numeric":
            mean, std = scale.mean.get(spec.name, 0.0), scale.std.get(spec.name, 1.0)
            folded[:, column] = weights[:, column] / std
            intercept -= weights[:, column] * mean / std
        column += len(spec.categories) if spec.type == "categorical" else 1
    schema = predictor.schema
    if schema.task == "regression":
        mean, std = scale.mean.get(schema.label, 0.0), scale.std.get(schema.label, 1.0)
        folded, intercept = folded * std, intercept * std + mean
    link = wire.HE_LINKS.get(predictor.spec.task, wire.HE_SURVIVAL_LINK)
    return LinearMap(
        columns=tuple(columns),
        weights=tuple(tuple(float(w) for w in row) for row in folded),
        bias=tuple(float(b) for b in intercept),
        link=link,
        labels=tuple(schema.classes) if link in ("sigmoid", "softmax") else (),
        transforms={f.name: f.transform for f in schema.features if f.transform},
    )


class ContextCache:
    """Clients' public contexts by id, each kept ``ttl`` seconds, at most ``capacity``.

    Parameters
    ----------
    ttl : float
        Seconds a context stays after it was last sent.
    capacity : int
        The most contexts kept; the oldest goes first.
    """

    def __init__(self, ttl: float, capacity: int):
        self.ttl = ttl
        self.capacity = capacity
        self._contexts: OrderedDict[str, tuple[he.PublicContext, float]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, context_id: str, public_bytes: bytes) -> he.PublicContext:
        """Check and keep a client's public context; ``ApiError`` if it does not check out.

        Parameters
        ----------
        context_id : str
            The id the client gave it, which must be :func:`privacy.he.context_id` of it.
        public_bytes : bytes
            The serialized public context.
        """
        if he.context_id(public_bytes) != context_id:
            raise wire.INVALID_CIPHERTEXT.error("he.context_id is not the id of he.context")
        try:
            context = he.PublicContext(public_bytes)
        except he.HeError as err:
            raise wire.INVALID_CIPHERTEXT.error(str(err)) from None
        with self._lock:
            self._contexts.pop(context_id, None)
            self._contexts[context_id] = (context, time.monotonic() + self.ttl)
            while len(self._contexts) > self.capacity:
                self._contexts.popitem(last=False)
        return context

    def get(self, context_id: str) -> he.PublicContext:
        """The context of that id; ``ApiError`` ``unknown_he_context`` if absent or expired.

        Parameters
        ----------
        context_id : str
            The id the request names.
        """
        now = time.monotonic()
        with self._lock:
            entry = self._contexts.get(context_id)
            if entry is not None and entry[1] < now:
                del self._contexts[context_id]
                entry = None
        if entry is None:
            raise wire.UNKNOWN_HE_CONTEXT.error(
                f"no context {context_id} is cached (expired or never sent); send he.context"
            )
        return entry[0]

    def contexts(self) -> list[he.PublicContext]:
        """The cached contexts (for the tests' check that none is private)."""
        with self._lock:
            return [context for context, _ in self._contexts.values()]


def he_scores(
    linear: LinearMap, context: he.PublicContext, request: wire.HeRequest
) -> wire.HeScores:
    """The encrypted scores of a homomorphic request.

    Parameters
    ----------
    linear : LinearMap
        The served model's map.
    context : he.PublicContext
        The request's context.
    request : HeRequest
        The parsed request.

    Raises :class:`ApiError` (``invalid_input`` for other columns, ``invalid_ciphertext``).
    """
    if request.columns != linear.columns:
        raise wire.INVALID_INPUT.error(
            "he.columns are not the model's encoded columns; fetch the metadata again"
        )
    if dict(request.transforms) != dict(linear.transforms):
        raise wire.INVALID_INPUT.error(
            f"the model reads {dict(linear.transforms) or 'no feature'} on a declared scale "
            f"and the request says it encoded {dict(request.transforms) or 'none'} so: put "
            "each such feature on its scale before encrypting and name it in he.transforms "
            "(docs/PROTOCOL.md section 11; fedcare-sdk does)"
        )
    block = he.block_width(len(linear.columns))
    if request.block != block:
        raise wire.MALFORMED_REQUEST.error(
            f"he.block must be {block} for {len(linear.columns)} columns (docs/PROTOCOL.md "
            "section 11)"
        )
    if request.layout not in he.LAYOUTS:
        raise wire.MALFORMED_REQUEST.error(f"he.layout must be one of {list(he.LAYOUTS)}")
    try:
        scores = context.linear_scores(
            request.data, request.rows, linear.weights, linear.bias, request.layout
        )
    except he.HeError as err:
        raise wire.INVALID_CIPHERTEXT.error(str(err)) from None
    return wire.HeScores(
        context_id=context.id,
        rows=request.rows,
        block=block,
        link=linear.link,
        labels=linear.labels,
        scores=tuple(tuple(output) for output in scores),
    )


def he_offer(model: ServedModel, max_rows: int, ttl: float) -> wire.HeOffer:
    """The metadata's ``parameters.he`` of a model.

    Parameters
    ----------
    model : ServedModel
        The model.
    max_rows : int
        The service's most rows per request.
    ttl : float
        Seconds a sent context stays cached.
    """
    reason = not_linear_reason(model)
    columns = model.predictor.encoder.column_names
    layout = {}
    if not reason:
        block = he.block_width(len(columns))
        layout = {"block": block, "patients_per_ciphertext": he.patients_per_ciphertext(block)}
    parameters = {
        "scheme": he.SCHEME,
        "poly_modulus_degree": he.PARAMETERS.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(he.PARAMETERS.coeff_mod_bit_sizes),
        "scale_bits": he.PARAMETERS.scale_bits,
        "security_bits": he.PARAMETERS.security_bits,
        "encryption": "symmetric",
        "layouts": list(he.LAYOUTS),
        "frame": "length-prefixed",
        **layout,
        "max_slot_value": he.MAX_SLOT_VALUE,
        "context_ttl": ttl,
        "max_context_bytes": he.MAX_CONTEXT_BYTES,
    }
    link = "" if reason else linear_map(model).link
    return wire.HeOffer(
        offered=not reason,
        reason=reason,
        columns=tuple(columns),
        link=link,
        max_rows=max_rows,
        parameters=parameters,
    )
