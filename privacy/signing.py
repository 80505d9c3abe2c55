"""Model-signing keys, Ed25519 signatures over manifests, and storage keys.

The coordinator signs every registered version's manifest with its Ed25519 key
(:func:`signer_from_file`); the inference service checks the signature with
:func:`verify_manifest`. Which files a version has and how its manifest lists them is
the registry's business (``server.registry``); this module only signs and verifies bytes.

Key files are those of :mod:`privacy.pki` (which makes and writes them): the private key
is PKCS#8 PEM, mode 0600; the public key is SubjectPublicKeyInfo PEM. A storage key (for
weights encrypted at rest with :func:`privacy.hpke.seal_at_rest`) is a file holding 32
random bytes in base64.

:func:`make_local_tls` makes throw-away TLS material for demos and tests from
:mod:`privacy.pki`'s CA and server certificates, plus client certificates for mTLS.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privacy import hpke, pki

SIGNATURE_LEN = 64


# The type of a model-verification key, for callers that hold one.
VerifyKey = ed25519.Ed25519PublicKey


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
    force : bool
        Replace an existing private key.

    Returns
    -------
    str
        The public key's fingerprint (:func:`privacy.pki.fingerprint`).
    """
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    keys = pki.generate_signing_keys()
    try:
        pki.write_private_key(private_path, keys.private_pem, force=force)
    except pki.KeyExistsError as err:
        raise SignatureError(str(err)) from None
    pki.write_public(public_path, keys.public_pem)
    return pki.fingerprint(load_verify_key(public_path))


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


def signer_from_file(path: str | Path) -> Callable[[bytes], bytes]:
    """A ``signer`` for ``ModelRegistry.register(..., signer=...)``."""
    return load_signing_key(path).sign


def verify_manifest(
    public_key: VerifyKey, manifest_bytes: bytes, signature: bytes | None, name: str
) -> None:
    """Raise :class:`SignatureError` unless ``signature`` signs ``manifest_bytes``.

    Parameters
    ----------
    public_key : VerifyKey
        The coordinator's model-verification key.
    manifest_bytes : bytes
        The exact bytes that were signed.
    signature : bytes or None
        The raw 64-byte Ed25519 signature, or None when the file is absent.
    name : str
        The signature file's name, for messages.
    """
    if signature is None:
        raise SignatureError(f"the version is unsigned (no {name})")
    if len(signature) != SIGNATURE_LEN:
        raise SignatureError(f"{name} has {len(signature)} bytes, expected {SIGNATURE_LEN}")
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"{name} does not verify with the trusted key (tampered manifest or wrong key)"
        ) from None


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
