"""fedcare's exchange: push, then pull every poll interval until the replies or the timeout."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from types import SimpleNamespace

import pytest

from server.federation import exchange as exchange_module
from server.federation.exchange import DelegatingGrid, PromptGrid, exchange


def _reply(to: str) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to))


def _messages(count: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(metadata=SimpleNamespace(message_type="train"))] * count


class ScriptedGrid(DelegatingGrid):
    """A grid whose replies arrive on given pulls (what push/pull see, nothing else)."""

    def __init__(self, ids: list[str | None], arrivals: dict[int, list[str]]):
        super().__init__(grid=None)  # type: ignore[arg-type]
        self.ids, self.arrivals = ids, arrivals
        self.pushed: list = []
        self.pulls: list[set[str]] = []

    def push_messages(self, messages: Iterable) -> list[str | None]:
        self.pushed = list(messages)
        return self.ids

    def pull_messages(self, message_ids: Iterable[str]) -> list:
        self.pulls.append(set(message_ids))
        return [_reply(i) for i in self.arrivals.get(len(self.pulls), [])]

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("the exchange must not use the grid's own send_and_receive")


@pytest.fixture()
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(exchange_module.time, "sleep", slept.append)
    return slept


def test_replies_are_pulled_every_poll_interval_until_all_are_in(sleeps):
    grid = ScriptedGrid(["m1", "m2"], {1: ["m1"], 3: ["m2"]})
    messages = _messages(2)
    replies = exchange(grid, iter(messages), timeout=60.0, poll_interval=0.05)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m1", "m2"]
    assert grid.pushed == messages  # one push, of a list (Flower's grid reads it twice)
    assert grid.pulls == [{"m1", "m2"}, {"m2"}, {"m2"}]  # only what is still missing
    assert sleeps == [0.05, 0.05]  # no pause after the last reply


def test_the_exchange_ends_at_the_timeout_with_what_arrived(monkeypatch, sleeps):
    clock = itertools.count()  # each look at the clock: one second later
    monkeypatch.setattr(exchange_module.time, "monotonic", lambda: float(next(clock)))
    grid = ScriptedGrid(["m1", "m2"], {2: ["m1"]})
    replies = exchange(grid, _messages(2), timeout=3.0, poll_interval=0.1)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m1"]
    assert len(grid.pulls) == 3


def test_a_message_the_superlink_did_not_take_is_not_waited_for(sleeps):
    grid = ScriptedGrid(["m1", None], {1: ["m1"]})  # Flower returns None for a bad message
    replies = exchange(grid, _messages(2), timeout=None, poll_interval=0.1)
    assert len(replies) == 1 and sleeps == []


def test_prompt_grid_answers_send_and_receive_with_the_exchange(sleeps):
    inner = ScriptedGrid(["m1"], {2: ["m1"]})
    grid = PromptGrid(inner, poll_interval=0.02)
    (reply,) = grid.send_and_receive(_messages(1), timeout=5.0)
    assert reply.metadata.reply_to_message_id == "m1" and sleeps == [0.02]
    assert grid.pull_messages(["m1"]) == []  # everything else is the real grid's
