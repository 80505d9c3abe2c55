"""fedcare's message exchange with the sites: push, then pull replies promptly.

Flower 1.41's grids (``HttpGrid``, what a deployed ServerApp gets; ``InMemoryGrid`` in
simulation) implement ``send_and_receive`` as push, then pull until every reply is in or
the timeout has passed; ``HttpGrid`` sleeps a hard-coded 3 s between pulls, so every
exchange of a deployed round waited 1.5 s on average (up to 3 s) after the last reply
had arrived at the SuperLink. :func:`exchange` is the same loop over the Grid's public
``push_messages``/``pull_messages`` with a short, configurable pause (run config
``reply-poll-interval``), and :class:`PromptGrid` puts it behind the Grid interface, so
the round loop and Flower's SecAgg+ workflow (which call ``grid.send_and_receive``) use it
without knowing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import Message
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid
from flwr.supercore.run import Run


def exchange(
    grid: Grid, messages: Iterable[Message], timeout: float | None, poll_interval: float
) -> list[Message]:
    """Push ``messages``, then pull their replies every ``poll_interval`` s.

    Parameters
    ----------
    grid : Grid
        Flower's grid (``push_messages``/``pull_messages`` are used, not its
        ``send_and_receive``).
    messages : iterable of Message
        The messages to deliver.
    timeout : float or None
        Seconds to wait for the replies after pushing; None waits until every reply is in.
    poll_interval : float
        Seconds between pulls while replies are missing.

    Returns
    -------
    list of Message
        The replies that arrived in time (a site that did not answer has none).
    """
    messages = list(messages)
    started = time.monotonic()
    pushed = list(grid.push_messages(messages))
    waiting = {message_id for message_id in pushed if message_id}
    if len(waiting) < len(pushed):
        flwr_log(WARNING, "%d message(s) could not be pushed", len(pushed) - len(waiting))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        arrived = list(grid.pull_messages(waiting))
        replies += arrived
        waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
        if not waiting or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(poll_interval)
    kinds = sorted({m.metadata.message_type for m in messages})
    flwr_log(
        INFO,
        "exchange of %d %s message(s): %d replies in %.2f s",
        len(messages),
        "/".join(kinds),
        len(replies),
        time.monotonic() - started,
    )
    return replies


class DelegatingGrid(Grid):
    """A Grid that passes everything to the run's real Grid (base of fedcare's grids).

    Parameters
    ----------
    grid : Grid
        The run's real Grid.
    """

    def __init__(self, grid: Grid):
        self._grid = grid

    def set_run(self, run: Run) -> None:
        """Set the run on the real Grid."""
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        """The real Grid's run."""
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        """A message created by the real Grid."""
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """The node ids of the connected SuperNodes."""
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push messages through the real Grid; their message ids."""
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies the real Grid has for ``message_ids``."""
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """The real Grid's ``send_and_receive``."""
        return self._grid.send_and_receive(messages, timeout=timeout)


class PromptGrid(DelegatingGrid):
    """The run's Grid, its ``send_and_receive`` replaced by :func:`exchange`.

    Parameters
    ----------
    grid : Grid
        The run's real Grid.
    poll_interval : float
        Seconds between pulls while replies are missing.
    """

    def __init__(self, grid: Grid, poll_interval: float):
        super().__init__(grid)
        self.poll_interval = poll_interval

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Push ``messages`` and pull their replies every ``poll_interval`` s."""
        return exchange(self._grid, messages, timeout, self.poll_interval)
