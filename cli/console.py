"""`fedcare console` (coordinator) and `fedcare site console` (hospital): read-only web pages."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from cli.output import fail

console = Console()

_TOKENS = typer.Option(..., help="The token store; a token needs the 'console' scope.")
_CERT = typer.Option(..., help="The console's TLS certificate (PEM).")
_KEY = typer.Option(..., help="Its private key (PEM).")
_HOST = typer.Option("127.0.0.1", help="Address to listen on (loopback by default).")


def coordinator_console(
    runs: Path = typer.Option(Path("fedcare-runs"), help="A folder of run folders (or one run)."),
    registry: list[Path] = typer.Option(
        [], help="A model registry to list besides the runs' own (repeat)."
    ),
    verify_key: Path | None = typer.Option(
        None, help="The coordinator's public signing key, to verify every version."
    ),
    audit_log: Path | None = typer.Option(None, help="The inference service's audit log."),
    coordinator_dir: Path | None = typer.Option(
        None, "--dir", help="The provisioned coordinator folder (the SuperLink's nodes)."
    ),
    storage_key: Path | None = typer.Option(
        None, help="The registry's storage key, to verify versions encrypted at rest."
    ),
    service: str | None = typer.Option(
        None, help="The inference service's URL, to ask which versions it serves."
    ),
    service_ca: Path | None = typer.Option(None, help="The CA of the service's certificate."),
    tokens: Path = _TOKENS,
    tls_cert: Path = _CERT,
    tls_key: Path = _KEY,
    host: str = _HOST,
    port: int = typer.Option(8443, help="Port."),
) -> None:
    """The coordinator's console: federation, runs, models, inference (read-only, TLS, token)."""
    from console.coordinator_app import CoordinatorSources, make_coordinator_app
    from console.web import serve
    from privacy.signing import SignatureError
    from privacy.tokens import TokenError, TokenStore

    sources = CoordinatorSources(
        runs_dir=runs.resolve(),
        registries=tuple(registry),
        verify_key=verify_key,
        audit_log=audit_log,
        coordinator_dir=coordinator_dir,
        storage_key=storage_key,
        service=service,
        service_ca=service_ca,
    )
    try:
        app = make_coordinator_app(sources, TokenStore(tokens))
    except (SignatureError, TokenError, OSError) as err:
        raise fail(err, 2) from None
    console.print(f"coordinator console at https://{host}:{port}/ (reading {sources.runs_dir})")
    serve(app, host, port, tls_cert, tls_key)


def site_console(
    config: Path = typer.Option(..., help="The site's site.toml."),
    tokens: Path = _TOKENS,
    tls_cert: Path = _CERT,
    tls_key: Path = _KEY,
    host: str = _HOST,
    port: int = typer.Option(8444, help="Port."),
) -> None:
    """A hospital's console: ε per federation and run, releases, data check (read-only)."""
    from console.site_app import make_site_app
    from console.web import serve
    from deploy.supernode import load_site_config
    from models.data.site_config import SiteConfigError
    from privacy.tokens import TokenError, TokenStore

    try:
        app = make_site_app(load_site_config(config), TokenStore(tokens))
    except (SiteConfigError, TokenError) as err:
        raise fail(err, 2) from None
    console.print(f"site console at https://{host}:{port}/")
    serve(app, host, port, tls_cert, tls_key)
