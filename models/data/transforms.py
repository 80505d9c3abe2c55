"""A numeric feature's declared transform: the scale it is standardized on.

A schema's numeric feature may declare ``transform = "log"``: its value ``x`` is then
encoded as ``log(x + offset)`` with ``offset = max × LOG_OFFSET_FRACTION`` (max/20) before
it is standardized, and its declared range ``[min, max]`` maps to
``[log(min + offset), log(max + offset)]``. It spreads a skewed positive measurement
(an area, a count) over its range; everything it uses is declared in the schema (no
site's data), so it costs no ε. The transform needs a declared ``min ≥ 0`` and
``max > min`` (``log`` of a positive number everywhere in the range).

One value at a time, :func:`transformed` serves the declared bounds
(:func:`models.data.features.declared_bounds`), the inference service's range check and
the SDK's homomorphic encoding (:mod:`protocol.inference`), which sends values already
transformed. A whole column at once, the feature encoder and the federated statistics
use numpy with :func:`log_offset` (``models.data.features.on_encoded_scale``; numpy's log
may differ from ``math.log`` in the last bit). Standard library only: the SDK distribution
ships this module.
"""

from __future__ import annotations

import math

LOG = "log"
TRANSFORMS = (LOG,)
# log(x + max × LOG_OFFSET_FRACTION): the offset keeps a declared minimum of 0 finite.
LOG_OFFSET_FRACTION = 1 / 20


def transform_requirement(transform: str, low: float | None, high: float | None) -> str:
    """What ``transform`` needs of a feature's declared range that it lacks ("" if none).

    Parameters
    ----------
    transform : str
        The declared transform's name.
    low, high : float or None
        The feature's declared ``min`` and ``max`` (None where unset).
    """
    if transform not in TRANSFORMS:
        return f"transform is '{transform}', expected one of {list(TRANSFORMS)}"
    if low is None or high is None or not 0 <= low < high:
        return (
            f"transform '{transform}' needs a declared min ≥ 0 and max > min "
            f"(min is {low}, max is {high})"
        )
    return ""


def transformed(transform: str | None, value: float, maximum: float | None) -> float:
    """``value`` on its feature's encoded scale (unchanged without a transform).

    Parameters
    ----------
    transform : str or None
        The feature's declared transform (checked by :func:`transform_requirement`).
    value : float
        A value within the feature's declared range (NaN stays NaN).
    maximum : float or None
        The feature's declared ``max`` (the log's offset is a fraction of it).
    """
    if transform is None:
        return value
    assert maximum is not None  # transform_requirement: a transform has a declared range
    return math.log(value + log_offset(maximum))


def untransformed(transform: str | None, value: float, maximum: float | None) -> float:
    """The inverse of :func:`transformed`: a value on the encoded scale, as measured.

    Parameters
    ----------
    transform : str or None
        The feature's declared transform.
    value : float
        A value on the feature's encoded scale.
    maximum : float or None
        The feature's declared ``max``.
    """
    if transform is None:
        return value
    assert maximum is not None  # transform_requirement: a transform has a declared range
    return math.exp(value) - log_offset(maximum)


def log_offset(maximum: float) -> float:
    """What ``transform = "log"`` adds before the log, for a feature declared up to ``maximum``."""
    return maximum * LOG_OFFSET_FRACTION
