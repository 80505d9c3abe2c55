"""CKKS homomorphic encryption of linear scores (TenSEAL over Microsoft SEAL).

The only module of fedcare that touches TenSEAL. Two recipes, one per side of the wire:

- :class:`SecretContext` (the client): a fresh CKKS key pair whose secret key never
  leaves the object; it encrypts one feature column per ciphertext (up to
  :data:`PARAMETERS.slots` patients in the slots) and decrypts the scores that come back.
- :class:`PublicContext` (the service): a context loaded from :meth:`SecretContext.public_bytes`,
  checked to hold no secret key and the protocol's parameters, that computes
  ``score_k = sum_j w_kj * column_j + b_k`` on the ciphertexts. That needs one plaintext
  multiplication per column and no rotation, so neither Galois nor relinearization keys
  (nor even the public key) are sent: the public context is the parameters alone.

Parameters (fixed, ``docs/PROTOCOL.md`` section 10): CKKS, polynomial modulus degree 8192,
coefficient modulus primes of 60, 40, 40 and 60 bits (200 bits; the HE standard allows 218
at 8192 for 128-bit classical security, and SEAL refuses to build or load anything weaker,
its ``sec_level`` being ``tc128``), scale 2^40. A fresh ciphertext uses the three data
primes (140 bits); multiplying by a plaintext weight and rescaling drops one, which leaves
100 bits for values of scale 2^40: scores up to about 2^59 in magnitude.

Every failure is a :class:`HeError` whose message quotes no value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import tenseal as ts


class HeError(ValueError):
    """A context or ciphertext cannot be used, or a computation on them failed."""


@dataclass(frozen=True)
class HeParameters:
    """The CKKS parameters of the protocol (one set, version 1).

    Parameters
    ----------
    poly_modulus_degree : int
        The ring dimension N.
    coeff_mod_bit_sizes : tuple of int
        The bit sizes of the coefficient modulus primes (the last is SEAL's special prime).
    scale_bits : int
        log2 of the encoding scale.
    security_bits : int
        The classical security level the parameters reach (HE standard, SEAL ``tc128``).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40
    security_bits: int = 128

    @property
    def slots(self) -> int:
        """How many values (patients) one ciphertext holds: N / 2."""
        return self.poly_modulus_degree // 2

    @property
    def data_primes(self) -> int:
        """How many primes a fresh ciphertext carries (all but the special prime)."""
        return len(self.coeff_mod_bit_sizes) - 1


PARAMETERS = HeParameters()
SCHEME = "CKKS"
# The most bytes a serialized public context may have; the parameters alone are ~100.
MAX_CONTEXT_BYTES = 4096


def context_id(public_bytes: bytes) -> str:
    """The id both sides give a public context: the first 16 bytes of its SHA-256, in hex.

    Parameters
    ----------
    public_bytes : bytes
        The serialized public context.
    """
    return hashlib.sha256(public_bytes).hexdigest()[:32]


class SecretContext:
    """The client's CKKS context: encrypts feature columns, decrypts scores.

    A new key pair is drawn for every instance; the secret key is in no serialization
    this class offers.
    """

    def __init__(self) -> None:
        self._context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            PARAMETERS.poly_modulus_degree,
            coeff_mod_bit_sizes=list(PARAMETERS.coeff_mod_bit_sizes),
        )
        self._context.global_scale = 2.0**PARAMETERS.scale_bits
        self._public = self._context.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )

    def public_bytes(self) -> bytes:
        """The public context: the parameters, without any key."""
        return self._public

    @property
    def context_id(self) -> str:
        """:func:`context_id` of :meth:`public_bytes`."""
        return context_id(self._public)

    def encrypt_columns(self, columns: Sequence[Sequence[float]]) -> list[bytes]:
        """One serialized ciphertext per column, each holding every patient's value.

        Parameters
        ----------
        columns : sequence of sequence of float
            Per encoded feature, one value per patient (at most ``PARAMETERS.slots``).
        """
        if not columns or not columns[0]:
            raise HeError("nothing to encrypt")
        if len({len(c) for c in columns}) != 1 or len(columns[0]) > PARAMETERS.slots:
            raise HeError(f"every column must have the same 1 to {PARAMETERS.slots} values")
        return [ts.ckks_vector(self._context, list(column)).serialize() for column in columns]

    def decrypt(self, ciphertext: bytes, count: int) -> list[float]:
        """The first ``count`` values of a score ciphertext.

        Parameters
        ----------
        ciphertext : bytes
            A serialized ciphertext the service computed on this context's columns.
        count : int
            How many patients it holds.
        """
        try:
            values = ts.ckks_vector_from(self._context, ciphertext).decrypt()
        except (ValueError, RuntimeError, TypeError):
            raise HeError("a score ciphertext does not decrypt under this context") from None
        if len(values) < count:
            raise HeError(f"a score ciphertext holds {len(values)} values, not {count}")
        return values[:count]


class PublicContext:
    """The service's view of a client's context: parameters only, no key.

    Parameters
    ----------
    public_bytes : bytes
        :meth:`SecretContext.public_bytes` of the client.

    Raises :class:`HeError` if the bytes are too long, do not parse, hold a secret key,
    or carry other parameters than the protocol's.
    """

    def __init__(self, public_bytes: bytes):
        if len(public_bytes) > MAX_CONTEXT_BYTES:
            raise HeError(f"a public context has at most {MAX_CONTEXT_BYTES} bytes")
        try:
            context = ts.context_from(public_bytes)
        except (ValueError, RuntimeError, TypeError):
            raise HeError("the public context does not parse as a TenSEAL CKKS context") from None
        if context.is_private() or context.has_secret_key():
            raise HeError("the context holds a secret key; send only the public context")
        parms = context.seal_context().data.key_context_data().parms()
        if (
            parms.scheme() != ts.SCHEME_TYPE.CKKS.value
            or parms.poly_modulus_degree() != PARAMETERS.poly_modulus_degree
            or context.global_scale != 2.0**PARAMETERS.scale_bits
        ):
            raise HeError(
                f"the context must be CKKS with N={PARAMETERS.poly_modulus_degree} and "
                f"scale 2^{PARAMETERS.scale_bits}"
            )
        self._context = context
        self.id = context_id(public_bytes)

    def is_private(self) -> bool:
        """Whether the context holds a secret key (never: the constructor refuses it)."""
        return bool(self._context.is_private())

    def _load(self, data: bytes, rows: int) -> ts.CKKSVector:
        try:
            vector = ts.ckks_vector_from(self._context, data)
        except (ValueError, RuntimeError, TypeError):
            raise HeError("a column is not a CKKS ciphertext of this context") from None
        parts = vector.ciphertext()
        # One fresh, two-polynomial ciphertext at the top level, of the agreed scale.
        if (
            vector.size() != rows
            or len(parts) != 1
            or parts[0].size() != 2
            or parts[0].coeff_modulus_size() != PARAMETERS.data_primes
            or parts[0].scale != 2.0**PARAMETERS.scale_bits
        ):
            raise HeError(f"a column is not a fresh ciphertext of {rows} values")
        return vector

    def linear_scores(
        self,
        columns: Sequence[bytes],
        rows: int,
        weights: Sequence[Sequence[float]],
        bias: Sequence[float],
    ) -> list[bytes]:
        """``sum_j weights[k][j] * columns[j] + bias[k]`` for every output ``k``, encrypted.

        Parameters
        ----------
        columns : sequence of bytes
            One serialized ciphertext per input column, each of ``rows`` values.
        rows : int
            How many patients each ciphertext holds (1 to ``PARAMETERS.slots``).
        weights : sequence of sequence of float
            ``[k][d]``: one row of column weights per output.
        bias : sequence of float
            One intercept per output.
        """
        if not 1 <= rows <= PARAMETERS.slots:
            raise HeError(f"a request holds 1 to {PARAMETERS.slots} patients")
        if any(len(w) != len(columns) for w in weights) or len(bias) != len(weights):
            raise HeError("the weights do not fit the columns")
        vectors = [self._load(data, rows) for data in columns]
        # A weight that encodes to the zero plaintext would make SEAL refuse the product
        # ("transparent" ciphertext); leaving its term out changes the score by < 2^-41·x.
        smallest = 2.0 ** -(PARAMETERS.scale_bits + 1)
        kept = [[(j, float(w)) for j, w in enumerate(row) if abs(w) > smallest] for row in weights]
        if not all(kept):
            raise HeError("an output of the model has no non-zero weight")
        scores = []
        try:
            for terms, intercept in zip(kept, bias, strict=True):
                total = vectors[terms[0][0]] * terms[0][1]
                for j, weight in terms[1:]:
                    total = total + vectors[j] * weight
                scores.append((total + float(intercept)).serialize())
        except (ValueError, RuntimeError, TypeError):
            raise HeError("the encrypted linear score could not be computed") from None
        return scores
