"""privacy/he.py: the CKKS recipe's public context, checks, block layout and linear score."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tenseal as ts

from privacy import he

PROTOCOL_MD = Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md"


def documented(name: str) -> str:
    """A value of the test vector of PROTOCOL.md section 11, its lines joined."""
    section = PROTOCOL_MD.read_text().split("## 11.")[1].split("**Test vector.**")[1]
    match = re.search(rf"^{name} = (.*?)(?=^\S|^```)", section, re.S | re.M)
    assert match, f"PROTOCOL.md section 11 has no {name}"
    return "".join(match.group(1).split())


@pytest.fixture(scope="module")
def secret() -> he.SecretContext:
    return he.SecretContext()


def test_the_parameters_reach_128_bits_and_the_public_context_is_the_documented_vector(secret):
    # HomomorphicEncryption.org standard, classical 128 bits: N=4096 allows 109 bits.
    assert he.PARAMETERS.poly_modulus_degree == 4096
    assert sum(he.PARAMETERS.coeff_mod_bit_sizes) <= 109
    public = he.PublicContext(secret.public_bytes())
    assert not public.is_private() and public.id == secret.context_id
    assert secret.public_bytes() == bytes.fromhex(documented("public_context"))
    assert secret.context_id == documented("context_id")
    assert len(secret.public_bytes()) < 100


def test_the_documented_primes_are_the_contexts_and_the_correction_is_q1_over_the_scale():
    assert he.PRIMES == (144115188075814913, 68719403009, 40961)
    assert he.RESCALE_CORRECTION == he.PRIMES[1] / 2**36
    assert he.MAX_SLOT_VALUE == 2.0**20


def test_the_reply_is_rescaled_to_one_prime_and_about_half_the_bytes(secret):
    public = he.PublicContext(secret.public_bytes())
    [fresh] = secret.encrypt_rows([[1.0, 2.0]])
    [[product]] = public.linear_scores([fresh], 1, [[1.0, 1.0]], [0.0])
    [part] = ts.ckks_vector_from(public._context, product).ciphertext()
    assert part.coeff_modulus_size() == 1 and part.size() == 2
    assert len(product) < 0.65 * len(fresh)


@pytest.mark.parametrize(
    ("columns", "block"), [(1, 2), (2, 4), (3, 4), (30, 32), (31, 32), (32, 64)]
)
def test_a_block_holds_the_columns_and_the_constant_slot(columns, block):
    assert he.block_width(columns) == block
    assert he.patients_per_ciphertext(block) == 2048 // block


def test_patients_fill_ciphertexts_in_order():
    assert he.ciphertext_patients(1, 32) == [1]
    assert he.ciphertext_patients(64, 32) == [64]
    assert he.ciphertext_patients(130, 32) == [64, 64, 2]


def test_the_linear_score_decrypts_to_the_plaintext_one(secret):
    public = he.PublicContext(secret.public_bytes())
    rows = [[1.0, 3.0], [2.0, 4.0], [-1.5, 1e3]]
    ciphertexts = secret.encrypt_rows(rows)
    assert len(ciphertexts) == 1
    scores = public.linear_scores(ciphertexts, 3, [[0.5, 0.0], [1.0, -1.0]], [1.0, 0.0])
    first, second = (secret.decrypt_scores(output, 3, 4) for output in scores)
    assert first == pytest.approx([1.5, 2.0, 0.25], abs=1e-6)
    assert second == pytest.approx([-2.0, -2.0, -1001.5], abs=1e-6)


def test_many_ciphertexts_and_a_wide_model_keep_the_precision(secret):
    """130 patients of 30 columns (three ciphertexts), weights as folded standardization
    makes them (large for small-spread features), values up to a few thousand."""
    public = he.PublicContext(secret.public_bytes())
    rows = [
        [((i * 7 + j * 13) % 97) * (1 + 40 * (j % 3)) / 10 for j in range(30)] for i in range(130)
    ]
    weights = [[(-1) ** j * (0.01 + (j % 5) * 3.7) for j in range(30)]]
    ciphertexts = secret.encrypt_rows(rows)
    assert len(ciphertexts) == 3
    [output] = public.linear_scores(ciphertexts, 130, weights, [-2.5])
    got = secret.decrypt_scores(output, 130, 32)
    expected = [sum(w * x for w, x in zip(weights[0], row, strict=True)) - 2.5 for row in rows]
    assert max(abs(g - e) for g, e in zip(got, expected, strict=True)) < 1e-4


@pytest.mark.parametrize("data", [b"", b"\x00" * 50, b"garbage" * 100, b"\xff" * 5000])
def test_garbage_contexts_are_refused(data):
    with pytest.raises(he.HeError):
        he.PublicContext(data)


def test_a_context_with_the_secret_key_is_refused(secret):
    with pytest.raises(he.HeError, match="at most|secret key"):
        he.PublicContext(secret._context.serialize(save_secret_key=True))


@pytest.mark.parametrize(
    ("degree", "bits", "scale"),
    [
        (8192, [60, 40, 40, 60], 40),
        (4096, [57, 36, 16], 30),
        (4096, [40, 40, 29], 36),
        (4096, [55, 38, 16], 36),  # the previous version's parameters
        (4096, [57, 35, 17], 36),
    ],
)
def test_a_context_of_other_parameters_is_refused(degree, bits, scale):
    context = ts.context(ts.SCHEME_TYPE.CKKS, degree, coeff_mod_bit_sizes=bits)
    context.global_scale = 2.0**scale
    data = context.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    with pytest.raises(he.HeError, match="must be CKKS with N=4096"):
        he.PublicContext(data)


def test_ciphertexts_that_do_not_fit_are_refused(secret):
    public = he.PublicContext(secret.public_bytes())
    ciphertexts = secret.encrypt_rows([[1.0], [2.0]])
    with pytest.raises(he.HeError, match="not a fresh one of 3"):
        public.linear_scores(ciphertexts, 3, [[1.0]], [0.0])
    with pytest.raises(he.HeError, match="take 2 ciphertexts"):
        public.linear_scores(ciphertexts, 1025, [[1.0]], [0.0])
    with pytest.raises(he.HeError, match="is not a"):
        public.linear_scores([b"x" * 100], 2, [[1.0]], [0.0])
    with pytest.raises(he.HeError, match="no non-zero weight"):
        public.linear_scores(ciphertexts, 2, [[0.0]], [0.0])
    with pytest.raises(he.HeError, match="does not decrypt|holds"):
        secret.decrypt_scores([ciphertexts[0]], 3, 2)


@pytest.mark.parametrize(
    ("rows", "columns", "layout"),
    [(1, 30, "blocks"), (256, 30, "blocks"), (1856, 30, "blocks"), (1857, 30, "columns"),
     (4096, 30, "columns"), (4097, 30, "blocks"), (1, 1, "columns"), (2048, 2, "columns")],
)  # fmt: skip
def test_columns_are_chosen_when_they_take_no_more_ciphertexts(rows, columns, layout):
    assert he.choose_layout(rows, columns) == layout


def test_the_column_layout_gives_the_scores_themselves(secret):
    """2050 patients of 30 columns (two groups, the second of 2), two outputs, a zero weight."""
    public = he.PublicContext(secret.public_bytes())
    rows = [
        [((i * 7 + j * 13) % 97) * (1 + 40 * (j % 3)) / 10 for j in range(30)] for i in range(2050)
    ]
    weights = [[(-1) ** j * (0.01 + (j % 5) * 3.7) for j in range(30)], [0.0] * 29 + [2.0]]
    ciphertexts = secret.encrypt_rows(rows, he.COLUMNS)
    assert len(ciphertexts) == 60
    outputs = public.linear_scores(ciphertexts, 2050, weights, [-2.5, 1.0], he.COLUMNS)
    assert [len(output) for output in outputs] == [2, 2]
    for output, row_weights, bias in zip(outputs, weights, [-2.5, 1.0], strict=True):
        got = secret.decrypt_scores(output, 2050, 32, he.COLUMNS)
        expected = [
            sum(w * x for w, x in zip(row_weights, row, strict=True)) + bias for row in rows
        ]
        assert max(abs(g - e) for g, e in zip(got, expected, strict=True)) < 1e-4


def test_ciphertexts_of_another_layout_or_count_are_refused(secret):
    public = he.PublicContext(secret.public_bytes())
    blocks = secret.encrypt_rows([[1.0, 2.0], [3.0, 4.0]])
    columns = secret.encrypt_rows([[1.0, 2.0], [3.0, 4.0]], he.COLUMNS)
    with pytest.raises(he.HeError, match="take 2 ciphertexts, not 1"):
        public.linear_scores(blocks, 2, [[1.0, 1.0]], [0.0], he.COLUMNS)
    with pytest.raises(he.HeError, match="take 1 ciphertexts, not 2"):
        public.linear_scores(columns, 2, [[1.0, 1.0]], [0.0])
    with pytest.raises(he.HeError, match="not a fresh one of 2"):
        public.linear_scores([blocks[0], blocks[0]], 2, [[1.0, 1.0]], [0.0], he.COLUMNS)
    with pytest.raises(he.HeError, match="layout must be one of"):
        public.linear_scores(blocks, 2, [[1.0, 1.0]], [0.0], "rows")
