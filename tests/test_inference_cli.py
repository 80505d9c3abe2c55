"""`fedcare keys …` and `fedcare tokens …`, run as an operator would."""

from __future__ import annotations

import json
import subprocess

from privacy.tokens import TokenStore
from server.inference.keyring import list_keys
from tests.test_inference_e2e import FEDCARE, ROOT, make_federation


def fedcare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDCARE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_keys_commands(tmp_path):
    run = fedcare("keys", "signing", "--out", str(tmp_path / "coordinator.key"))
    assert run.returncode == 0 and "SHA256:" in run.stderr
    assert (tmp_path / "coordinator.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
    again = fedcare("keys", "signing", "--out", str(tmp_path / "coordinator.key"))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr

    keyring = str(tmp_path / "keyring")
    first = fedcare("keys", "hpke-rotate", "--keyring", keyring).stdout.strip()
    second = fedcare("keys", "hpke-rotate", "--keyring", keyring).stdout.strip()
    assert [(e.key_id, e.state) for e in list_keys(keyring)] == [
        (first, "previous"),
        (second, "current"),
    ]
    assert first in fedcare("keys", "hpke-list", "--keyring", keyring).stdout
    refused = fedcare("keys", "hpke-retire", second, "--keyring", keyring)
    assert refused.returncode == 2 and "rotate first" in refused.stderr
    assert fedcare("keys", "hpke-retire", first, "--keyring", keyring).returncode == 0
    assert not (tmp_path / "keyring" / f"{first}.pem").exists()

    run = fedcare("keys", "storage", "--out", str(tmp_path / "storage.key"))
    assert run.returncode == 0 and "storage key" in run.stderr


def test_sign_version_and_encrypt_version(tmp_path):
    fed = make_federation(tmp_path)
    unsigned = fed.register(seed=1, sign=False)
    key = str(fed.signing_key)
    assert fedcare("keys", "sign-version", str(unsigned), "--signing-key", key).returncode == 0
    assert (unsigned / "manifest.sig").exists()
    fedcare("keys", "storage", "--out", str(tmp_path / "storage.key"))
    run = fedcare(
        "keys", "encrypt-version", str(unsigned),
        "--storage-key", str(tmp_path / "storage.key"), "--signing-key", key,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    manifest = json.loads((unsigned / "manifest.json").read_text())
    assert manifest["at_rest"]["cipher"] == "AES-256-GCM"


def test_tokens_commands(tmp_path):
    store = str(tmp_path / "tokens.json")
    run = fedcare("tokens", "create", "--store", store, "--name", "ward-app", "--scope", "ward")
    token = run.stdout.strip()
    assert run.returncode == 0 and token.startswith("fct_")
    record = TokenStore(store).authenticate(token)
    assert record is not None and record.scopes == ["ward"]
    listing = fedcare("tokens", "list", "--store", store).stdout
    assert record.id in listing and token not in listing
    assert fedcare("tokens", "revoke", record.id, "--store", store).returncode == 0
    assert TokenStore(store).authenticate(token) is None
    bad = fedcare("tokens", "create", "--store", store, "--name", "x", "--scope", "../x")
    assert bad.returncode == 2 and "is not a model name" in bad.stderr
