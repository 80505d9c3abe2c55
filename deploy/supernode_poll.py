"""`flower-supernode` with a short poll: how fedcare's warm site runtime starts the SuperNode.

Flower 1.41's SuperNode main loop (``flwr.supernode.start_client_internal``) sleeps a
hard-coded 3 s whenever the SuperLink had no message for it, and 0.5 s between looks for
the reply the executor stored (and for its objects). Every exchange of a round therefore
waited on average 1.5 s before a site even saw its message, and up to 0.5 s more before the
reply left. No option or environment variable sets these pauses, so this entry point caps
every ``time.sleep`` of that one module at ``--poll-interval`` seconds and then runs
Flower's own ``flower-supernode`` (same arguments, same code, same logs, now with
timestamps). It also shortens Flower's back-off for message contents that are not uploaded
yet (protocol/flower_waits.py). Nothing else of Flower is touched; the SuperNode's
heartbeats and connection retries keep their timings.

This is tied to flwr 1.41's code: before patching, :func:`check_flower_shape` reads the
module's source and fails loudly (exit code 2, naming what changed) unless its
``time.sleep`` calls are exactly the ones described above, so a Flower upgrade that moves
or renames them cannot silently lose (or misapply) the cap.

    python -m deploy.supernode_poll --poll-interval 0.2 -- <flower-supernode arguments>
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import sys
import time
import types
from collections import Counter
from collections.abc import Sequence

from flwr.supercore.logger import update_console_handler
from flwr.supernode.cli import flower_supernode

from deploy.process import interval_setting
from protocol.flower_waits import FlowerChanged, shorten_object_pull_backoff

# The module itself (its name is also a function's, which the package may re-export).
SUPERNODE_LOOP = importlib.import_module("flwr.supernode.start_client_internal")

DEFAULT_SUPERNODE_POLL_INTERVAL = 0.2
# Overrides site.toml's [runtime] supernode-poll-interval.
SUPERNODE_POLL_INTERVAL_ENV = "FEDCARE_SUPERNODE_POLL_INTERVAL"
# The sleeps of flwr 1.41's SuperNode loop: 3 s while idle, 0.5 s twice waiting for a reply.
FLOWER_SLEEPS = Counter({3: 1, 0.5: 2})


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
        ``module`` has no module-level ``time`` or its ``time.sleep`` calls differ from
        :data:`FLOWER_SLEEPS`.
    """
    if getattr(module, "time", None) is not time:
        raise FlowerChanged(f"{module.__name__} no longer imports `time` as a module")
    found = module_sleeps(module)
    if found != FLOWER_SLEEPS:
        raise FlowerChanged(
            f"{module.__name__} sleeps {dict(found)}, not {dict(FLOWER_SLEEPS)} as in flwr "
            "1.41: re-read its main loop and update deploy/supernode_poll.py"
        )


def cap_sleeps(module: types.ModuleType, cap: float) -> None:
    """Make every ``time.sleep`` of ``module`` sleep at most ``cap`` seconds.

    Only ``module``'s own name ``time`` is replaced (by a copy of the time module whose
    ``sleep`` is capped); the rest of the process keeps the real one.
    """
    capped = types.ModuleType("time", "The time module, its sleep capped by fedcare.")
    capped.__dict__.update(
        {k: v for k, v in vars(time).items() if not k.startswith("__")},
        sleep=lambda seconds: time.sleep(min(seconds, cap)),
    )
    module.time = capped  # type: ignore[attr-defined]


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


def supernode_entry(python: str, poll_interval: float) -> list[str]:
    """The start of the command line that runs ``flower-supernode`` through this module.

    Parameters
    ----------
    python : str
        The interpreter of the environment that holds Flower and fedcare.
    poll_interval : float
        The cap on the SuperNode loop's pauses, in seconds.
    """
    return [python, "-m", "deploy.supernode_poll", "--poll-interval", str(poll_interval), "--"]


def main(argv: Sequence[str] | None = None) -> None:
    """Check Flower's shape, cap the SuperNode loop's sleeps and run ``flower-supernode``.

    Parameters
    ----------
    argv : sequence of str, optional
        ``--poll-interval S -- <flower-supernode arguments>``; default ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_SUPERNODE_POLL_INTERVAL)
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
    cap_sleeps(SUPERNODE_LOOP, cap)
    # Timestamped, uncoloured lines: the site's log shows when each message came and went.
    update_console_handler(timestamps=True, colored=False)
    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
