"""The demo's last step: the simulation's model answering through the encrypted service.

:func:`run_inference_demo` does what an operator and a clinical application would:
signs the registered version (a real coordinator signs at registration, with
``signing-key``), makes a throw-away CA and server certificate, an HPKE keyring and a
bearer token, starts `fedcare serve` over TLS on a free loopback port, sends a few
held-out patients through the SDK (HPKE-sealed, bearer token, TLS), prints the answers
beside the registry model's own predictions on the same rows, and stops the service by
its PID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from client.sdk import InferenceClient
from deploy import inference_service as launcher
from models.predictor import Predictor
from privacy import signing
from privacy.tokens import TokenStore
from server import registry
from server.inference.keyring import ensure_keyring
from server.registry import ModelRegistry, ModelVersion

ROWS = 5


def _sign_for_demo(version: ModelVersion, work: Path, console: Console) -> Path:
    """The public key that verifies ``version``: the demo coordinator key's.

    The demo key signs the version if it is unsigned (a re-run finds it signed by that
    key already); the key is generated in ``work`` on first use.

    Parameters
    ----------
    version : ModelVersion
        The registered version to serve.
    work : Path
        The demo's folder, which holds ``coordinator.key`` and ``coordinator.pub``.
    console : Console
        Where to say that the version was signed.

    Raises
    ------
    ValueError
        The version is signed by another key.
    """
    key, public = work / "coordinator.key", work / "coordinator.pub"
    if version.signature_path.exists():
        try:
            registry.verify_version_bytes(version.path, signing.load_verify_key(public))
        except signing.SignatureError:
            raise ValueError(
                f"{version.path} is signed by another coordinator key; run `fedcare serve "
                "--verify-key <coordinator.pub>` yourself (the demo signs unsigned versions)"
            ) from None
        return public
    if not key.exists():
        signing.generate_signing_key(key)
    registry.sign_version(version.path, signing.signer_from_file(key))
    console.print(
        f"signed {version.name} v{version.version} with the demo coordinator key {key} "
        "(a deployment signs at registration: run config signing-key)"
    )
    return public


def _held_out_rows(registry_dir: Path, version: ModelVersion, predictor: Predictor) -> list[dict]:
    """The first rows of the simulation's global test set, features only."""
    if version.data_kind != "table":
        raise ValueError(f"the inference demo sends table rows; {version.data_kind} data is not")
    test = registry_dir.parent / "simulation" / "test.csv"
    if not test.is_file():
        raise ValueError(f"{test}: no held-out test set to take patients from")
    frame = pd.read_csv(test, nrows=ROWS)[predictor.schema.feature_names]
    return frame.to_dict(orient="records")


def _comparison(rows: int, remote: list[dict[str, Any]], local: list[dict[str, Any]]) -> Table:
    table = Table(title="encrypted service vs local model, same patients")
    table.add_column("patient", justify="right")
    fields = list(remote[0])
    for field in fields:
        table.add_column(f"{field} (service)", justify="right")
        table.add_column(f"{field} (local)", justify="right")
    table.add_column("equal")
    for i in range(rows):
        cells = []
        for field in fields:
            for value in (remote[i][field], local[i][field]):
                cells.append(f"{value:.6f}" if isinstance(value, float) else str(value))
        table.add_row(str(i + 1), *cells, "yes" if remote[i] == local[i] else "NO")
    return table


def run_inference_demo(registry_dir: Path, console: Console) -> None:
    """Serve the registry's newest model over TLS + HPKE and compare its answers with local ones.

    Parameters
    ----------
    registry_dir : path
        The registry a simulation wrote (``<out>/registry``); its newest model is served,
        and the held-out patients come from ``<out>/simulation/test.csv``.
    console : Console
        Where the progress and the comparison table are printed.
    """
    registry = ModelRegistry(registry_dir)
    names = registry.names()
    if not names:
        raise ValueError(f"{registry_dir}: no registered model to serve")
    version = registry.get(names[0])
    work = registry_dir.parent / "inference-demo"
    work.mkdir(parents=True, exist_ok=True)
    local_predictor = Predictor.from_version(version)
    rows = _held_out_rows(registry_dir, version, local_predictor)
    verify_key = _sign_for_demo(version, work, console)
    tls = signing.make_local_tls(work / "tls")
    ensure_keyring(work / "keyring")
    token, _ = TokenStore(work / "tokens.json").create("demo-app", [version.name])
    serve_args = [
        "--registry", str(registry_dir),
        "--verify-key", str(verify_key),
        "--keyring", str(work / "keyring"),
        "--tokens", str(work / "tokens.json"),
        "--audit-log", str(work / "audit.jsonl"),
        "--tls-cert", str(tls.server_cert),
        "--tls-key", str(tls.server_key),
    ]  # fmt: skip
    console.print("starting fedcare serve (TLS, certificate made on the spot) …")
    service = launcher.start_service(serve_args, work / "serve.log", ca_cert=tls.ca_cert)
    try:
        console.print(f"service ready at {service.url} (pid {service.process.pid})")
        with InferenceClient(service.url, token, version.name, ca_cert=tls.ca_cert) as client:
            result = client.infer(rows)
    finally:
        service.stop()
    console.print(
        f"{len(rows)} patients sent HPKE-sealed; {version.name} v{result.model_version} "
        f"answered; service stopped (pid {service.process.pid})"
    )
    console.print(_comparison(len(rows), result.predictions, local_predictor.predict_rows(rows)))
    console.print(f"service log: {work / 'serve.log'}; audit log: {work / 'audit.jsonl'}")
