"""The fedcare ServerApp: what the coordinator runs for each federated training run.

``flwr run .`` (simulation or a real SuperLink) loads ``server.app:app``; its settings
come from the run config. ``fedcare simulate`` builds the same app with
:func:`make_server_app`, passing the settings directly, since Flower's in-process
simulation gives the ServerApp an empty run config.
"""

from __future__ import annotations

import importlib
import os
from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from privacy.signing import signer_from_file
from protocol.flower_waits import shorten_object_pull_backoff
from server.federation.exchange import PromptGrid
from server.federation.rounds import run_federation
from server.federation.run_state import Progress, RunOutcome, SitePreparer
from server.federation.secure_aggregation import SecureAggregationGrid
from server.registry import Signer
from server.settings import RunSettings

# Relative output folders of `flwr run` land here, not in Flower's working directory.
FEDCARE_HOME = Path(os.environ.get("FEDCARE_HOME", Path.home() / ".fedcare"))


def make_server_app(
    settings: RunSettings | None = None,
    progress: Progress | None = None,
    signer: Signer | None = None,
    outcomes: list[RunOutcome] | None = None,
    prepare_sites: SitePreparer | None = None,
) -> ServerApp:
    """A ServerApp running :func:`server.federation.rounds.run_federation`.

    Parameters
    ----------
    settings : RunSettings, optional
        Fixed settings; when None they are read from the run's config.
    progress : callable, optional
        Receives a line per round and per event.
    signer : callable, optional
        Signs the registered model; when None, the run config's ``signing-key`` (if any)
        does.
    outcomes : list, optional
        The finished run's :class:`RunOutcome` is appended here (for in-process callers).
    prepare_sites : callable, optional
        Lays out simulated sites; when None, the function the settings' ``site-preparer``
        names is loaded (simulation mode only).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_settings = settings or _settings_from_context(context)
        if run_settings.mode == "deployment":
            # replies are pulled promptly, so their contents may still be uploading
            shorten_object_pull_backoff()
        run_signer = signer
        if run_signer is None and run_settings.signing_key:
            run_signer = signer_from_file(run_settings.signing_key)
        # Replies are pulled every reply-poll-interval s, not every 3 s as Flower's grid does.
        grid = PromptGrid(grid, run_settings.reply_poll_interval)
        if run_settings.uses_secure_aggregation:
            # The round loop stays the same; its training messages go through SecAgg+.
            grid = SecureAggregationGrid(grid, context, run_settings)
        preparer = prepare_sites
        if preparer is None and run_settings.mode == "simulation":
            preparer = load_component(run_settings.site_preparer)
        outcome = run_federation(
            grid,
            run_settings,
            progress=progress or _flower_log,
            signer=run_signer,
            prepare_sites=preparer,
        )
        if outcomes is not None:
            outcomes.append(outcome)

    return app


def _flower_log(line: str) -> None:
    """A progress line through Flower's logger: what `flwr log` shows of a run."""
    flwr_log(INFO, "%s", line)


def load_component(reference: str) -> SitePreparer:
    """The function a ``module:function`` reference names (as Flower loads components).

    Parameters
    ----------
    reference : str
        E.g. ``simulations.prepare:prepare_sites``.
    """
    module, _, name = reference.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"run config 'site-preparer': cannot load {reference!r} ({err})") from err


def _settings_from_context(context: Context) -> RunSettings:
    settings = RunSettings.from_run_config(dict(context.run_config))
    out = Path(settings.out_dir)
    if not out.is_absolute():
        values = settings.to_dict()
        values["out_dir"] = str(FEDCARE_HOME / out / f"run-{context.run_id}")
        settings = RunSettings(**values)
    return settings


app = make_server_app()
