"""Flower 1.41's back-off for objects that are not there yet, shortened for fedcare.

Every Flower process pulls a message's contents (its arrays and records, stored as
objects) after the message itself: the ServerApp's grid pulling a reply, a SuperNode
pulling an instruction from the SuperLink, the ClientApp's executor pulling its task from
the SuperNode. The sender stores the message first and uploads its objects after it, so a
prompt receiver often asks for an object a fraction of a second too early; Flower then
waits 1 s before asking again (doubling up to 10 s: ``PULL_INITIAL_BACKOFF``,
``PULL_BACKOFF_CAP`` in ``flwr.supercore.constant``, bound as the keyword defaults of
``pull_objects`` and ``pull_and_inflate_object_from_tree`` when Flower is imported; no
option or environment variable sets them). With Flower's 3 s polls that second was rarely
paid; with fedcare's short polls it would be paid on most exchanges.

:func:`shorten_object_pull_backoff` sets those two defaults in the calling process. It is
tied to flwr 1.41's code: it raises :class:`FlowerChanged` unless both functions still have
exactly those defaults (1 s, 10 s), so a Flower upgrade cannot silently lose or misapply it.
"""

from __future__ import annotations

from flwr.supercore.inflatable import inflatable_utils

# Flower 1.41's values, checked before they are replaced.
FLOWER_BACKOFF = {"initial_backoff": 1, "backoff_cap": 10}
# fedcare's: the first retry after 50 ms, then doubling up to 0.2 s. A message's contents
# follow it within a second or so (one request per object), so a longer pause is mostly
# paid after they are there; Flower's 500 tries per object still allow 100 s.
FEDCARE_BACKOFF = {"initial_backoff": 0.05, "backoff_cap": 0.2}
PULL_FUNCTIONS = ("pull_objects", "pull_and_inflate_object_from_tree")


class FlowerChanged(RuntimeError):
    """Flower's code no longer has the shape a fedcare adjustment was written for."""


def shorten_object_pull_backoff() -> None:
    """Retry a missing object after 50 ms (doubling up to 0.2 s), not 1 s (up to 10 s).

    Idempotent: a second call finds fedcare's values and leaves them.

    Raises
    ------
    FlowerChanged
        A pull function is gone or its back-off defaults are neither Flower 1.41's nor
        fedcare's.
    """
    for name in PULL_FUNCTIONS:
        function = getattr(inflatable_utils, name, None)
        defaults = getattr(function, "__kwdefaults__", None) or {}
        current = {key: defaults.get(key) for key in FLOWER_BACKOFF}
        if current not in (FLOWER_BACKOFF, FEDCARE_BACKOFF):
            raise FlowerChanged(
                f"flwr.supercore.inflatable.inflatable_utils.{name} back-off is {current}, "
                f"not {FLOWER_BACKOFF} as in flwr 1.41: re-read it and update "
                "protocol/flower_waits.py"
            )
        defaults.update(FEDCARE_BACKOFF)
