"""Model signatures and at-rest encryption: what the inference service checks before loading."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privacy import signing


def test_key_files_are_private_and_never_overwritten(tmp_path):
    key = tmp_path / "coordinator.key"
    fingerprint = signing.generate_signing_key(key)
    assert fingerprint.startswith("SHA256:") and key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(signing.SignatureError, match="refusing to overwrite"):
        signing.generate_signing_key(key)
    with pytest.raises(signing.SignatureError, match="must be an Ed25519 key"):
        signing.load_verify_key(_write(tmp_path / "x.pub", _ec_public_pem()))


def ssh_keygen_fingerprint(openssh_public: Path) -> str:
    """What ``ssh-keygen -lf`` prints as the fingerprint of an OpenSSH public key file."""
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is None:
        pytest.skip("ssh-keygen is not installed")
    run = subprocess.run([ssh_keygen, "-lf", str(openssh_public)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()[1]


def test_the_signing_key_fingerprint_is_what_ssh_keygen_prints(tmp_path):
    key = tmp_path / "coordinator.key"
    fingerprint = signing.generate_signing_key(key)
    public = signing.load_verify_key(key.with_suffix(".pub"))
    openssh = tmp_path / "coordinator.ssh"
    openssh.write_bytes(public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH))
    assert fingerprint == ssh_keygen_fingerprint(openssh)


def _ec_public_pem() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
