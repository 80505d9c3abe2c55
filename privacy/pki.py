"""Keys and certificates of a federation, made with `cryptography`.

What a federation needs, and the formats Flower 1.41 reads (checked against its source):

- a certificate authority (ECDSA P-384, self-signed X.509, PEM). Its private key signs the
  SuperLink's certificate and nothing else; it belongs offline.
- the SuperLink's TLS certificate (ECDSA P-384, PEM; subjectAltName from the caller, EKU
  serverAuth). `flower-superlink --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile` reads PEM;
  the SuperNodes and `flwr` verify it against the CA (`--root-certificates`,
  `root-certificates` in a connection), so the address they dial must be one of the SANs.
- one SuperNode authentication key pair per site: an EC key on a NIST curve (P-384 here).
  `flower-supernode --auth-supernode-private-key` loads the private key with
  `load_ssh_private_key` (OpenSSH format, unencrypted); `flwr supernode register` loads the
  public key with `load_ssh_public_key` (one `ecdsa-sha2-nistp384 …` line).
- the coordinator's model-signing key (Ed25519; PKCS#8 PEM private, SubjectPublicKeyInfo PEM
  public). It signs registry manifests; sites and the inference service verify with the
  public half.

Private keys are written with mode 0600 and never silently replaced: `write_private_key`
refuses an existing file unless `force`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVE = ec.SECP384R1
CA_DAYS = 3650
SERVER_DAYS = 825


class PKIError(Exception):
    """A key or certificate is missing, malformed or does not fit."""


class KeyExistsError(PKIError):
    """A private key already exists and `force` was not given."""


# ------------------------------------------------------------------------------ writing


def write_private_key(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write private key bytes with mode 0600; refuse to replace an existing file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not force:
        raise KeyExistsError(f"{path} exists; refusing to overwrite a private key (use force)")
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    os.chmod(path, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Write a public artefact (certificate, public key); these may be replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- EC keys


def generate_ec_key() -> ec.EllipticCurvePrivateKey:
    """A fresh key on the federation's curve (P-384)."""
    return ec.generate_private_key(CURVE())


def ec_key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An EC private key as unencrypted PKCS#8 PEM.

    Parameters
    ----------
    key : EllipticCurvePrivateKey
        The CA's or the SuperLink's key.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_pem_private_key(data: bytes):
    """Load an unencrypted PEM private key (:class:`PKIError` otherwise).

    Parameters
    ----------
    data : bytes
        The PEM file's contents.
    """
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise PKIError(f"not an unencrypted PEM private key: {err}") from err


# --------------------------------------------------------------------- node auth keys


@dataclass(frozen=True)
class NodeAuthKeys:
    """A SuperNode's authentication key pair, serialised as Flower reads it."""

    private_openssh: bytes
    public_openssh: bytes


def generate_node_auth_keys(comment: str = "") -> NodeAuthKeys:
    """A P-384 key pair: OpenSSH private key and one-line OpenSSH public key."""
    key = generate_ec_key()
    return node_auth_keys_from_private(key, comment=comment)


def node_auth_keys_from_private(key: ec.EllipticCurvePrivateKey, comment: str = "") -> NodeAuthKeys:
    """Serialise a SuperNode's key pair as Flower reads it.

    Parameters
    ----------
    key : EllipticCurvePrivateKey
        The site's authentication key.
    comment : str
        Appended to the public key line (``federation/site``), as ``ssh-keygen`` shows it.
    """
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    if comment:
        public += b" " + comment.encode()
    return NodeAuthKeys(private_openssh=private, public_openssh=public + b"\n")


def load_node_auth_private_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """Load a SuperNode private key the way flower-supernode does (OpenSSH, EC)."""
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise PKIError(f"not an unencrypted OpenSSH private key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError("a SuperNode authentication key must be an EC key")
    return key


def load_node_auth_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """Load a SuperNode public key the way `flwr supernode register` does."""
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError) as err:
        raise PKIError(f"not an OpenSSH public key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PKIError("a SuperNode authentication key must be an EC key")
    return key


def fingerprint(public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> str:
    """A public key's fingerprint, in the one format fedcare prints and writes.

    ``SHA256:`` and the unpadded base64 of the sha256 of the key's OpenSSH encoding:
    what ``ssh-keygen -l`` prints for the key, so a site's ``auth.pub`` checks with
    ``ssh-keygen -lf auth.pub`` (docs/DEPLOYMENT.md shows it for ``signing.pub``).

    Parameters
    ----------
    public_key : EllipticCurvePublicKey or Ed25519PublicKey
        A site's SuperNode authentication key or the coordinator's model-signing key.

    Returns
    -------
    str
        E.g. ``SHA256:GoV/bAx8P1Z42IRK2HMLcCboEWluwi8PkZgYikxeBZA``.
    """
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# -------------------------------------------------------------------- signing (Ed25519)


@dataclass(frozen=True)
class SigningKeys:
    """The coordinator's model-signing key pair, serialised.

    Parameters
    ----------
    private_pem : bytes
        The Ed25519 private key, PKCS#8 PEM.
    public_pem : bytes
        Its public half, SubjectPublicKeyInfo PEM.
    """

    private_pem: bytes
    public_pem: bytes


def generate_signing_keys() -> SigningKeys:
    """A fresh Ed25519 model-signing key pair."""
    key = ed25519.Ed25519PrivateKey.generate()
    return signing_keys_from_private(key)


def signing_keys_from_private(key: ed25519.Ed25519PrivateKey) -> SigningKeys:
    """Serialise a model-signing key and its public half.

    Parameters
    ----------
    key : Ed25519PrivateKey
        The coordinator's signing key.
    """
    return SigningKeys(
        private_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        public_pem=key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def load_signing_private_key(data: bytes) -> ed25519.Ed25519PrivateKey:
    """Load the model-signing key; :class:`PKIError` unless it is an Ed25519 PEM key.

    Parameters
    ----------
    data : bytes
        The PKCS#8 PEM file's contents.
    """
    key = load_pem_private_key(data)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PKIError("the model-signing key must be an Ed25519 key")
    return key


# ------------------------------------------------------------------------ certificates


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(
    common_name: str, key: ec.EllipticCurvePrivateKey | None = None, days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign end-entity certificates only (pathlen 0)."""
    key = key or generate_ec_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcare"),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def parse_sans(
    dns_names: Iterable[str] = (), ip_addresses: Iterable[str] = ()
) -> list[x509.GeneralName]:
    """A server certificate's subjectAltNames; :class:`PKIError` on a bad IP or none at all.

    Parameters
    ----------
    dns_names, ip_addresses : iterable of str
        The names and addresses by which clients reach the server (blanks are skipped).
    """
    sans: list[x509.GeneralName] = []
    for name in dns_names:
        name = name.strip()
        if not name:
            continue
        sans.append(x509.DNSName(name))
    for ip in ip_addresses:
        ip = ip.strip()
        if not ip:
            continue
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as err:
            raise PKIError(f"not an IP address: {ip!r}") from err
    if not sans:
        raise PKIError("a server certificate needs at least one DNS name or IP address")
    return sans


def issue_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    server_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = SERVER_DAYS,
) -> x509.Certificate:
    """A TLS server certificate for `server_key`, signed by the CA, with the given SANs."""
    sans = parse_sans(dns_names, ip_addresses)
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcare"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM.

    Parameters
    ----------
    cert : x509.Certificate
        Any certificate.
    """
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(data: bytes) -> x509.Certificate:
    """Load a PEM certificate (:class:`PKIError` otherwise).

    Parameters
    ----------
    data : bytes
        The PEM file's contents.
    """
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise PKIError(f"not a PEM certificate: {err}") from err


def cert_sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    """(DNS names, IP addresses) of a certificate's subjectAltName."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    dns = set(ext.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return dns, ips


def cert_fingerprint(cert: x509.Certificate) -> str:
    """A certificate's SHA-256 digest, as ``openssl x509 -noout -fingerprint -sha256`` prints it.

    This names the certificate (it changes when the certificate is reissued for the same
    key); a key's own fingerprint is :func:`fingerprint`.

    Parameters
    ----------
    cert : x509.Certificate
        The certificate (the SuperLink's, in ``federation.toml``).

    Returns
    -------
    str
        Upper-case hex bytes joined by colons.
    """
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True if `cert` carries a valid signature of `ca_cert`'s key and is in date."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    now = _now()
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def public_keys_match(private_key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    """Whether ``cert`` certifies the public half of ``private_key``.

    Parameters
    ----------
    private_key : private key
        The key the certificate should belong to.
    cert : x509.Certificate
        The certificate.
    """
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return private_key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
