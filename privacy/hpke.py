"""The inference payload envelopes: RFC 9180 HPKE requests, AES-GCM responses.

This is the only module of fedcare that touches HPKE or AEAD primitives. It offers whole
recipes, not building blocks: :func:`seal_request` / :func:`open_request` for the
client-to-service direction and :func:`seal_response` / :func:`open_response` for the way
back. ``docs/PROTOCOL.md`` specifies every byte these functions read and write.

Suite (fixed, version 1): HPKE base mode, DHKEM(X25519, HKDF-SHA256) (0x0020),
HKDF-SHA256 (0x0001), AES-128-GCM (0x0001), from ``cryptography.hazmat.primitives.hpke``.

Request envelope (``application/vnd.fedcare.hpke-request``)::

    version (1) | key_id (8) | kem_id (2) | kdf_id (2) | aead_id (2) | enc (32) | ct

    info = b"fedcare-inference/1 request" || 0x00 || the first 15 bytes (the header)

Response envelope (``application/vnd.fedcare.hpke-response``)::

    version (1) | nonce (12) | ct        key = the 16-byte response key from the request
    aad = b"fedcare-inference/1 response" || 0x00 || the first 13 bytes

cryptography's HPKE API draws the ephemeral key itself, so request seals are never
deterministic; ``tests/unit/privacy/test_hpke.py`` carries an independent, from-the-RFC key
schedule that accepts a fixed ephemeral key, to derive and check the published test vector.

Model files at rest (:func:`seal_at_rest` / :func:`open_at_rest`) use AES-256-GCM here too,
so that this stays the one module with AEAD code.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

PROTOCOL = "fedcare-inference/1"
VERSION = 1
KEM_ID = 0x0020  # DHKEM(X25519, HKDF-SHA256)
KDF_ID = 0x0001  # HKDF-SHA256
AEAD_ID = 0x0001  # AES-128-GCM
SUITE_NAME = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM"

KEY_ID_LEN = 8
ENC_LEN = 32
TAG_LEN = 16
NONCE_LEN = 12
RESPONSE_KEY_LEN = 16
REQUEST_HEADER_LEN = 1 + KEY_ID_LEN + 6  # 15
REQUEST_MIN_LEN = REQUEST_HEADER_LEN + ENC_LEN + TAG_LEN  # 63
RESPONSE_HEADER_LEN = 1 + NONCE_LEN  # 13
RESPONSE_MIN_LEN = RESPONSE_HEADER_LEN + TAG_LEN  # 29

REQUEST_LABEL = PROTOCOL.encode() + b" request"
RESPONSE_LABEL = PROTOCOL.encode() + b" response"
KEY_ID_LABEL = PROTOCOL.encode() + b" key id"

REQUEST_MEDIA_TYPE = "application/vnd.fedcare.hpke-request"
RESPONSE_MEDIA_TYPE = "application/vnd.fedcare.hpke-response"

_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)
_SUITE_IDS = struct.pack(">HHH", KEM_ID, KDF_ID, AEAD_ID)


class EnvelopeError(ValueError):
    """A sealed payload cannot be used; ``code`` is the protocol's error code."""

    code = "malformed_envelope"


class MalformedEnvelope(EnvelopeError):
    """The bytes do not have the envelope's layout (length, version, suite)."""

    code = "malformed_envelope"


class DecryptionFailed(EnvelopeError):
    """The layout is right but the ciphertext does not open (tampered, wrong key or info)."""

    code = "decryption_failed"


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, repr=False)
class HpkeKeyPair:
    """An X25519 key pair of the service.

    Parameters
    ----------
    private_key : X25519PrivateKey
        The private half; it never leaves the service (``repr`` hides it).
    public : bytes
        The raw 32-byte public key, as published in the key configuration.
    key_id : bytes
        The 8-byte key id (:func:`key_id_for` of ``public``).
    """

    private_key: x25519.X25519PrivateKey
    public: bytes
    key_id: bytes

    def __repr__(self) -> str:
        return f"HpkeKeyPair(key_id={self.key_id.hex()})"

    def private_pem(self) -> bytes:
        """PKCS#8 PEM of the private key (the keyring's file format)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _keypair(private_key: x25519.X25519PrivateKey) -> HpkeKeyPair:
    public = private_key.public_key().public_bytes_raw()
    return HpkeKeyPair(private_key=private_key, public=public, key_id=key_id_for(public))


def generate_keypair() -> HpkeKeyPair:
    """A fresh X25519 key pair from the operating system's CSPRNG."""
    return _keypair(x25519.X25519PrivateKey.generate())


def keypair_from_raw(private: bytes) -> HpkeKeyPair:
    """The key pair of a raw 32-byte X25519 private key (test vectors)."""
    return _keypair(x25519.X25519PrivateKey.from_private_bytes(private))


def keypair_from_pem(data: bytes) -> HpkeKeyPair:
    """The key pair of an unencrypted PKCS#8 PEM X25519 private key; ``ValueError`` otherwise."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ValueError(f"not an unencrypted PEM private key ({err})") from None
    if not isinstance(key, x25519.X25519PrivateKey):
        raise ValueError(f"not an X25519 private key (found {type(key).__name__})")
    return _keypair(key)


def key_id_for(public: bytes) -> bytes:
    """The 8-byte key id: SHA-256("fedcare-inference/1 key id" || 0x00 || suite ids || pk)[:8]."""
    if len(public) != ENC_LEN:
        raise ValueError("an X25519 public key has 32 bytes")
    return hashlib.sha256(KEY_ID_LABEL + b"\x00" + _SUITE_IDS + public).digest()[:KEY_ID_LEN]


# ----------------------------------------------------------------------- requests


def request_header(key_id: bytes) -> bytes:
    """The request header: version || key_id || kem_id || kdf_id || aead_id (15 bytes).

    Parameters
    ----------
    key_id : bytes
        The 8-byte id of the service key (:func:`key_id_for`).

    Raises
    ------
    ValueError
        ``key_id`` is not 8 bytes long.
    """
    if len(key_id) != KEY_ID_LEN:
        raise ValueError(f"a key id has {KEY_ID_LEN} bytes")
    return bytes([VERSION]) + key_id + _SUITE_IDS


def request_info(header: bytes) -> bytes:
    """The HPKE ``info``: binds the protocol version, the key id and the suite."""
    return REQUEST_LABEL + b"\x00" + header


def seal_request(public_key: bytes, plaintext: bytes) -> bytes:
    """Seal ``plaintext`` to the service key ``public_key`` (raw 32 bytes)."""
    header = request_header(key_id_for(public_key))
    recipient = x25519.X25519PublicKey.from_public_bytes(public_key)
    return header + _SUITE.encrypt(plaintext, recipient, info=request_info(header))


def request_key_id(envelope: bytes) -> bytes:
    """The key id a request envelope names; :class:`MalformedEnvelope` if the layout is off."""
    if len(envelope) < REQUEST_MIN_LEN:
        raise MalformedEnvelope(
            f"a sealed request has at least {REQUEST_MIN_LEN} bytes, got {len(envelope)}"
        )
    if envelope[0] != VERSION:
        raise MalformedEnvelope(f"unsupported envelope version {envelope[0]} (expected {VERSION})")
    if envelope[1 + KEY_ID_LEN : REQUEST_HEADER_LEN] != _SUITE_IDS:
        raise MalformedEnvelope(
            "unsupported HPKE suite (expected kem 0x0020, kdf 0x0001, aead 0x0001)"
        )
    return bytes(envelope[1 : 1 + KEY_ID_LEN])


def open_request(envelope: bytes, keypair: HpkeKeyPair) -> bytes:
    """Open a request envelope with the service key it names.

    Raises :class:`MalformedEnvelope` or :class:`DecryptionFailed`; never anything else.
    """
    if request_key_id(envelope) != keypair.key_id:
        raise DecryptionFailed("the envelope names another key")
    header = bytes(envelope[:REQUEST_HEADER_LEN])
    try:
        return _SUITE.decrypt(
            bytes(envelope[REQUEST_HEADER_LEN:]), keypair.private_key, info=request_info(header)
        )
    except (InvalidTag, ValueError, TypeError):
        raise DecryptionFailed("the sealed request does not open (tampered or wrong key)") from None


# ---------------------------------------------------------------------- responses


def new_response_key() -> bytes:
    """A fresh 16-byte AES-128-GCM key for one response."""
    return os.urandom(RESPONSE_KEY_LEN)


def response_aad(header: bytes) -> bytes:
    """The AES-GCM associated data of a response: its label, 0x00, then ``header``.

    Parameters
    ----------
    header : bytes
        The response header, version || nonce.
    """
    return RESPONSE_LABEL + b"\x00" + header


def seal_response(response_key: bytes, plaintext: bytes, nonce: bytes | None = None) -> bytes:
    """Seal a response with the caller's response key; the nonce is random unless given."""
    if len(response_key) != RESPONSE_KEY_LEN:
        raise ValueError(f"a response key has {RESPONSE_KEY_LEN} bytes")
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"a nonce has {NONCE_LEN} bytes")
    header = bytes([VERSION]) + nonce
    return header + AESGCM(response_key).encrypt(nonce, plaintext, response_aad(header))


def open_response(response_key: bytes, envelope: bytes) -> bytes:
    """Open a response envelope; :class:`MalformedEnvelope` / :class:`DecryptionFailed`."""
    if len(envelope) < RESPONSE_MIN_LEN:
        raise MalformedEnvelope(
            f"a sealed response has at least {RESPONSE_MIN_LEN} bytes, got {len(envelope)}"
        )
    if envelope[0] != VERSION:
        raise MalformedEnvelope(f"unsupported envelope version {envelope[0]} (expected {VERSION})")
    header = bytes(envelope[:RESPONSE_HEADER_LEN])
    try:
        return AESGCM(response_key).decrypt(
            header[1:], bytes(envelope[RESPONSE_HEADER_LEN:]), response_aad(header)
        )
    except (InvalidTag, ValueError, TypeError):
        raise DecryptionFailed("the sealed response does not open") from None


# ------------------------------------------------------------- files at rest


AT_REST_MAGIC = b"FCAR"
AT_REST_KEY_LEN = 32
AT_REST_HEADER_LEN = len(AT_REST_MAGIC) + 1 + NONCE_LEN  # 17


def new_storage_key() -> bytes:
    """A fresh AES-256-GCM key for model files at rest."""
    return os.urandom(AT_REST_KEY_LEN)


def storage_key_id(key: bytes) -> str:
    """A public name of a storage key (SHA-256 of a label and the key, 8 bytes, hex)."""
    return hashlib.sha256(b"fedcare at-rest key id\x00" + key).digest()[:8].hex()


def seal_at_rest(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    """``"FCAR" | 0x01 | nonce (12) | AES-256-GCM(pt, aad = header || context)``.

    ``context`` (e.g. the file's name) is authenticated, so a blob cannot be moved to
    another role unnoticed.
    """
    if len(key) != AT_REST_KEY_LEN:
        raise ValueError(f"a storage key has {AT_REST_KEY_LEN} bytes")
    nonce = os.urandom(NONCE_LEN)
    header = AT_REST_MAGIC + bytes([VERSION]) + nonce
    return header + AESGCM(key).encrypt(nonce, plaintext, header + context)


def open_at_rest(key: bytes, blob: bytes, context: bytes) -> bytes:
    """Inverse of :func:`seal_at_rest`; :class:`DecryptionFailed` on any mismatch."""
    if len(key) != AT_REST_KEY_LEN:
        raise ValueError(f"a storage key has {AT_REST_KEY_LEN} bytes")
    if len(blob) < AT_REST_HEADER_LEN + TAG_LEN or not blob.startswith(AT_REST_MAGIC):
        raise MalformedEnvelope("not a fedcare at-rest file")
    header = bytes(blob[:AT_REST_HEADER_LEN])
    if header[len(AT_REST_MAGIC)] != VERSION:
        raise MalformedEnvelope("unsupported at-rest file version")
    try:
        return AESGCM(key).decrypt(
            header[len(AT_REST_MAGIC) + 1 :], bytes(blob[AT_REST_HEADER_LEN:]), header + context
        )
    except (InvalidTag, ValueError, TypeError):
        raise DecryptionFailed("the file does not open with this storage key") from None


# --------------------------------------------------------------------- encodings


def b64encode(data: bytes) -> str:
    """Standard base64 (RFC 4648 section 4) with padding, as the protocol's JSON uses."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: object, length: int | None = None) -> bytes:
    """Strict standard base64 with padding; ``ValueError`` on anything else.

    Parameters
    ----------
    text : object
        The value a peer sent; anything but a canonical base64 string is refused.
    length : int, optional
        The number of bytes it must decode to.
    """
    if not isinstance(text, str):
        raise ValueError("expected a base64 string")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("not valid base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("not canonical base64 (standard alphabet, with padding)")
    if length is not None and len(data) != length:
        raise ValueError(f"expected {length} bytes, got {len(data)}")
    return data
