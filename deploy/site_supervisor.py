"""`fedcare site start` keeps the site in the federation: a SuperNode that joined is restarted.

Flower 1.41's SuperNode learns its node id once, when it activates. The coordinator's
SuperLink keeps its state in memory by default (deploy/superlink.py), so after a restart it
knows the site's key again (the coordinator registers every provisioned site at start) but
not the old node id: the SuperNode's next request is refused and it ends ("SuperNode
terminated gracefully", a few seconds after the SuperLink is back). Started again, it
activates with its key and takes part from the next round; its ledger, in the state folder,
is the same. A SuperNode that ends before it first activated (no node id in its log: a
wrong certificate, an unregistered key, a bad setting) has not joined: starting it again
would only repeat the error, so :func:`supervise_site` stops and says so. Once it has
joined, it keeps trying for :data:`REJOIN_WINDOW` s (the new SuperLink may not have
registered the site's key again yet).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from deploy.process import ManagedProcess
from deploy.supernode import NODE_ID_RE, SiteConfig, start_site

# The pause before starting it again (the SuperLink may still be coming up).
RESTART_PAUSE = 2.0
# How long a site that had joined keeps trying to join again.
REJOIN_WINDOW = 600.0


class SiteEnded(Exception):
    """The site's SuperNode (or executor) ended before it had joined; see its log."""

    def __init__(self, process: ManagedProcess):
        super().__init__(
            f"{process.name} exited with {process.popen.returncode} before the SuperNode "
            f"had joined the federation; its log: {process.log_path}"
        )
        self.process = process


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _activated_since(log: Path, offset: int) -> bool:
    """Whether the SuperNode logged its node id (it activated) after byte ``offset``."""
    with log.open("rb") as f:
        f.seek(offset)
        return NODE_ID_RE.search(f.read().decode(errors="replace")) is not None


def supervise_site(
    cfg: SiteConfig,
    stop: threading.Event,
    warm: bool = True,
    on_start: Callable[[ManagedProcess], None] | None = None,
    on_restart: Callable[[str], None] | None = None,
) -> None:
    """Run the site's SuperNode (and executor) until ``stop`` is set, restarting it as needed.

    Parameters
    ----------
    cfg : SiteConfig
        The site.
    stop : threading.Event
        Set it to stop the site (its processes are stopped by PID before this returns).
    warm : bool
        The warm site runtime (default) or Flower's default isolation, as for
        :func:`deploy.supernode.start_site`.
    on_start : callable, optional
        Called with each SuperNode started (the first and every restart).
    on_restart : callable, optional
        Called with a sentence saying why the SuperNode is started again.

    Raises
    ------
    SiteEnded
        The SuperNode or its executor ended before the SuperNode had activated.
    deploy.supernode.SiteAlreadyRunning
        Another SuperNode runs from the site's state folder.
    """
    log = cfg.state_dir / "supernode.log"
    last_joined: float | None = None  # when a SuperNode that had activated ended
    while not stop.is_set():
        offset = _log_size(log)
        process = start_site(cfg, warm=warm)
        if on_start is not None:
            on_start(process)
        ended = process.wait_for_end(stop)
        process.stop()
        if ended is None:
            return
        if _activated_since(log, offset):
            last_joined = time.monotonic()
        elif last_joined is None or time.monotonic() - last_joined > REJOIN_WINDOW:
            raise SiteEnded(ended)
        if on_restart is not None:
            on_restart(
                f"{ended.name} exited with {ended.popen.returncode} after the site had "
                "joined (the SuperLink restarted or dropped this node); starting it again"
            )
        stop.wait(RESTART_PAUSE)
