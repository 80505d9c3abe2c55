"""Replay protection: a sealed request is answered once, and only while it is fresh.

Every request carries, inside its envelope, the Unix time it was made and a random
request id. The service refuses a timestamp more than ``window`` seconds away from its own
clock (``stale_request``) and an id it has already seen (``replayed_request``). An id is
remembered until its timestamp leaves the window, after which the timestamp alone refuses
it, so memory stays bounded by the request rate times the window.
"""

from __future__ import annotations

import heapq
import threading
import time

from protocol import inference as wire


class ReplayGuard:
    """Seen request ids, forgotten once their timestamps are stale.

    Parameters
    ----------
    window : float
        Seconds a timestamp may differ from the service's clock (either way).
    max_entries : int
        The most ids remembered at once; beyond, new requests are refused with 429 until
        old ids expire (a flood cannot grow memory without bound).
    """

    def __init__(self, window: float = 120.0, max_entries: int = 1_000_000):
        self.window = window
        self.max_entries = max_entries
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []  # min-heap of (forget at, id)
        self._lock = threading.Lock()

    def check(self, request_id: str, timestamp: int, now: float | None = None) -> None:
        """Accept the request once, or raise :class:`protocol.inference.ApiError` saying why not."""
        now = time.time() if now is None else now
        if abs(now - timestamp) > self.window:
            raise wire.STALE_REQUEST.error(
                f"the request's timestamp is {now - timestamp:+.0f} s from the service's "
                f"clock; at most {self.window:.0f} s is accepted"
            )
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                self._seen.discard(heapq.heappop(self._expiry)[1])
            if request_id in self._seen:
                raise wire.REPLAYED_REQUEST.error("this request id was already used")
            if len(self._seen) >= self.max_entries:
                raise wire.REPLAY_CACHE_FULL.error(
                    "too many requests in the replay window; retry later"
                )
            self._seen.add(request_id)
            heapq.heappush(self._expiry, (timestamp + self.window, request_id))
