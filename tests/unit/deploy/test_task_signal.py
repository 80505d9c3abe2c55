"""The SuperNode's nudge to its executor, over a real loopback UDP socket."""

from __future__ import annotations

import time

from deploy.process import free_loopback_port
from deploy.task_signal import TaskListener, task_notifier


def test_a_nudge_wakes_the_listener_and_queued_nudges_count_once():
    port = free_loopback_port()
    listener = TaskListener(port)
    try:
        notify = task_notifier(port)
        assert listener.wait(0.05) is False  # nothing sent: it waits the poll interval out
        for _ in range(3):
            notify()
        started = time.monotonic()
        assert listener.wait(5.0) is True
        assert time.monotonic() - started < 1.0
        assert listener.wait(0.05) is False  # the other two were consumed with the first
    finally:
        listener.close()


def test_nudging_with_nobody_listening_is_not_an_error():
    task_notifier(free_loopback_port())()
