"""`flower-supernode` with a short poll: how fedcare's warm site runtime starts the SuperNode.

Flower 1.41's SuperNode main loop (``flwr.supernode.start_client_internal``) sleeps a
hard-coded 3 s whenever the SuperLink had no message for it, and 0.5 s between looks for
the reply the executor stored (and for its objects). Every exchange of a round therefore
waited on average 1.5 s before a site even saw its message, and up to 0.5 s more before the
reply left. No option or environment variable sets these pauses, so this entry point caps
them in that one module and then runs Flower's own ``flower-supernode`` (same arguments,
same code, same logs, now with timestamps): the idle pause (a signed HTTPS request to the
SuperLink per look) at ``--poll-interval`` seconds, or :data:`BRISK_POLL` s for
:data:`BRISK_WINDOW` s after a message arrived (the run's next message is then due within
a second: the coordinator's next exchange, or the next SecAgg+ stage), the looks for the
reply (a read of the SuperNode's own in-memory state, no request) at :data:`LOCAL_WAIT`
seconds. It also
shortens Flower's back-off for message contents that are not uploaded yet
(protocol/flower_waits.py), and with ``--task-signal-port`` it nudges the site executor
(deploy/task_signal.py) each time the loop has stored a message and its contents, by
wrapping the loop's ``_pull_and_store_message``. Nothing else of Flower is touched; the
SuperNode's heartbeats and connection retries keep their timings.

This is tied to flwr 1.41's code: before patching, :func:`check_flower_shape` reads the
module's source and fails loudly (exit code 2, naming what changed) unless its
``time.sleep`` calls are exactly the ones described above and ``_pull_and_store_message``
still takes the arguments it took in 1.41, so a Flower upgrade that moves or renames them
cannot silently lose (or misapply) the cap or the nudge.

    python -m deploy.supernode_poll --poll-interval 0.2 [--task-signal-port P] -- \
        <flower-supernode arguments>
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
import math
import sys
import time
import types
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flwr.supercore.logger import update_console_handler
from flwr.supernode.cli import flower_supernode

from deploy.process import interval_setting
from deploy.task_signal import task_notifier
from protocol.flower_waits import FlowerChanged, shorten_object_pull_backoff

# The module itself (its name is also a function's, which the package may re-export).
SUPERNODE_LOOP = importlib.import_module("flwr.supernode.start_client_internal")

DEFAULT_SUPERNODE_POLL_INTERVAL = 0.2
# Overrides site.toml's [runtime] supernode-poll-interval.
SUPERNODE_POLL_INTERVAL_ENV = "FEDCARE_SUPERNODE_POLL_INTERVAL"
# The sleeps of flwr 1.41's SuperNode loop: 3 s while idle, 0.5 s twice waiting for a reply.
FLOWER_IDLE_PAUSE, FLOWER_REPLY_PAUSE = 3, 0.5
FLOWER_SLEEPS = Counter({FLOWER_IDLE_PAUSE: 1, FLOWER_REPLY_PAUSE: 2})
# fedcare's pause between looks for the executor's reply in the SuperNode's own state.
LOCAL_WAIT = 0.02
# After a message, the run's next one is due within a second (replies gathered, the next
# exchange pushed): look for it every BRISK_POLL s for BRISK_WINDOW s, then every poll
# interval. A look is a signed request to the SuperLink, so only briefly this often.
BRISK_POLL = 0.05
BRISK_WINDOW = 3.0
# flwr 1.41's step of the loop that pulls one message and its contents and stores them
# (returning the run id, or None when there was none), with its parameters.
PULL_AND_STORE = "_pull_and_store_message"
FLOWER_PULL_AND_STORE_PARAMETERS = (
    "state",
    "object_store",
    "node_config",
    "receive",
    "get_run",
    "get_fab",
    "pull_object",
    "confirm_message_received",
    "trusted_entities",
)


def module_sleeps(module: types.ModuleType) -> Counter:
    """The constant arguments of every ``time.sleep(...)`` call in ``module``'s source.

    Parameters
    ----------
    module : module
        The module to read.

    Returns
    -------
    Counter
        How often each constant is slept (a call with a non-constant argument counts
        under ``None``).
    """
    found: Counter = Counter()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "sleep"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "time"
        ):
            arg = node.args[0] if node.args else None
            found[arg.value if isinstance(arg, ast.Constant) else None] += 1
    return found


def check_flower_shape(module: types.ModuleType = SUPERNODE_LOOP) -> None:
    """Raise unless ``module`` sleeps as flwr 1.41's SuperNode loop does.

    Raises
    ------
    FlowerChanged
        ``module`` has no module-level ``time``, its ``time.sleep`` calls differ from
        :data:`FLOWER_SLEEPS`, or its ``_pull_and_store_message`` is gone or takes other
        arguments.
    """
    if getattr(module, "time", None) is not time:
        raise FlowerChanged(f"{module.__name__} no longer imports `time` as a module")
    found = module_sleeps(module)
    if found != FLOWER_SLEEPS:
        raise FlowerChanged(
            f"{module.__name__} sleeps {dict(found)}, not {dict(FLOWER_SLEEPS)} as in flwr "
            "1.41: re-read its main loop and update deploy/supernode_poll.py"
        )
    step = getattr(module, PULL_AND_STORE, None)
    parameters = tuple(inspect.signature(step).parameters) if callable(step) else None
    if parameters != FLOWER_PULL_AND_STORE_PARAMETERS:
        raise FlowerChanged(
            f"{module.__name__}.{PULL_AND_STORE} takes {parameters}, not "
            f"{FLOWER_PULL_AND_STORE_PARAMETERS} as in flwr 1.41: re-read its main loop and "
            "update deploy/supernode_poll.py"
        )


@dataclass
class PollPace:
    """How long the SuperNode pauses between looks for a message: briskly after one came.

    Parameters
    ----------
    idle : float
        The pause while nothing happened for ``window`` s (``--poll-interval``).
    brisk : float
        The pause within ``window`` s of the last message.
    window : float
        Seconds after a message during which the next one is due.
    last_message : float
        ``time.monotonic()`` when the last message arrived (-inf: none yet).
    """

    idle: float
    brisk: float = BRISK_POLL
    window: float = BRISK_WINDOW
    last_message: float = -math.inf

    def message_arrived(self) -> None:
        """Note that a message (and its contents) was just stored."""
        self.last_message = time.monotonic()

    def idle_pause(self) -> float:
        """The pause before the next look for a message."""
        if time.monotonic() - self.last_message < self.window:
            return min(self.idle, self.brisk)
        return self.idle


def cap_sleeps(module: types.ModuleType, pace: PollPace, local_cap: float = LOCAL_WAIT) -> None:
    """Pace ``module``'s idle pauses by ``pace`` and cap its waits for a reply at ``local_cap``.

    A pause longer than Flower's reply wait (:data:`FLOWER_REPLY_PAUSE`) is an idle pause.
    Only ``module``'s own name ``time`` is replaced (by a copy of the time module whose
    ``sleep`` is capped); the rest of the process keeps the real one.
    """

    def sleep(seconds: float) -> None:
        if seconds <= FLOWER_REPLY_PAUSE:
            time.sleep(min(seconds, local_cap))
        else:
            time.sleep(min(seconds, pace.idle_pause()))

    capped = types.ModuleType("time", "The time module, its sleep capped by fedcare.")
    capped.__dict__.update(
        {k: v for k, v in vars(time).items() if not k.startswith("__")}, sleep=sleep
    )
    module.time = capped  # type: ignore[attr-defined]


def notify_on_message(module: types.ModuleType, notify: Callable[[], None]) -> None:
    """Call ``notify`` each time ``module``'s loop has stored a message (and its contents).

    Parameters
    ----------
    module : module
        The SuperNode loop (checked by :func:`check_flower_shape`).
    notify : callable
        Called after every ``_pull_and_store_message`` that returned a run id.
    """
    step = getattr(module, PULL_AND_STORE)

    @functools.wraps(step)
    def pull_and_store_message(*args, **kwargs):
        run_id = step(*args, **kwargs)
        if run_id is not None:
            notify()
        return run_id

    setattr(module, PULL_AND_STORE, pull_and_store_message)


def supernode_poll_interval(configured: float) -> float:
    """The SuperNode's poll: ``FEDCARE_SUPERNODE_POLL_INTERVAL`` if set, else ``configured``.

    Parameters
    ----------
    configured : float
        The value from site.toml (``[runtime] supernode-poll-interval``).

    Raises
    ------
    ValueError
        The interval is not within [0.05, 3] seconds (3 s is Flower's own pause).
    """
    return interval_setting(
        configured, SUPERNODE_POLL_INTERVAL_ENV, 0.05, 3.0, "SuperNode poll interval"
    )


def supernode_entry(
    python: str, poll_interval: float, task_signal_port: int | None = None
) -> list[str]:
    """The start of the command line that runs ``flower-supernode`` through this module.

    Parameters
    ----------
    python : str
        The interpreter of the environment that holds Flower and fedcare.
    poll_interval : float
        The cap on the SuperNode loop's idle pauses, in seconds.
    task_signal_port : int, optional
        The loopback UDP port the site executor waits on for nudges.
    """
    cmd = [python, "-m", "deploy.supernode_poll", "--poll-interval", str(poll_interval)]
    if task_signal_port is not None:
        cmd += ["--task-signal-port", str(task_signal_port)]
    return [*cmd, "--"]


def main(argv: Sequence[str] | None = None) -> None:
    """Check Flower's shape, cap the SuperNode loop's sleeps and run ``flower-supernode``.

    Parameters
    ----------
    argv : sequence of str, optional
        ``--poll-interval S [--task-signal-port P] -- <flower-supernode arguments>``;
        default ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_SUPERNODE_POLL_INTERVAL)
    parser.add_argument("--task-signal-port", type=int)
    parser.add_argument("supernode_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rest = args.supernode_args[1:] if args.supernode_args[:1] == ["--"] else args.supernode_args
    try:
        check_flower_shape()
        shorten_object_pull_backoff()  # for the message contents it pulls from the SuperLink
        cap = supernode_poll_interval(args.poll_interval)
    except (FlowerChanged, ValueError) as err:
        print(f"fedcare cannot start the SuperNode: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    pace = PollPace(idle=cap)
    cap_sleeps(SUPERNODE_LOOP, pace)
    nudge = task_notifier(args.task_signal_port) if args.task_signal_port is not None else None

    def message_arrived() -> None:
        pace.message_arrived()
        if nudge is not None:
            nudge()

    notify_on_message(SUPERNODE_LOOP, message_arrived)
    # Timestamped, uncoloured lines: the site's log shows when each message came and went.
    update_console_handler(timestamps=True, colored=False)
    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
