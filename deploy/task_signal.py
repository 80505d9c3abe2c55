"""A nudge from a site's SuperNode to its executor: a message has arrived, take its task.

Flower 1.41's executors learn of a task only by asking the SuperNode (``AcquireTask``) over
and over. Each ask costs ~10 ms of CPU in the executor and as much in the SuperNode, so an
executor asking 10 times a second kept a third of a core busy across 3 sites on loopback
(measured with the CPU times of the processes; see docs/DEPLOYMENT.md). Instead the
SuperNode (started through deploy/supernode_poll.py) sends one UDP datagram to a loopback
port once a message and its contents are stored, and the executor, waiting on that port,
asks at once. The datagram carries nothing but "look now": a lost or spurious one costs
at most one ask, and the executor still asks every ``task-poll-interval`` seconds without
it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

LOOPBACK = "127.0.0.1"
NUDGE = b"task"


def task_notifier(port: int) -> Callable[[], None]:
    """A function that nudges the executor listening on loopback ``port``.

    Parameters
    ----------
    port : int
        The executor's UDP port.

    Returns
    -------
    callable
        Sends one datagram; never raises (nobody listening is not an error: the executor
        polls too).
    """
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)

    def notify() -> None:
        try:
            sender.sendto(NUDGE, (LOOPBACK, port))
        except OSError:
            pass  # the executor is not listening (yet): it finds the task by its poll

    return notify


class TaskListener:
    """The executor's end: wait for a nudge or until the poll interval has passed.

    Parameters
    ----------
    port : int
        The loopback UDP port to listen on.
    """

    def __init__(self, port: int):
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((LOOPBACK, port))

    def wait(self, timeout: float) -> bool:
        """Block until a nudge arrives (True) or ``timeout`` seconds pass (False).

        Nudges that queued up meanwhile are consumed with it: one ask serves them all.
        """
        self._socket.settimeout(timeout)
        try:
            self._socket.recv(64)
        except TimeoutError:
            return False
        self._socket.setblocking(False)
        try:
            while self._socket.recv(64):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        """Stop listening."""
        self._socket.close()
