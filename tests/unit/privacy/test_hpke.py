"""The envelopes against RFC 9180 and against the test vector published in docs/PROTOCOL.md.

An independent key schedule, written from RFC 9180 section 4-5 with hashlib/hmac, first
reproduces the RFC's own test vector A.1.1; with a fixed ephemeral key it then reproduces
the protocol's request vector byte for byte, and cryptography's HPKE (what the service
runs) opens it. That is what a third party with another RFC 9180 library will do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privacy import hpke

PROTOCOL_MD = Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md"
SUITE_IDS = struct.pack(">HHH", hpke.KEM_ID, hpke.KDF_ID, hpke.AEAD_ID)


# ------------------------------------------------- RFC 9180, written out independently


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), b"HPKE-v1" + suite_id + label + ikm, "sha256").digest()


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = struct.pack(">H", length) + b"HPKE-v1" + suite_id + label + info
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + labeled_info + bytes([counter]), "sha256").digest()
        out, counter = out + block, counter + 1
    return out[:length]


def key_schedule(recipient_public: bytes, info: bytes, ephemeral_private: bytes) -> dict:
    """Encap (DHKEM(X25519, HKDF-SHA256)) and the base-mode key schedule."""
    kem_suite = b"KEM" + struct.pack(">H", hpke.KEM_ID)
    hpke_suite = b"HPKE" + SUITE_IDS
    eph = x25519.X25519PrivateKey.from_private_bytes(ephemeral_private)
    enc = eph.public_key().public_bytes_raw()
    dh = eph.exchange(x25519.X25519PublicKey.from_public_bytes(recipient_public))
    eae_prk = labeled_extract(kem_suite, b"", b"eae_prk", dh)
    shared = labeled_expand(kem_suite, eae_prk, b"shared_secret", enc + recipient_public, 32)
    context = (
        b"\x00"
        + labeled_extract(hpke_suite, b"", b"psk_id_hash", b"")
        + labeled_extract(hpke_suite, b"", b"info_hash", info)
    )
    secret = labeled_extract(hpke_suite, shared, b"secret", b"")
    return {
        "enc": enc,
        "shared_secret": shared,
        "key": labeled_expand(hpke_suite, secret, b"key", context, 16),
        "base_nonce": labeled_expand(hpke_suite, secret, b"base_nonce", context, 12),
    }


def reference_seal_request(public: bytes, plaintext: bytes, ephemeral_private: bytes) -> bytes:
    header = bytes([hpke.VERSION]) + hpke.key_id_for(public) + SUITE_IDS
    info = b"fedcare-inference/1 request\x00" + header
    ks = key_schedule(public, info, ephemeral_private)
    return header + ks["enc"] + AESGCM(ks["key"]).encrypt(ks["base_nonce"], plaintext, b"")


def test_the_independent_key_schedule_reproduces_rfc9180_a_1_1():
    ks = key_schedule(
        bytes.fromhex("3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d"),
        bytes.fromhex("4f6465206f6e2061204772656369616e2055726e"),  # "Ode on a Grecian Urn"
        bytes.fromhex("52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736"),
    )
    assert ks["enc"].hex() == "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431"
    assert ks["shared_secret"].hex() == (
        "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc"
    )
    ct = AESGCM(ks["key"]).encrypt(ks["base_nonce"], b"Beauty is truth, truth beauty", b"Count-0")
    assert ct.hex() == (
        "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a"
    )


# ----------------------------------------------------------- the published test vector


def published_vector() -> dict[str, str]:
    """The ``name = hex or text`` lines of PROTOCOL.md's test-vector block."""
    text = PROTOCOL_MD.read_text()
    block = re.search(r"<!-- test-vector -->\s*```text\n(.*?)```", text, re.S)
    assert block, "docs/PROTOCOL.md has no test-vector block"
    vector: dict[str, str] = {}
    name = None
    for line in block.group(1).splitlines():
        if "=" in line and not line.startswith(" "):
            name, _, value = line.partition("=")
            name = name.strip()
            vector[name] = value.strip()
        elif name and line.strip():
            vector[name] += line.strip()  # a long value continues on indented lines
    return vector


@pytest.fixture(scope="module")
def vector() -> dict[str, str]:
    return published_vector()


def test_the_published_request_vector_is_reproduced_and_opens(vector):
    service = hpke.keypair_from_raw(bytes.fromhex(vector["service_private_key"]))
    assert service.public.hex() == vector["service_public_key"]
    assert service.key_id.hex() == vector["key_id"]
    header = bytes.fromhex(vector["request_header"])
    assert hpke.request_header(service.key_id) == header
    assert hpke.request_info(header).hex() == vector["info"]
    plaintext = vector["request_plaintext"].encode()
    envelope = reference_seal_request(
        service.public, plaintext, bytes.fromhex(vector["ephemeral_private_key"])
    )
    assert envelope.hex() == vector["request_envelope"]
    # cryptography's HPKE, which the service runs, opens what the RFC construction sealed.
    assert hpke.open_request(envelope, service) == plaintext
    body = json.loads(plaintext)
    assert body["parameters"]["response_key"] == hpke.b64encode(
        bytes.fromhex(vector["response_key"])
    )


def test_the_published_response_vector_is_reproduced(vector):
    key = bytes.fromhex(vector["response_key"])
    plaintext = vector["response_plaintext"].encode()
    sealed = hpke.seal_response(key, plaintext, nonce=bytes.fromhex(vector["response_nonce"]))
    assert sealed.hex() == vector["response_envelope"]
    assert hpke.open_response(key, sealed) == plaintext


# --------------------------------------------------------------------- the recipes


def test_requests_open_only_with_their_key_and_untampered():
    service, other = hpke.generate_keypair(), hpke.generate_keypair()
    envelope = hpke.seal_request(service.public, b'{"x":1}')
    assert hpke.open_request(envelope, service) == b'{"x":1}'
    assert hpke.seal_request(service.public, b"same") != hpke.seal_request(service.public, b"same")
    with pytest.raises(hpke.DecryptionFailed, match="another key"):
        hpke.open_request(envelope, other)
    for position in range(hpke.REQUEST_HEADER_LEN, len(envelope), 7):
        tampered = bytearray(envelope)
        tampered[position] ^= 0x80
        with pytest.raises(hpke.DecryptionFailed):
            hpke.open_request(bytes(tampered), service)


def test_the_info_binds_the_header():
    """A valid ciphertext under another header (version, key id, suite) does not open."""
    service = hpke.generate_keypair()
    envelope = hpke.seal_request(service.public, b"payload")
    with pytest.raises(hpke.MalformedEnvelope, match="version"):
        hpke.request_key_id(b"\x02" + envelope[1:])
    with pytest.raises(hpke.MalformedEnvelope, match="suite"):
        hpke.request_key_id(envelope[:9] + b"\x00\x21" + envelope[11:])
    with pytest.raises(hpke.MalformedEnvelope, match="at least 63 bytes"):
        hpke.request_key_id(envelope[:40])


def test_responses_open_only_with_the_response_key():
    key = hpke.new_response_key()
    sealed = hpke.seal_response(key, b"answer")
    assert hpke.open_response(key, sealed) == b"answer"
    with pytest.raises(hpke.DecryptionFailed):
        hpke.open_response(hpke.new_response_key(), sealed)
    with pytest.raises(hpke.DecryptionFailed):
        hpke.open_response(key, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(hpke.MalformedEnvelope):
        hpke.open_response(key, sealed[:20])


def test_files_at_rest_are_bound_to_their_name():
    key = hpke.new_storage_key()
    blob = hpke.seal_at_rest(key, b"weights", b"weights.npz")
    assert hpke.open_at_rest(key, blob, b"weights.npz") == b"weights"
    with pytest.raises(hpke.DecryptionFailed):
        hpke.open_at_rest(key, blob, b"schema.toml")
    with pytest.raises(hpke.DecryptionFailed):
        hpke.open_at_rest(hpke.new_storage_key(), blob, b"weights.npz")


def test_strict_base64():
    assert hpke.b64decode(hpke.b64encode(b"\x00" * 16), length=16) == b"\x00" * 16
    for bad in ("AAAA AAAA", "AAAA-_==", "AAA", "AAAAAAAAAAAAAAAAAAAAAA"):
        with pytest.raises(ValueError):
            hpke.b64decode(bad, length=16)


def test_key_ids_and_pem_round_trip():
    pair = hpke.generate_keypair()
    again = hpke.keypair_from_pem(pair.private_pem())
    assert again.public == pair.public and again.key_id == pair.key_id
    expected = hashlib.sha256(b"fedcare-inference/1 key id\x00" + SUITE_IDS + pair.public).digest()[
        :8
    ]
    assert pair.key_id == expected
    assert "private" not in repr(pair) and pair.key_id.hex() in repr(pair)
    with pytest.raises(ValueError, match="not an X25519 private key"):
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        hpke.keypair_from_pem(pem)
