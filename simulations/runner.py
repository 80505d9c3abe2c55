"""Running a whole federation on one machine with Flower's simulation engine."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from server.app import make_server_app
from server.federation.run_state import RunOutcome
from server.registry import Signer
from server.settings import RunSettings
from simulations.prepare import prepare_sites


def quiet_flower(verbose: bool) -> None:
    """Flower's log lines once each, and only its warnings unless ``verbose``."""
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    # Flower's logger has its own handler; the root one Opacus installs on import
    # (logging.basicConfig) would print every Flower line a second time.
    logging.getLogger("flwr").propagate = False


def run_simulated_federation(
    settings: RunSettings,
    progress: Callable[[str], None] | None = None,
    signer: Signer | None = None,
    verbose: bool = False,
) -> RunOutcome:
    """Simulate ``settings.sites`` hospitals (Ray actors, one CPU each) and run training.

    Parameters
    ----------
    settings : RunSettings
        The run; ``mode`` must be ``simulation``.
    progress : callable, optional
        Receives one line per round.
    signer : callable, optional
        Signs the registered model.
    verbose : bool
        Show Flower's own log lines.
    """
    from flwr.simulation import run_simulation  # imports Ray: keep it off the CLI's start-up

    from client.app import app as client_app

    if settings.mode != "simulation":
        raise ValueError("run_simulated_federation needs mode='simulation'")
    outcomes: list[RunOutcome] = []
    server_app = make_server_app(
        settings, progress=progress, signer=signer, outcomes=outcomes, prepare_sites=prepare_sites
    )
    # Ray's workers otherwise print every ClientApp log line and a banner per actor.
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    quiet_flower(verbose)
    cpus = max(1, min(os.cpu_count() or 1, settings.sites))
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=settings.sites,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "logging_level": "ERROR", "log_to_driver": verbose},
        },
        verbose_logging=verbose,
    )
    if not outcomes:
        raise RuntimeError("the simulation ended without a result; run with --verbose to see why")
    return outcomes[0]
