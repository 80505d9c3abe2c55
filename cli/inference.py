"""`fedcare serve`, `fedcare keys …` and `fedcare tokens …`: run and equip the inference service.

Heavy imports (FastAPI, torch) happen inside the commands, so `fedcare --help` stays fast.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import sys
from dataclasses import fields
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cli.output import fail
from server.inference.config import ServiceConfig

console = Console(stderr=True)
# `fedcare serve`'s defaults are ServiceConfig's (the record its options fill in).
SERVE_DEFAULTS = {f.name: f.default for f in fields(ServiceConfig)}
# Seconds an idle HTTP connection stays open (uvicorn's default, stated in INFERENCE.md).
KEEP_ALIVE_SECONDS = 5
keys_app = typer.Typer(help="Make the keys of the model registry and the inference service.")
tokens_app = typer.Typer(help="Bearer tokens of clinical applications (stored hashed).")


def _parse_pins(pins: list[str]) -> dict[str, int]:
    parsed: dict[str, int] = {}
    for pin in pins:
        name, _, version = pin.partition("=")
        if not name or not version.isdigit():
            raise typer.BadParameter(f"--pin '{pin}': expected NAME=VERSION, e.g. ward=3")
        parsed[name] = int(version)
    return parsed


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    registry: Path = typer.Option(..., help="The model registry folder (<run>/registry)."),
    verify_key: Path = typer.Option(
        ..., help="The coordinator's Ed25519 public key (PEM); only versions it signed load."
    ),
    keyring: Path = typer.Option(..., help="HPKE keyring folder (`fedcare keys hpke-rotate`)."),
    tokens: Path = typer.Option(..., help="Token store (`fedcare tokens create`)."),
    audit_log: Path | None = typer.Option(
        SERVE_DEFAULTS["audit_log"], help="JSON-lines audit log file."
    ),
    storage_key: Path | None = typer.Option(
        SERVE_DEFAULTS["storage_key"], help="Key of model files encrypted at rest."
    ),
    pin: list[str] = typer.Option([], help="Serve NAME=VERSION instead of the newest (repeat)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8443, min=1, max=65535, help="Port to listen on."),
    tls_cert: Path | None = typer.Option(None, help="TLS certificate chain (PEM)."),
    tls_key: Path | None = typer.Option(None, help="TLS private key (PEM)."),
    tls_client_ca: Path | None = typer.Option(
        None, help="Require client certificates signed by this CA (mTLS)."
    ),
    insecure_http: bool = typer.Option(
        False, help="Serve plain HTTP, without TLS: local development only."
    ),
    max_body_bytes: int = typer.Option(
        SERVE_DEFAULTS["max_body_bytes"], min=1024, help="Largest request body (413)."
    ),
    max_rows: int = typer.Option(SERVE_DEFAULTS["max_rows"], min=1, help="Most rows per request."),
    replay_window: float = typer.Option(
        SERVE_DEFAULTS["replay_window"], min=1.0, help="Seconds a timestamp may be off."
    ),
    rate: float = typer.Option(
        SERVE_DEFAULTS["rate_per_second"],
        min=0.001,
        help="Default requests per second per token.",
    ),
    burst: float = typer.Option(SERVE_DEFAULTS["burst"], min=1.0, help="Default burst per token."),
    poll_interval: float = typer.Option(
        SERVE_DEFAULTS["poll_interval"],
        min=0.1,
        help="Seconds between looks at registry, keyring and tokens.",
    ),
    benchmark_plaintext: bool = typer.Option(
        SERVE_DEFAULTS["plaintext_payloads"],
        help="BENCHMARK ONLY: also accept unencrypted application/json payloads.",
    ),
    workers: int = typer.Option(
        SERVE_DEFAULTS["workers"], min=1, help="Threads answering requests off the event loop."
    ),
    explain_rate_per_second: float = typer.Option(
        SERVE_DEFAULTS["explain_rate_per_second"],
        min=0.001,
        help="Requests with attributions per second per token.",
    ),
    explain_burst: float = typer.Option(
        SERVE_DEFAULTS["explain_burst"], min=1.0, help="Burst of requests with attributions."
    ),
    he_max_body_bytes: int = typer.Option(
        SERVE_DEFAULTS["he_max_body_bytes"], min=1024, help="Largest homomorphic body (413)."
    ),
    he_context_ttl: float = typer.Option(
        SERVE_DEFAULTS["he_context_ttl"], min=1.0, help="Seconds a CKKS context stays cached."
    ),
    he_max_contexts: int = typer.Option(
        SERVE_DEFAULTS["he_max_contexts"], min=1, help="Most CKKS contexts cached."
    ),
    max_header_bytes: int = typer.Option(
        SERVE_DEFAULTS["max_header_bytes"], min=1024, help="Most bytes of headers (431)."
    ),
    max_headers: int = typer.Option(
        SERVE_DEFAULTS["max_headers"], min=8, help="Most header fields (431)."
    ),
    torch_threads: int = typer.Option(1, min=1, help="Threads torch may use per request."),
    log_level: str = typer.Option("info", help="Log level of the service's own log."),
) -> None:
    """Serve the registry's verified models over HPKE-encrypted, token-guarded HTTPS."""
    if insecure_http:
        if tls_cert or tls_key:
            raise fail("--insecure-http and --tls-cert/--tls-key exclude each other", 2)
        if not _is_loopback(host):
            raise fail(f"--insecure-http serves only loopback addresses, not {host}", 2)
    elif not (tls_cert and tls_key):
        raise fail(
            "TLS is required: give --tls-cert and --tls-key (or --insecure-http on loopback "
            "for local development)",
            2,
        )
    if tls_client_ca and insecure_http:
        raise fail("--tls-client-ca needs TLS", 2)
    import torch
    import uvicorn

    from privacy.signing import SignatureError
    from privacy.tokens import TokenError
    from server.inference.app import create_app
    from server.inference.keyring import KeyringError

    torch.set_num_threads(torch_threads)
    logging.basicConfig(  # force: an imported library may have configured the root logger
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    config = ServiceConfig(
        registry=registry,
        verify_key=verify_key,
        keyring=keyring,
        tokens=tokens,
        audit_log=audit_log,
        storage_key=storage_key,
        pins=_parse_pins(pin),
        max_body_bytes=max_body_bytes,
        max_rows=max_rows,
        replay_window=replay_window,
        rate_per_second=rate,
        burst=burst,
        poll_interval=poll_interval,
        plaintext_payloads=benchmark_plaintext,
        workers=workers,
        explain_rate_per_second=explain_rate_per_second,
        explain_burst=explain_burst,
        he_max_body_bytes=he_max_body_bytes,
        he_context_ttl=he_context_ttl,
        he_max_contexts=he_max_contexts,
        max_header_bytes=max_header_bytes,
        max_headers=max_headers,
    )
    try:
        app = create_app(config)
    except (KeyringError, SignatureError, TokenError) as err:
        raise fail(err, 2) from None
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        ssl_ca_certs=str(tls_client_ca) if tls_client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls_client_ca else ssl.CERT_NONE,
        log_config=None,
        log_level=log_level.lower(),
        access_log=False,  # the audit log is the record of requests
        server_header=False,
        http="h11",  # the parser whose header-size limit uvicorn exposes
        h11_max_incomplete_event_size=config.max_header_bytes,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


# ------------------------------------------------------------------------------ keys


@keys_app.command("signing")
def keys_signing(
    out: Path = typer.Option(..., help="Private key file; the public key goes to <out>.pub."),
    force: bool = typer.Option(False, help="Replace an existing private key."),
) -> None:
    """Make the coordinator's Ed25519 model-signing key pair."""
    from privacy.signing import SignatureError, generate_signing_key

    try:
        fingerprint = generate_signing_key(out, force=force)
    except SignatureError as err:
        raise fail(err, 2) from None
    console.print(f"signing key {out} (public: {out.with_suffix('.pub')}), {fingerprint}")


@keys_app.command("tls")
def keys_tls(
    federation_dir: Path = typer.Option(
        ..., help="The folder `fedcare provision` made (its ca/ holds the CA key)."
    ),
    dns: str = typer.Option(
        "localhost", "--san-dns", help="Comma-separated DNS names clients reach the service by."
    ),
    ip: str = typer.Option(
        "127.0.0.1", "--san-ip", help="Comma-separated IP addresses clients reach it by."
    ),
    force: bool = typer.Option(False, help="Make a new key and certificate anyway."),
) -> None:
    """Issue the inference service's TLS certificate from the federation's CA.

    Writes <federation-dir>/inference/tls.crt, tls.key and ca.crt: run `fedcare serve
    --tls-cert …/tls.crt --tls-key …/tls.key`; clients verify it with `--ca-cert …/ca.crt`.
    """
    from deploy.provision import ProvisionError, issue_service_cert
    from privacy.pki import PKIError

    try:
        issued = issue_service_cert(
            federation_dir,
            [d for d in dns.split(",") if d.strip()],
            [i for i in ip.split(",") if i.strip()],
            force=force,
        )
    except (ProvisionError, PKIError) as err:
        raise fail(err, 2) from None
    state = "issued" if issued.issued else "kept (it still fits)"
    console.print(f"certificate {issued.cert} {state}; key {issued.key}; CA {issued.ca_cert}")


@keys_app.command("hpke-rotate")
def keys_hpke_rotate(
    keyring: Path = typer.Option(..., help="The service's HPKE keyring folder."),
) -> None:
    """Make a new current HPKE key (the old current key stays accepted until retired)."""
    from server.inference.keyring import KeyringError, rotate

    try:
        entry = rotate(keyring)
    except KeyringError as err:
        raise fail(err, 2) from None
    print(entry.key_id)
    console.print(f"new current key {entry.key_id} in {keyring}")


@keys_app.command("hpke-retire")
def keys_hpke_retire(
    key_id: str = typer.Argument(..., help="The key id (hex) to retire."),
    keyring: Path = typer.Option(..., help="The service's HPKE keyring folder."),
) -> None:
    """Retire a previous HPKE key: no longer published or accepted; its file is deleted."""
    from server.inference.keyring import KeyringError, retire

    try:
        retire(keyring, key_id)
    except KeyringError as err:
        raise fail(err, 2) from None
    console.print(f"retired key {key_id}")


@keys_app.command("hpke-list")
def keys_hpke_list(
    keyring: Path = typer.Option(..., help="The service's HPKE keyring folder."),
) -> None:
    """List the keyring's keys and their states."""
    from server.inference.keyring import KeyringError, list_keys

    try:
        entries = list_keys(keyring)
    except KeyringError as err:
        raise fail(err, 2) from None
    table = Table("key id", "created", "state")
    for entry in entries:
        table.add_row(entry.key_id, entry.created, entry.state)
    Console().print(table)


@keys_app.command("storage")
def keys_storage(
    out: Path = typer.Option(..., help="Where the storage key file goes (mode 0600)."),
    force: bool = typer.Option(False, help="Replace an existing key file."),
) -> None:
    """Make a key for encrypting model files at rest (AES-256-GCM)."""
    from privacy.signing import SignatureError, generate_storage_key

    try:
        key_id = generate_storage_key(out, force=force)
    except SignatureError as err:
        raise fail(err, 2) from None
    console.print(f"storage key {out} (id {key_id})")


@keys_app.command("sign-version")
def keys_sign_version(
    version: Path = typer.Argument(..., help="A registry version folder, e.g. reg/ward/v0001."),
    signing_key: Path = typer.Option(..., help="The coordinator's private signing key."),
    previous_key: Path | None = typer.Option(
        None,
        help="Re-sign: the public key the version is signed with now. Its signature and "
        "files are checked under it before the new signature replaces the old one.",
    ),
    storage_key: Path | None = typer.Option(
        None, help="Re-sign: the storage key of a version encrypted at rest."
    ),
) -> None:
    """Sign a version registered without a key, or re-sign one with a new signing key."""
    from privacy.signing import SignatureError, load_storage_key, load_verify_key, signer_from_file
    from server.registry import resign_version, sign_version

    try:
        signer = signer_from_file(signing_key)
        if previous_key is None:
            path = sign_version(version, signer)
        else:
            stored = load_storage_key(storage_key) if storage_key else None
            path = resign_version(version, signer, load_verify_key(previous_key), stored)
    except (SignatureError, ValueError, OSError) as err:
        raise fail(err, 2) from None
    console.print(f"{'re-signed' if previous_key else 'signed'}: {path}")


@keys_app.command("encrypt-version")
def keys_encrypt_version(
    version: Path = typer.Argument(..., help="A registry version folder."),
    storage_key: Path = typer.Option(..., help="The storage key file."),
    signing_key: Path = typer.Option(..., help="The coordinator's private signing key."),
) -> None:
    """Encrypt a version's weights at rest and re-sign its manifest."""
    from privacy.signing import SignatureError, load_storage_key, signer_from_file
    from server.registry import encrypt_version_at_rest

    try:
        key, signer = load_storage_key(storage_key), signer_from_file(signing_key)
        encrypt_version_at_rest(version, key, signer)
    except (SignatureError, ValueError, OSError) as err:
        raise fail(err, 2) from None
    console.print(f"encrypted at rest and re-signed: {version}")


# ---------------------------------------------------------------------------- tokens


@tokens_app.command("create")
def tokens_create(
    store: Path = typer.Option(..., help="The token store file."),
    name: str = typer.Option(..., help="Who the token is for (an application's name)."),
    scope: list[str] = typer.Option(..., help="A model the token may use, or '*' (repeat)."),
    rate: float | None = typer.Option(None, help="Its own requests per second."),
    burst: float | None = typer.Option(None, help="Its own burst."),
) -> None:
    """Make a token; it is printed once, on standard output, and stored only hashed."""
    from privacy.tokens import TokenError, TokenStore

    try:
        token, record = TokenStore(store).create(name, scope, rate, burst)
    except TokenError as err:
        raise fail(err, 2) from None
    print(token)
    console.print(f"token {record.id} for {name}, scopes {record.scopes} (shown once)")


@tokens_app.command("list")
def tokens_list(store: Path = typer.Option(..., help="The token store file.")) -> None:
    """List tokens (ids, names, scopes; never the tokens)."""
    from privacy.tokens import TokenError, TokenStore

    try:
        records = TokenStore(store).list()
    except TokenError as err:
        raise fail(err, 2) from None
    table = Table("id", "name", "scopes", "created", "revoked", "rate")
    for r in records:
        rate = f"{r.rate_per_second}/s" if r.rate_per_second else "default"
        table.add_row(r.id, r.name, ",".join(r.scopes), r.created, str(r.revoked), rate)
    Console(file=sys.stdout).print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: str = typer.Argument(..., help="The token's id."),
    store: Path = typer.Option(..., help="The token store file."),
) -> None:
    """Revoke a token; the service refuses it within a poll interval."""
    from privacy.tokens import TokenError, TokenStore

    try:
        TokenStore(store).revoke(token_id)
    except TokenError as err:
        raise fail(err, 2) from None
    console.print(f"revoked {token_id}")
