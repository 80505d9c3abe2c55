"""`fedcare keys …`, `fedcare tokens …` and `fedcare serve`'s refusals, through their Typer
commands in this process (the same code `fedcare` runs, without a process start-up); and
`fedcare predict --he` against a real `fedcare serve` child (marked slow)."""

from __future__ import annotations

import csv
import json
import socket
import ssl
import threading
from dataclasses import MISSING, fields

import pytest
import typer
from typer.testing import CliRunner, Result

from cli.inference import _parse_pins, keys_app, serve, tokens_app
from cli.predict import predict
from deploy.provision import provision
from models.data.features import FeatureEncoder, Standardization
from models.data.kinds.registry import load_schema
from models.families import build_model
from models.spec import ModelSpec, get_weights
from privacy import signing
from privacy.tokens import TokenStore
from server.inference.config import ServiceConfig
from server.inference.keyring import list_keys
from server.registry import ModelRegistry, verify_version_bytes
from tests.e2e.test_inference import make_federation, start_service

app = typer.Typer()
app.add_typer(keys_app, name="keys")
app.add_typer(tokens_app, name="tokens")
app.command("serve")(serve)
app.command("predict")(predict)


def fedcare(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_keys_commands(tmp_path):
    run = fedcare("keys", "signing", "--out", str(tmp_path / "coordinator.key"))
    assert run.exit_code == 0 and "SHA256:" in run.stderr
    assert (tmp_path / "coordinator.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
    again = fedcare("keys", "signing", "--out", str(tmp_path / "coordinator.key"))
    assert again.exit_code == 2 and "refusing to overwrite" in again.stderr

    keyring = str(tmp_path / "keyring")
    first = fedcare("keys", "hpke-rotate", "--keyring", keyring).stdout.strip()
    second = fedcare("keys", "hpke-rotate", "--keyring", keyring).stdout.strip()
    assert [(e.key_id, e.state) for e in list_keys(keyring)] == [
        (first, "previous"),
        (second, "current"),
    ]
    assert first in fedcare("keys", "hpke-list", "--keyring", keyring).stdout
    refused = fedcare("keys", "hpke-retire", second, "--keyring", keyring)
    assert refused.exit_code == 2 and "rotate first" in refused.stderr
    assert fedcare("keys", "hpke-retire", first, "--keyring", keyring).exit_code == 0
    assert not (tmp_path / "keyring" / f"{first}.pem").exists()

    run = fedcare("keys", "storage", "--out", str(tmp_path / "storage.key"))
    assert run.exit_code == 0 and "storage key" in run.stderr


def test_sign_version_and_encrypt_version(tmp_path):
    fed = make_federation(tmp_path)
    unsigned = fed.register(seed=1, sign=False)
    key = str(fed.signing_key)
    assert fedcare("keys", "sign-version", str(unsigned), "--signing-key", key).exit_code == 0
    assert (unsigned / "manifest.sig").exists()
    fedcare("keys", "storage", "--out", str(tmp_path / "storage.key"))
    run = fedcare(
        "keys", "encrypt-version", str(unsigned),
        "--storage-key", str(tmp_path / "storage.key"), "--signing-key", key,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    manifest = json.loads((unsigned / "manifest.json").read_text())
    assert manifest["at_rest"]["cipher"] == "AES-256-GCM"


def test_sign_version_re_signs_only_under_the_key_that_signed_it(tmp_path):
    fed = make_federation(tmp_path)
    version = fed.register(seed=1)
    new_key = tmp_path / "new-signing.key"
    signing.generate_signing_key(new_key)
    args = ["keys", "sign-version", str(version), "--signing-key", str(new_key)]
    refused = fedcare(*args)
    assert refused.exit_code == 2 and "already signed" in refused.stderr
    wrong = fedcare(*args, "--previous-key", str(new_key.with_suffix(".pub")))
    assert wrong.exit_code == 2 and "does not verify" in wrong.stderr
    run = fedcare(*args, "--previous-key", str(fed.verify_key))
    assert run.exit_code == 0 and "re-signed" in run.stderr
    new_public = signing.load_verify_key(new_key.with_suffix(".pub"))
    verify_version_bytes(version, new_public)
    with pytest.raises(signing.SignatureError):
        verify_version_bytes(version, signing.load_verify_key(fed.verify_key))
    # A version whose files changed is not re-signed, whatever key is given.
    tampered = fed.register(seed=2)
    (tampered / "schema.toml").write_text((tampered / "schema.toml").read_text() + "\n")
    again = fedcare(
        "keys", "sign-version", str(tampered), "--signing-key", str(new_key),
        "--previous-key", str(fed.verify_key),
    )  # fmt: skip
    assert again.exit_code == 2 and "does not match its sha256" in again.stderr


def test_keys_tls_issues_a_certificate_a_client_verifies_by_the_federation_ca(tmp_path):
    """A real TLS handshake: a server on the issued certificate and key, a client that
    trusts only the federation's CA and checks the name."""
    out = tmp_path / "fed"
    provision("demo", ["a"], out, approved_apps=["ab" * 32])
    run = fedcare("keys", "tls", "--federation-dir", str(out), "--san-dns", "localhost")
    assert run.exit_code == 0 and "issued" in run.stderr, run.stderr
    folder = out / "inference"
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    client = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=accept)
        thread.start()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with client.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(2) == b"ok"
        thread.join()
    kept = fedcare("keys", "tls", "--federation-dir", str(out), "--san-dns", "localhost")
    assert kept.exit_code == 0 and "kept" in kept.stderr
    missing = fedcare("keys", "tls", "--federation-dir", str(tmp_path / "none"))
    assert missing.exit_code == 2 and "fedcare provision" in missing.stderr


def test_serve_refuses_plain_http_without_the_flag(tmp_path):
    fed = make_federation(tmp_path)
    base = ["serve", "--registry", str(fed.registry), "--verify-key", str(fed.verify_key)]
    base += ["--keyring", str(fed.keyring), "--tokens", str(fed.tokens)]
    run = fedcare(*base)
    assert run.exit_code == 2 and "TLS is required" in run.stderr
    run = fedcare(*base, "--insecure-http", "--host", "0.0.0.0")
    assert run.exit_code == 2 and "only loopback" in run.stderr
    run = fedcare(*base, "--insecure-http", "--tls-client-ca", str(fed.tls.ca_cert))
    assert run.exit_code == 2 and "--tls-client-ca needs TLS" in run.stderr


def test_tokens_commands(tmp_path):
    store = str(tmp_path / "tokens.json")
    run = fedcare("tokens", "create", "--store", store, "--name", "ward-app", "--scope", "ward")
    token = run.stdout.strip()
    assert run.exit_code == 0 and token.startswith("fct_")
    record = TokenStore(store).authenticate(token)
    assert record is not None and record.scopes == ["ward"]
    listing = fedcare("tokens", "list", "--store", store).stdout
    assert record.id in listing and token not in listing
    assert fedcare("tokens", "revoke", record.id, "--store", store).exit_code == 0
    assert TokenStore(store).authenticate(token) is None
    bad = fedcare("tokens", "create", "--store", store, "--name", "x", "--scope", "../x")
    assert bad.exit_code == 2 and "is not a model name" in bad.stderr


def test_predict_names_no_model_by_default(tmp_path):
    patients = tmp_path / "patients.csv"
    patients.write_text("age\n50\n")
    url = "https://127.0.0.1:1"
    run = fedcare("predict", "--url", url, "--token", "t", "--input", str(patients))
    assert run.exit_code == 2 and "Missing option '--model'" in run.stderr


def test_serve_has_an_option_for_every_setting_with_its_default():
    params = {p.name: p for p in typer.main.get_command(app).commands["serve"].params}
    # The ServiceConfig fields whose `fedcare serve` option has another name.
    option = {"pins": "pin", "rate_per_second": "rate", "plaintext_payloads": "benchmark_plaintext"}
    for field in fields(ServiceConfig):
        param = params[option.get(field.name, field.name)]
        if field.default_factory is not MISSING:  # pins: NAME=VERSION options, parsed
            assert _parse_pins(param.default) == field.default_factory(), field.name
        elif field.default is MISSING:
            assert param.required, field.name
        else:
            assert param.default == field.default, field.name


@pytest.mark.slow
def test_predict_with_he_gives_the_plaintext_predictions(tmp_path):
    fed = make_federation(tmp_path / "federation")
    schema = load_schema(fed.root / "schema.toml")
    scale = Standardization(mean={"age": 50.0}, std={"age": 10.0})
    dim = FeatureEncoder(schema, scale).input_dim
    spec = ModelSpec(kind="logreg", task="binary", input_dim=dim, output_dim=1)
    signer = signing.signer_from_file(fed.signing_key)
    weights = get_weights(build_model(spec, seed=5))
    ModelRegistry(fed.registry).register("ward_linear", weights, spec, schema, scale, signer=signer)
    patients = tmp_path / "patients.csv"
    lines = ["patient_id,age,sex,smoker,outcome"]
    lines += [f"p{i},{20 + 7 * i},{'FM'[i % 2]},{i % 3 == 0:d},0" for i in range(9)]
    patients.write_text("\n".join(lines) + "\n")
    service = start_service(fed, "predict-he")
    try:
        outputs = {}
        for mode in ("plain", "he"):
            out = tmp_path / f"{mode}.csv"
            args = ["predict", "--url", service.url, "--model", "ward_linear"]
            args += ["--ca-cert", str(fed.tls.ca_cert), "--input", str(patients)]
            args += ["--out", str(out), *(["--he"] if mode == "he" else [])]
            run = CliRunner().invoke(app, args, env={"FEDCARE_TOKEN": fed.token_all})
            assert run.exit_code == 0, run.output
            assert "9 predictions from ward_linear v1" in " ".join(run.stderr.split())
            with out.open() as handle:
                outputs[mode] = list(csv.DictReader(handle))
        empty = tmp_path / "empty.csv"
        empty.write_text("age,sex,smoker\n")
        args = ["predict", "--url", service.url, "--model", "ward_linear", "--he"]
        args += ["--ca-cert", str(fed.tls.ca_cert), "--input", str(empty)]
        run = CliRunner().invoke(app, args, env={"FEDCARE_TOKEN": fed.token_all})
        assert run.exit_code == 2 and "no rows of patients" in " ".join(run.stderr.split())
    finally:
        service.stop()
    plain, homomorphic = outputs["plain"], outputs["he"]
    assert len(plain) == len(homomorphic) == 9
    assert list(homomorphic[0]) == list(plain[0]) == ["label", "probability"]
    for got, expected in zip(homomorphic, plain, strict=True):
        assert float(got["probability"]) == pytest.approx(float(expected["probability"]), abs=1e-4)
        assert got["label"] == expected["label"] or abs(float(expected["probability"]) - 0.5) < 1e-4
