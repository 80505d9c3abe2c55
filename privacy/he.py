"""CKKS homomorphic encryption of linear scores (TenSEAL over Microsoft SEAL).

The only module of fedcare that touches TenSEAL. Two recipes, one per side of the wire:

- :class:`SecretContext` (the client): a fresh CKKS secret key that never leaves the
  object; it packs patients into ciphertexts in *blocks* or *columns* and decrypts what
  comes back into scores.
- :class:`PublicContext` (the service): a context loaded from :meth:`SecretContext.public_bytes`,
  checked to hold no secret key and the protocol's parameters, that computes the model's
  linear score on the ciphertexts.

**Block layout** (``docs/PROTOCOL.md`` section 11). A patient's encoded features
``x_0 … x_{d-1}`` and a constant 1 fill one block of ``block_width(d)`` slots (the least
power of two above ``d``; the rest of the block is 0); a ciphertext holds
``slots // block`` patients one after the other. The service multiplies each ciphertext
by the plaintext vector that repeats ``[w_0 … w_{d-1}, b, 0 …]`` once per patient, so
slot ``j`` of a patient's block comes back as ``w_j · x_j`` and the constant slot as the
intercept ``b``; the client sums its block. One plaintext multiplication and one
rescaling per ciphertext and output: no rotation, hence no Galois key, no
relinearization key, no public key — the public context is the parameters alone (under
100 bytes), and a request is one ciphertext per 64 patients of 30 features.

**Column layout**, for large batches (:func:`choose_layout`). Ciphertext ``j`` of a group
of up to 2048 patients holds their values of column ``j``, one slot per patient; the
service adds up ``w_j`` times each (a scalar multiplication and a rescaling per
ciphertext) and the intercept, so one ciphertext per group and output comes back,
holding the scores themselves. It sends ``d`` ciphertexts per 2048 patients instead of one
per 64 and gets one back instead of 32: fewer ciphertexts both ways once a batch fills a
group (measured at 4096 patients of 30 features: a quarter less CPU of both sides).

**Parameters** (fixed): CKKS, polynomial modulus degree N = 4096 (2048 slots),
coefficient modulus primes of 57, 36 and 16 bits (109 bits: the HomomorphicEncryption.org
standard's largest modulus for 128-bit classical security at N = 4096; SEAL refuses
anything weaker at its default ``tc128``), scale 2^36, symmetric (secret-key) encryption.
Fresh ciphertexts carry the two data primes ``q0``, ``q1`` (93 bits); the 16-bit prime is
SEAL's special prime, used only by key switching, which this protocol never does. The
product (scale 2^72) is rescaled by ``q1``: the reply carries ``q0`` alone (57 bits), half
the bytes of a fresh ciphertext, at the true scale ``2^72 / q1``. TenSEAL labels a
rescaled ciphertext with the scale 2^36 nonetheless; the service multiplies the weights by
``q1 / 2^36`` (:data:`RESCALE_CORRECTION`, 1 − 1.07e-6) so that the label is exact. Every
slot value (a product ``w_j · x_j`` or an intercept) must stay below 2^20 in magnitude
(:data:`MAX_SLOT_VALUE`); measured error of a 30-feature score: under 1e-5.

Every failure is a :class:`HeError` whose message quotes no value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import tenseal as ts
import tenseal.sealapi as seal


class HeError(ValueError):
    """A context or ciphertext cannot be used, or a computation on them failed."""


@dataclass(frozen=True)
class HeParameters:
    """The CKKS parameters of the protocol (one set, version 3: primes of 57, 36, 16 bits).

    Parameters
    ----------
    poly_modulus_degree : int
        The ring dimension N.
    coeff_mod_bit_sizes : tuple of int
        The bit sizes of the coefficient modulus primes (the last is SEAL's special prime).
    scale_bits : int
        log2 of the encoding scale of a fresh ciphertext (and of the service's weights).
    security_bits : int
        The classical security level the parameters reach (HE standard, SEAL ``tc128``).
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (57, 36, 16)
    scale_bits: int = 36
    security_bits: int = 128

    @property
    def slots(self) -> int:
        """How many values one ciphertext holds: N / 2."""
        return self.poly_modulus_degree // 2

    @property
    def data_primes(self) -> int:
        """How many primes a ciphertext carries (all but the special prime)."""
        return len(self.coeff_mod_bit_sizes) - 1

    @property
    def data_bits(self) -> int:
        """The bits of a ciphertext's modulus (the data primes together)."""
        return sum(self.coeff_mod_bit_sizes[:-1])


PARAMETERS = HeParameters()
SCHEME = "CKKS"
# The most bytes a serialized public context may have; the parameters alone are ~100.
MAX_CONTEXT_BYTES = 4096
# SEAL's primes of these sizes (CoeffModulus.Create, deterministic): q0, q1, special.
PRIMES = tuple(
    prime.value()
    for prime in seal.CoeffModulus.Create(
        PARAMETERS.poly_modulus_degree, list(PARAMETERS.coeff_mod_bit_sizes)
    )
)
# The product's true scale after rescaling is 2^72 / q1, which TenSEAL labels 2^36.
RESCALE_CORRECTION = PRIMES[1] / 2.0**PARAMETERS.scale_bits
# Every slot value must stay below this: the product at scale 2^72 on q0·q1 (93 bits),
# and after rescaling at scale ~2^36 on q0 (57 bits).
MAX_SLOT_VALUE = 2.0 ** min(
    PARAMETERS.data_bits - 1 - 2 * PARAMETERS.scale_bits,
    PARAMETERS.coeff_mod_bit_sizes[0] - 1 - PARAMETERS.scale_bits,
)


BLOCKS = "blocks"
COLUMNS = "columns"
LAYOUTS = (BLOCKS, COLUMNS)


def context_id(public_bytes: bytes) -> str:
    """The id both sides give a public context: the first 16 bytes of its SHA-256, in hex.

    Parameters
    ----------
    public_bytes : bytes
        The serialized public context.
    """
    return hashlib.sha256(public_bytes).hexdigest()[:32]


def block_width(columns: int) -> int:
    """Slots per patient for ``columns`` encoded features: the least power of two > columns.

    Parameters
    ----------
    columns : int
        The encoded features of one patient (the block adds one slot holding 1).
    """
    if not 1 <= columns < PARAMETERS.slots:
        raise HeError(f"a patient has 1 to {PARAMETERS.slots - 1} encoded columns")
    return 1 << columns.bit_length()


def patients_per_ciphertext(block: int) -> int:
    """How many patients one ciphertext holds with blocks of ``block`` slots.

    Parameters
    ----------
    block : int
        :func:`block_width` of the model's columns.
    """
    return PARAMETERS.slots // block


def ciphertext_patients(rows: int, block: int) -> list[int]:
    """The patients in each ciphertext of a request of ``rows`` patients (all full but the last).

    Parameters
    ----------
    rows : int
        The patients of the request.
    block : int
        :func:`block_width` of the model's columns.
    """
    per = patients_per_ciphertext(block)
    return [min(per, rows - start) for start in range(0, rows, per)]


def choose_layout(rows: int, columns: int) -> str:
    """The layout of a request: columns if they take no more ciphertexts than blocks.

    Parameters
    ----------
    rows : int
        The patients of the request.
    columns : int
        The model's encoded columns ``d``.
    """
    blocks = len(ciphertext_patients(rows, block_width(columns)))
    groups = len(ciphertext_patients(rows, 1))  # one slot per patient: groups of 2048
    return COLUMNS if groups * columns <= blocks else BLOCKS


def _width(layout: str, block: int) -> int:
    """Slots per patient in a ciphertext of ``layout``: the block, or 1 (columns)."""
    if layout not in LAYOUTS:
        raise HeError(f"the layout must be one of {list(LAYOUTS)}")
    return 1 if layout == COLUMNS else block


class SecretContext:
    """The client's CKKS context: encrypts patients in blocks, decrypts their scores.

    A new secret key is drawn for every instance; it is in no serialization this class
    offers.
    """

    def __init__(self) -> None:
        self._context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            PARAMETERS.poly_modulus_degree,
            coeff_mod_bit_sizes=list(PARAMETERS.coeff_mod_bit_sizes),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
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

    def encrypt_rows(self, rows: Sequence[Sequence[float]], layout: str = BLOCKS) -> list[bytes]:
        """The serialized ciphertexts of the patients ``rows``, in blocks or columns.

        Parameters
        ----------
        rows : sequence of sequence of float
            Per patient, its encoded columns (the same number for every patient).
        layout : str
            :data:`BLOCKS` or :data:`COLUMNS` (group by group, column by column).
        """
        if not rows or len({len(row) for row in rows}) != 1:
            raise HeError("every patient must have the same, non-zero number of columns")
        block = block_width(len(rows[0]))
        per = patients_per_ciphertext(_width(layout, block))
        groups = [rows[start : start + per] for start in range(0, len(rows), per)]
        if layout == COLUMNS:
            vectors = [[row[j] for row in group] for group in groups for j in range(len(rows[0]))]
        else:
            padding = [1.0] + [0.0] * (block - len(rows[0]) - 1)
            vectors = [[value for row in group for value in (*row, *padding)] for group in groups]
        return [ts.ckks_vector(self._context, vector).serialize() for vector in vectors]

    def decrypt_scores(
        self, ciphertexts: Sequence[bytes], rows: int, block: int, layout: str = BLOCKS
    ) -> list[float]:
        """Each patient's score, from the ciphertexts of one output.

        Parameters
        ----------
        ciphertexts : sequence of bytes
            The service's results: one per request ciphertext (blocks, each patient's
            block to be summed) or per group of patients (columns, the scores).
        rows : int
            How many patients the request held.
        block : int
            The slots per patient of the block layout.
        layout : str
            The request's layout.
        """
        width = _width(layout, block)
        counts = ciphertext_patients(rows, width)
        if len(ciphertexts) != len(counts):
            raise HeError(f"{len(ciphertexts)} score ciphertexts for {len(counts)} expected")
        scores: list[float] = []
        for data, count in zip(ciphertexts, counts, strict=True):
            try:
                values = ts.ckks_vector_from(self._context, data).decrypt()
            except (ValueError, RuntimeError, TypeError):
                raise HeError("a score ciphertext does not decrypt under this context") from None
            if len(values) != count * width:
                raise HeError(f"a score ciphertext holds {len(values)} values, not {count * width}")
            scores.extend(sum(values[i : i + width]) for i in range(0, len(values), width))
        return scores


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
        if not _has_protocol_parameters(context):
            raise HeError(
                f"the context must be CKKS with N={PARAMETERS.poly_modulus_degree}, "
                f"primes of {list(PARAMETERS.coeff_mod_bit_sizes)} bits and scale "
                f"2^{PARAMETERS.scale_bits}"
            )
        context.auto_rescale = True  # the product is rescaled by q1 (module docstring)
        self._context = context
        self.id = context_id(public_bytes)

    def is_private(self) -> bool:
        """Whether the context holds a secret key (never: the constructor refuses it)."""
        return bool(self._context.is_private())

    def _load(self, data: bytes, patients: int, block: int) -> ts.CKKSVector:
        try:
            vector = ts.ckks_vector_from(self._context, data)
        except (ValueError, RuntimeError, TypeError):
            raise HeError("a ciphertext is not a CKKS ciphertext of this context") from None
        parts = vector.ciphertext()
        # One fresh, two-polynomial ciphertext at the top level, of the agreed scale.
        if (
            vector.size() != patients * block
            or len(parts) != 1
            or parts[0].size() != 2
            or parts[0].coeff_modulus_size() != PARAMETERS.data_primes
            or parts[0].scale != 2.0**PARAMETERS.scale_bits
        ):
            raise HeError(f"a ciphertext is not a fresh one of {patients} patients")
        return vector

    def linear_scores(
        self,
        ciphertexts: Sequence[bytes],
        rows: int,
        weights: Sequence[Sequence[float]],
        bias: Sequence[float],
        layout: str = BLOCKS,
    ) -> list[list[bytes]]:
        """Per model output ``k``, its encrypted scores.

        Blocks: per ciphertext, its blocks times ``[weights[k], bias[k]]``. Columns: per
        group of patients, ``Σ_j weights[k][j] · ciphertext_j + bias[k]``. Each product is
        rescaled (it carries the prime ``q0`` alone); what is multiplied is multiplied by
        :data:`RESCALE_CORRECTION` too, so that the labelled scale is exact.

        Parameters
        ----------
        ciphertexts : sequence of bytes
            The request's ciphertexts (:func:`ciphertext_patients` of ``rows`` patients;
            for columns, ``d`` per group of patients).
        rows : int
            How many patients the request holds.
        weights : sequence of sequence of float
            ``[k][d]``: one row of column weights per output.
        bias : sequence of float
            One intercept per output.
        layout : str
            :data:`BLOCKS` or :data:`COLUMNS`.
        """
        if not weights or any(len(w) != len(weights[0]) for w in weights):
            raise HeError("the weights do not fit the columns")
        if len(bias) != len(weights):
            raise HeError("one intercept per output is needed")
        if not all(any(row) for row in weights):
            raise HeError("an output of the model has no non-zero weight")
        columns = len(weights[0])
        width = _width(layout, block_width(columns))
        counts = ciphertext_patients(rows, width)
        per_group = columns if layout == COLUMNS else 1
        if len(ciphertexts) != len(counts) * per_group:
            raise HeError(
                f"{rows} patients take {len(counts) * per_group} ciphertexts, "
                f"not {len(ciphertexts)}"
            )
        sizes = [n for n in counts for _ in range(per_group)]
        vectors = [self._load(data, n, width) for data, n in zip(ciphertexts, sizes, strict=True)]
        try:
            if layout == COLUMNS:
                return [_column_sums(vectors, row, b) for row, b in zip(weights, bias, strict=True)]
            return [
                _block_products(vectors, counts, [*row, b], width)
                for row, b in zip(weights, bias, strict=True)
            ]
        except (ValueError, RuntimeError, TypeError):
            raise HeError("the encrypted linear score could not be computed") from None


def _block_products(
    vectors: Sequence[ts.CKKSVector], counts: Sequence[int], tile: Sequence[float], block: int
) -> list[bytes]:
    """Each ciphertext times ``tile`` (the weights and intercept) repeated per patient."""
    corrected = [float(value) * RESCALE_CORRECTION for value in tile]
    corrected += [0.0] * (block - len(tile))
    return [(v * (corrected * n)).serialize() for v, n in zip(vectors, counts, strict=True)]


def _column_sums(
    vectors: Sequence[ts.CKKSVector], weights: Sequence[float], bias: float
) -> list[bytes]:
    """Per group of ``len(weights)`` column ciphertexts: ``Σ_j w_j · column_j + bias``."""
    out = []
    for start in range(0, len(vectors), len(weights)):
        group = vectors[start : start + len(weights)]
        pairs = zip(group, weights, strict=True)
        terms = [v * (float(w) * RESCALE_CORRECTION) for v, w in pairs if w]
        total = terms[0]
        for term in terms[1:]:
            total += term
        total += [float(bias)] * total.size()  # added after rescaling: no correction
        out.append(total.serialize())
    return out


def _has_protocol_parameters(context: ts.Context) -> bool:
    """Whether a context is CKKS with :data:`PARAMETERS`: N, the primes' bits, the scale.

    SEAL's modulus chain gives each level's total bits: all primes (key level), the data
    primes (first level), and one prime fewer per level down; and each level's modulus.
    """
    key = context.seal_context().data.key_context_data()
    parms = key.parms()
    if (
        parms.scheme() != ts.SCHEME_TYPE.CKKS.value
        or parms.poly_modulus_degree() != PARAMETERS.poly_modulus_degree
        or context.global_scale != 2.0**PARAMETERS.scale_bits
    ):
        return False
    levels, level = [], key
    while level is not None:
        levels.append(level)
        level = level.next_context_data()
    sizes = PARAMETERS.coeff_mod_bit_sizes
    expected = [sum(sizes)] + [sum(sizes[: len(sizes) - 1 - i]) for i in range(len(sizes) - 1)]
    if [level.total_coeff_modulus_bit_count() for level in levels] != expected:
        return False
    # The data level's modulus q0·q1 (its low 64 bits, as SEAL gives it) and the last
    # level's q0: the primes are SEAL's, so RESCALE_CORRECTION is exact.
    q0, q1 = PRIMES[0], PRIMES[1]
    return (
        levels[1].total_coeff_modulus() == (q0 * q1) % 2**64
        and levels[-1].total_coeff_modulus() == q0
    )
