"""The warm site runtime: the hospital's own ClientApp executor beside its SuperNode.

`fedcare site start` runs ``flower-supernode --isolation process``, which executes no app
itself: it queues each message from the SuperLink as a task on its loopback Runtime API
and waits for an executor to take it. This module is that executor. It

- loads the site's installed ClientApp once (``[runtime] client-app``, default
  ``client.app:app``: with it torch, Opacus, pandas and scikit-learn), so no message pays
  for those imports again;
- asks the SuperNode for a task (``AcquireTask`` with the ``flwr-clientapp`` task type, as
  Flower's SuperExec does) as soon as the SuperNode nudges it (deploy/task_signal.py), and
  every ``task-poll-interval`` seconds without a nudge;
- forks one short-lived child per task (no state leaks from one message to the next; the
  run's Context travels through the SuperNode as with Flower's own executor). The child
  pulls the task's input with the task's token, checks the run's app, runs the ClientApp
  or refuses, pushes the reply and the task's output, and exits.

Only approved code runs here. The run's FAB is never installed or imported: the child
hashes the FAB the SuperNode holds for the run (sha256 of the bundle, as ``flwr build``
and ``flwr run`` name it) and, when the hash is in the site's ``approved-apps``, runs the
site's own installed ClientApp with the run's message and context; otherwise it answers
with an error reply (:attr:`protocol.federation.RefusalCode.APP_NOT_APPROVED`) whose reason
names the site and the hash.

    python -m deploy.site_runtime --runtime-address 127.0.0.1:9094 --site a \
        --approved-app <sha256> --supernode-pid <pid> [--task-signal-port <port>]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
import torch
from flwr.app import Message
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
)
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import (
    pull_task_input,
    push_message,
    push_task_output,
)

from deploy.process import alive, interval_setting
from deploy.task_signal import TaskListener
from protocol.federation import RefusalCode
from protocol.flower_waits import shorten_object_pull_backoff

COMPONENT = "fedcare-site-executor"
DEFAULT_CLIENT_APP = "client.app:app"
# What the executor calls, if the ClientApp's module has it, before forking a task.
PRELOAD = "preload_site"
# Without a nudge from the SuperNode (deploy/task_signal.py), the executor asks this often.
DEFAULT_TASK_POLL_INTERVAL = 0.5
# Overrides site.toml's [runtime] task-poll-interval (as FLWR_SUPEREXEC_TASK_POLL_INTERVAL
# does for Flower's SuperExec).
TASK_POLL_INTERVAL_ENV = "FEDCARE_TASK_POLL_INTERVAL"


@dataclass(frozen=True)
class ExecutorSettings:
    """What the site executor needs.

    Parameters
    ----------
    runtime_address : str
        host:port of the SuperNode's Runtime API (loopback, plain HTTP).
    site_name : str
        This site's name, given in every refusal's reason.
    approved_apps : frozenset of str
        sha256 hex digests of the FABs whose runs this site takes part in.
    client_app : str
        ``module:attribute`` of the site's installed ClientApp.
    poll_interval : float
        Seconds between task requests while idle and not nudged.
    supernode_pid : int, optional
        The SuperNode's PID; the executor exits once it is gone.
    task_signal_port : int, optional
        The loopback UDP port on which the SuperNode nudges the executor; without it the
        executor only polls.
    node_config : Path, optional
        The SuperNode's ``--node-config`` file. With it, before forking each task the
        executor calls the ClientApp module's ``preload_site(node_config)``, if it has
        one, so that what it loads (the site's data) is there in every task.
    """

    runtime_address: str
    site_name: str
    approved_apps: frozenset[str]
    client_app: str = DEFAULT_CLIENT_APP
    poll_interval: float = DEFAULT_TASK_POLL_INTERVAL
    supernode_pid: int | None = None
    task_signal_port: int | None = None
    node_config: Path | None = None


def say(line: str, stream: TextIO | None = None) -> None:
    """Print ``line`` to the executor's log (stdout by default), with a timestamp.

    The stamp has Flower's log format (``YYYY-MM-DD HH:MM:SS,mmm``, local time), so the
    executor's lines can be set beside the SuperNode's to see where a message's time goes.
    """
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    print(f"{stamp},{int(now % 1 * 1000):03d} {line}", file=stream or sys.stdout, flush=True)


def warm_up() -> None:
    """Import now what the handlers would otherwise import in every forked child.

    torch imports ``torch._dynamo`` the first time an optimizer is built (seconds of CPU;
    measured: 4.2–8.5 s of a train message's 4.8–12.6 s under load 8–11, see
    docs/DEPLOYMENT.md); building one here leaves it imported for every child.
    """
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def fab_sha256(content: bytes) -> str:
    """A FAB's hash as Flower names it (sha256 hex digest of the bundle's bytes)."""
    return hashlib.sha256(content).hexdigest()


def app_refusal(site: str, digest: str, approved: frozenset[str]) -> Error | None:
    """The error reply for a run whose app is not approved here; None when it is.

    Parameters
    ----------
    site : str
        This site's name (error replies carry no site record, so the reason names it).
    digest : str
        The run's FAB hash.
    approved : frozenset of str
        The site's approved FAB hashes.
    """
    if digest in approved:
        return None
    return Error(
        code=int(RefusalCode.APP_NOT_APPROVED),
        reason=(
            f"site {site} refused the run: its app (FAB sha256 {digest}) is not in the "
            "site's approved-apps"
        ),
    )


def load_client_app(reference: str) -> ClientApp:
    """Import the site's installed ClientApp from ``module:attribute``.

    Parameters
    ----------
    reference : str
        Where the app is, e.g. ``client.app:app``.

    Raises
    ------
    ValueError
        The reference does not name a ClientApp.
    """
    module_name, _, attribute = reference.partition(":")
    app = getattr(importlib.import_module(module_name), attribute or "app", None)
    if not isinstance(app, ClientApp):
        raise ValueError(f"{reference!r} is not a Flower ClientApp")
    return app


def load_preload(settings: ExecutorSettings) -> Callable[[], None]:
    """What to call before forking a task: the app module's ``preload_site`` or nothing.

    Parameters
    ----------
    settings : ExecutorSettings
        ``client_app`` names the module; ``node_config`` the file passed to it.
    """
    module = importlib.import_module(settings.client_app.partition(":")[0])
    preload = getattr(module, PRELOAD, None)
    if settings.node_config is None or not callable(preload):
        return lambda: None
    node_config = tomllib.loads(settings.node_config.read_text())
    return lambda: preload(node_config)


def _runtime_client(
    address: str, token: str | None = None, give_up_after: float | None = None
) -> RuntimeHttpClient:
    retry_invoker = make_simple_http_retry_invoker()
    retry_invoker.max_time = give_up_after
    interceptors: list[ProtobufClientInterceptor] = [
        RuntimeVersionHttpInterceptor(component_name=COMPONENT)
    ]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the Runtime API listens on loopback only
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=retry_invoker,
    )


def run_task(settings: ExecutorSettings, app: ClientApp, token: str) -> int:
    """Execute one task (in a forked child): check the app, run or refuse, reply.

    Parameters
    ----------
    settings : ExecutorSettings
        The site's executor settings.
    app : ClientApp
        The site's own ClientApp, already imported.
    token : str
        The task's token from ``AcquireTask``.

    Returns
    -------
    int
        The child's exit code: 0 when the ClientApp ran or the refusal was delivered.
    """
    client = _runtime_client(settings.runtime_address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context = None
    status, details, code = SubStatus.FAILED, "", 1
    t0 = time.monotonic()
    try:
        message, context, run, fab = pull_task_input(client)
        t_input = time.monotonic()
        digest = fab_sha256(fab.content)
        error = app_refusal(settings.site_name, digest, settings.approved_apps)
        if error is not None:
            reply = Message(error, reply_to=message)
            details = str(error.reason)
        else:
            try:
                reply = app(message=message, context=context)
                status = SubStatus.COMPLETED
            except Exception as err:  # any failure of the app becomes its error reply
                details = f"{type(err).__name__}: {err}"
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                    reply_to=message,
                )
        t_app = time.monotonic()
        push_message(client, reply, context)
        code = 0
        t_end = time.monotonic()
        say(
            f"run {run.run_id} {message.metadata.message_type}: app {digest[:12]} "
            f"{'refused' if error else 'ran'}, replied in {t_end - t0:.2f} s (input "
            f"{t_input - t0:.2f}, app {t_app - t_input:.2f}, reply {t_end - t_app:.2f})"
            + (f" (FAB sha256 {digest} is not approved)" if error else "")
        )
    finally:
        push_task_output(client, context, status, details)
        heartbeat.stop()
        client.close()
    return code


def _fork_task(settings: ExecutorSettings, app: ClientApp, token: str) -> int:
    """Fork a child that runs one task and exits; the child's PID."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = run_task(settings, app, token)
    except BaseException as err:  # a child must never return into the parent's loop
        say(f"task failed: {type(err).__name__}: {err}", sys.stderr)
    finally:
        sys.stdout.flush()
        os._exit(code)


def _reap(children: set[int]) -> None:
    """Collect finished children so none stays a zombie."""
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)
            if (code := os.waitstatus_to_exitcode(status)) != 0:
                say(f"task process {pid} exited with {code}", sys.stderr)


def _listen_for_nudges(port: int | None) -> TaskListener | None:
    """Listen for the SuperNode's nudges on ``port``; None (poll only) when that fails."""
    if port is None:
        return None
    try:
        return TaskListener(port)
    except OSError as err:
        say(f"cannot listen for the SuperNode's nudges on UDP {port} ({err}); polling only")
        return None


def serve(settings: ExecutorSettings) -> None:
    """Load the ClientApp once, then acquire and fork tasks until the SuperNode is gone.

    Parameters
    ----------
    settings : ExecutorSettings
        The site's executor settings.
    """
    t0 = time.monotonic()
    app = load_client_app(settings.client_app)
    preload = load_preload(settings)
    warm_up()
    shorten_object_pull_backoff()  # a task's message may still be arriving at the SuperNode
    say(
        f"{COMPONENT} for site {settings.site_name}: {settings.client_app} loaded in "
        f"{time.monotonic() - t0:.1f} s; {len(settings.approved_apps)} approved app(s); "
        f"polling {settings.runtime_address} every {settings.poll_interval} s"
    )
    # Retries end after a few seconds so that the loop sees a SuperNode that is gone.
    client = _runtime_client(settings.runtime_address, give_up_after=5.0)
    listener = _listen_for_nudges(settings.task_signal_port)
    children: set[int] = set()
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    try:
        while True:  # SIGTERM ends it at once: nothing here outlives a task
            _reap(children)
            if settings.supernode_pid is not None and not alive(settings.supernode_pid):
                say("the SuperNode is gone; exiting")
                return
            try:
                res = client.AcquireTask(request)
            except httpx.TransportError:
                continue  # the SuperNode is starting, or gone (checked above)
            if res.HasField("task") and res.token:
                preload()
                children.add(_fork_task(settings, app, res.token))
                continue  # another task may be queued already
            if listener is None:
                time.sleep(settings.poll_interval)
            else:
                listener.wait(settings.poll_interval)
    finally:
        client.close()
        if listener is not None:
            listener.close()


def task_poll_interval(configured: float) -> float:
    """The idle poll interval: ``FEDCARE_TASK_POLL_INTERVAL`` if set, else ``configured``.

    Parameters
    ----------
    configured : float
        The value from site.toml.

    Raises
    ------
    ValueError
        The interval is not within [0.01, 60] seconds.
    """
    return interval_setting(configured, TASK_POLL_INTERVAL_ENV, 0.01, 60.0, "task poll interval")


def executor_command(
    python: str,
    runtime_address: str,
    site_name: str,
    approved_apps: Sequence[str],
    client_app: str,
    poll_interval: float,
    supernode_pid: int,
    task_signal_port: int | None = None,
    node_config: Path | None = None,
) -> list[str]:
    """The command line that starts the site executor (see :func:`main`).

    Parameters
    ----------
    python : str
        The interpreter of the environment that holds the site's ClientApp.
    runtime_address, site_name, approved_apps, client_app, poll_interval, supernode_pid
        As in :class:`ExecutorSettings`.
    task_signal_port, node_config : optional
        As in :class:`ExecutorSettings`.
    """
    cmd = [python, "-m", "deploy.site_runtime", "--runtime-address", runtime_address]
    cmd += ["--site", site_name, "--client-app", client_app]
    cmd += ["--poll-interval", str(poll_interval), "--supernode-pid", str(supernode_pid)]
    if task_signal_port is not None:
        cmd += ["--task-signal-port", str(task_signal_port)]
    if node_config is not None:
        cmd += ["--node-config", str(node_config)]
    for digest in approved_apps:
        cmd += ["--approved-app", digest]
    return cmd


def main(argv: Sequence[str] | None = None) -> None:
    """Run the site executor (the arguments of :func:`executor_command`).

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments; default ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-address", required=True)
    parser.add_argument("--site", required=True)
    parser.add_argument("--approved-app", action="append", default=[])
    parser.add_argument("--client-app", default=DEFAULT_CLIENT_APP)
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_TASK_POLL_INTERVAL)
    parser.add_argument("--supernode-pid", type=int)
    parser.add_argument("--task-signal-port", type=int)
    parser.add_argument("--node-config", type=Path)
    args = parser.parse_args(argv)
    serve(
        ExecutorSettings(
            runtime_address=args.runtime_address,
            site_name=args.site,
            approved_apps=frozenset(args.approved_app),
            client_app=args.client_app,
            poll_interval=task_poll_interval(args.poll_interval),
            supernode_pid=args.supernode_pid,
            task_signal_port=args.task_signal_port,
            node_config=args.node_config,
        )
    )


if __name__ == "__main__":
    main()
