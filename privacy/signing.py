"""Model integrity and confidentiality at rest: Ed25519 manifest signatures, AES-GCM files.

The coordinator signs every registered version: ``manifest.sig`` holds the raw 64-byte
Ed25519 signature of ``manifest.json``'s exact bytes, and the manifest lists the sha256
of every other file, so one signature covers the whole version. The inference service
checks both with :func:`verify_version_bytes` before it loads anything.

Key files are those of :mod:`privacy.pki` (which makes and writes them): the private key
is PKCS#8 PEM, mode 0600; the public key is SubjectPublicKeyInfo PEM.

Optional encryption at rest: :func:`encrypt_version_at_rest` replaces a version's
``weights.npz`` by ``weights.npz.enc`` (AES-256-GCM, see :func:`privacy.hpke.seal_at_rest`)
and re-signs the manifest, which then names the encrypted file under ``at_rest``. The
storage key is a file holding 32 random bytes in base64.

:func:`make_local_tls` makes throw-away TLS material for demos and tests from
:mod:`privacy.pki`'s CA and server certificates, plus client certificates for mTLS.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privacy import hpke, pki

SIGNATURE_LEN = 64
AT_REST_CIPHER = "AES-256-GCM"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
WEIGHTS = "weights.npz"
ENCRYPTED_SUFFIX = ".enc"


class SignatureError(ValueError):
    """A signature is missing or does not verify, or a key file is unusable."""


# ------------------------------------------------------------------------ key files


def generate_signing_key(
    private_path: str | Path, public_path: str | Path | None = None, *, force: bool = False
) -> str:
    """Make the coordinator's Ed25519 key pair and return its fingerprint.

    Parameters
    ----------
    private_path : path
        Where the PKCS#8 PEM private key goes (mode 0600; an existing file is refused
        unless ``force``).
    public_path : path, optional
        Where the SubjectPublicKeyInfo PEM public key goes (default: ``.pub`` suffix).
    """
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    keys = pki.generate_signing_keys()
    try:
        pki.write_private_key(private_path, keys.private_pem, force=force)
    except pki.KeyExistsError as err:
        raise SignatureError(str(err)) from None
    pki.write_public(public_path, keys.public_pem)
    return key_fingerprint(load_verify_key(public_path))


def load_signing_key(path: str | Path) -> ed25519.Ed25519PrivateKey:
    """The Ed25519 private key of a PKCS#8 PEM file (:class:`SignatureError` otherwise)."""
    path = Path(path)
    try:
        return pki.load_signing_private_key(path.read_bytes())
    except OSError as err:
        raise SignatureError(f"{path}: cannot read the signing key ({err.strerror})") from None
    except pki.PKIError as err:
        raise SignatureError(f"{path}: {err}") from None


def load_verify_key(path: str | Path) -> ed25519.Ed25519PublicKey:
    """The Ed25519 public key of a SubjectPublicKeyInfo PEM file."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as err:
        raise SignatureError(f"{path}: cannot read the public key ({err.strerror})") from None
    except (ValueError, TypeError):
        raise SignatureError(f"{path}: not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"{path}: the model-signing key must be an Ed25519 key")
    return key


def key_fingerprint(public_key: ed25519.Ed25519PublicKey) -> str:
    """``SHA256:`` and the first 16 bytes (hex) of the raw public key's sha256."""
    return "SHA256:" + hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:32]


def signer_from_file(path: str | Path) -> Callable[[bytes], bytes]:
    """A ``signer`` for ``ModelRegistry.register(..., signer=...)``."""
    return load_signing_key(path).sign


def sign_version(path: str | Path, signer: Callable[[bytes], bytes]) -> Path:
    """Sign an already registered version folder that has no ``manifest.sig`` yet.

    For registries written without a key (a researcher's simulation); a coordinator
    signs at registration instead. An existing signature is never replaced.
    """
    path = Path(path)
    if (path / SIGNATURE).exists():
        raise SignatureError(f"{path}: already signed; refusing to replace {SIGNATURE}")
    tmp = path / (SIGNATURE + ".tmp")
    tmp.write_bytes(signer((path / MANIFEST).read_bytes()))
    os.replace(tmp, path / SIGNATURE)
    return path / SIGNATURE


def verify_manifest(
    public_key: ed25519.Ed25519PublicKey, manifest_bytes: bytes, signature: bytes | None
) -> None:
    """Raise :class:`SignatureError` unless ``signature`` signs ``manifest_bytes``."""
    if signature is None:
        raise SignatureError(f"the version is unsigned (no {SIGNATURE})")
    if len(signature) != SIGNATURE_LEN:
        raise SignatureError(f"{SIGNATURE} has {len(signature)} bytes, expected {SIGNATURE_LEN}")
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"{SIGNATURE} does not verify with the trusted key (tampered manifest or wrong key)"
        ) from None


# -------------------------------------------------------- verified version contents


@dataclass(frozen=True)
class VerifiedVersion:
    """Every byte of a version, read once, checked, and (if needed) decrypted.

    Build the model from these bytes, not by re-reading the folder: a file swapped
    after the check is then never used.
    """

    path: Path
    manifest: dict[str, Any]
    files: dict[str, bytes]  # plain file name -> plaintext bytes


def verify_version_bytes(
    path: str | Path,
    public_key: ed25519.Ed25519PublicKey,
    storage_key: bytes | None = None,
    required: Sequence[str] = (WEIGHTS, "schema.toml", "preprocessing.json"),
) -> VerifiedVersion:
    """Check a registry version folder and return its verified contents.

    Checks, in order: the signature over ``manifest.json``'s bytes; that the manifest
    lists every ``required`` file (directly or, encrypted, under ``at_rest``); each
    listed file's sha256; then decrypts encrypted files with ``storage_key``.
    Raises :class:`SignatureError` with a message naming what failed.
    """
    path = Path(path)
    try:
        manifest_bytes = (path / MANIFEST).read_bytes()
    except OSError as err:
        raise SignatureError(f"{path}: cannot read {MANIFEST} ({err.strerror})") from None
    signature_path = path / SIGNATURE
    signature = signature_path.read_bytes() if signature_path.is_file() else None
    verify_manifest(public_key, manifest_bytes, signature)
    try:
        manifest = json.loads(manifest_bytes)
        listed: dict[str, str] = dict(manifest["files"])
    except (ValueError, KeyError, TypeError):
        raise SignatureError(f"{path}: the signed manifest has no 'files' table") from None
    at_rest = manifest.get("at_rest") or {}
    encrypted: dict[str, str] = dict(at_rest.get("files", {}))  # stored name -> plain name
    plain_names = {encrypted.get(name, name) for name in listed}
    missing = [name for name in required if name not in plain_names]
    if missing:
        raise SignatureError(f"{path}: the manifest does not list {missing}")
    files: dict[str, bytes] = {}
    for name, expected in listed.items():
        if "/" in name or name.startswith("."):
            raise SignatureError(f"{path}: the manifest lists an unsafe file name {name!r}")
        try:
            data = (path / name).read_bytes()
        except OSError:
            raise SignatureError(f"{path}: {name} is missing") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise SignatureError(f"{path}: {name} does not match its sha256 in the manifest")
        if name in encrypted:
            if storage_key is None:
                raise SignatureError(f"{path}: {name} is encrypted at rest and no key was given")
            if at_rest.get("key_id") not in (None, hpke.storage_key_id(storage_key)):
                raise SignatureError(f"{path}: {name} is encrypted with another storage key")
            try:
                data = hpke.open_at_rest(storage_key, data, encrypted[name].encode())
            except hpke.EnvelopeError:
                raise SignatureError(f"{path}: {name} does not decrypt with the key") from None
            files[encrypted[name]] = data
        else:
            files[name] = data
    return VerifiedVersion(path=path, manifest=manifest, files=files)


# ------------------------------------------------------------------ at-rest storage


def generate_storage_key(path: str | Path, *, force: bool = False) -> str:
    """Write a fresh storage key (base64 of 32 random bytes, mode 0600); return its id."""
    key = hpke.new_storage_key()
    try:
        pki.write_private_key(Path(path), base64.b64encode(key) + b"\n", force=force)
    except pki.KeyExistsError as err:
        raise SignatureError(str(err)) from None
    return hpke.storage_key_id(key)


def load_storage_key(path: str | Path) -> bytes:
    """The 32-byte storage key of a key file written by :func:`generate_storage_key`."""
    path = Path(path)
    try:
        text = path.read_text().strip()
    except OSError as err:
        raise SignatureError(f"{path}: cannot read the storage key ({err.strerror})") from None
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        raise SignatureError(f"{path}: the storage key is not base64") from None
    if len(key) != hpke.AT_REST_KEY_LEN:
        raise SignatureError(f"{path}: a storage key has {hpke.AT_REST_KEY_LEN} bytes")
    return key


def encrypt_version_at_rest(
    path: str | Path, storage_key: bytes, signer: Callable[[bytes], bytes]
) -> Path:
    """Encrypt a version's weights in place and re-sign its manifest.

    Do this before the service can see the folder (e.g. on a copy of the registry that
    is then moved into place): a reader during the swap sees a manifest that does not
    match its signature or files, refuses it, and retries when the files settle.
    """
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_bytes())
    if manifest.get("at_rest"):
        raise ValueError(f"{path}: already encrypted at rest")
    plain = (path / WEIGHTS).read_bytes()
    if hashlib.sha256(plain).hexdigest() != manifest["files"].get(WEIGHTS):
        raise ValueError(f"{path}: {WEIGHTS} does not match its sha256; refusing to encrypt")
    stored = WEIGHTS + ENCRYPTED_SUFFIX
    blob = hpke.seal_at_rest(storage_key, plain, WEIGHTS.encode())
    (path / stored).write_bytes(blob)
    files = {k: v for k, v in manifest["files"].items() if k != WEIGHTS}
    files[stored] = hashlib.sha256(blob).hexdigest()
    manifest["files"] = files
    manifest["at_rest"] = {
        "cipher": AT_REST_CIPHER,
        "key_id": hpke.storage_key_id(storage_key),
        "files": {stored: WEIGHTS},
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (path / (SIGNATURE + ".tmp")).write_bytes(signer(manifest_bytes))
    (path / (MANIFEST + ".tmp")).write_bytes(manifest_bytes)
    os.replace(path / (SIGNATURE + ".tmp"), path / SIGNATURE)
    os.replace(path / (MANIFEST + ".tmp"), path / MANIFEST)
    (path / WEIGHTS).unlink()
    return path


# ---------------------------------------------------------------- TLS for local runs


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate and its key (PEM files), for mTLS."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsMaterial:
    """PEM files made by :func:`make_local_tls`."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, ClientCertificate]


def issue_client_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    client_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    days: int = pki.SERVER_DAYS,
) -> x509.Certificate:
    """A TLS client certificate (EKU clientAuth) for ``client_key``, signed by the CA."""
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcare"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )


def make_local_tls(
    out_dir: str | Path,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    client_names: Sequence[str] = (),
) -> TlsMaterial:
    """A fresh CA, a server certificate for ``hosts`` and client certificates, as PEM files.

    For demos and tests; a federation's real CA comes from ``fedcare provision``.

    Parameters
    ----------
    out_dir : path
        Folder for ``ca.pem``, ``server.pem``/``server.key`` and ``client-<name>.pem/.key``.
    hosts : sequence of str
        DNS names and IP addresses the server certificate is valid for.
    client_names : sequence of str
        Common names of the client certificates to issue.
    """
    import ipaddress

    out = Path(out_dir)
    ips, names = [], []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            ips.append(host)
        except ValueError:
            names.append(host)
    ca_key, ca_cert = pki.make_ca("fedcare local CA", days=30)
    pki.write_public(out / "ca.pem", pki.cert_to_pem(ca_cert))
    server_key = pki.generate_ec_key()
    server_cert = pki.issue_server_cert(
        ca_key, ca_cert, server_key, hosts[0], dns_names=names, ip_addresses=ips, days=30
    )
    pki.write_public(out / "server.pem", pki.cert_to_pem(server_cert))
    pki.write_private_key(out / "server.key", pki.ec_key_to_pem(server_key), force=True)
    clients: dict[str, ClientCertificate] = {}
    for name in client_names:
        key = pki.generate_ec_key()
        cert = issue_client_cert(ca_key, ca_cert, key, name, days=30)
        client = ClientCertificate(cert=out / f"client-{name}.pem", key=out / f"client-{name}.key")
        pki.write_public(client.cert, pki.cert_to_pem(cert))
        pki.write_private_key(client.key, pki.ec_key_to_pem(key), force=True)
        clients[name] = client
    return TlsMaterial(
        ca_cert=out / "ca.pem",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        clients=clients,
    )
