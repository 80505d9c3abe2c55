"""privacy/he.py: the CKKS recipe's public context, checks and encrypted linear score."""

from __future__ import annotations

import pytest

from privacy import he


@pytest.fixture(scope="module")
def secret() -> he.SecretContext:
    return he.SecretContext()


def test_the_public_context_is_the_documented_vector_and_holds_no_key(secret):
    public = he.PublicContext(secret.public_bytes())
    assert not public.is_private() and public.id == secret.context_id
    assert secret.context_id == "15c4fbb197739c85607b12f0f9fd1c4d"


def test_the_linear_score_decrypts_to_the_plaintext_one(secret):
    public = he.PublicContext(secret.public_bytes())
    columns = secret.encrypt_columns([[1.0, 2.0], [3.0, 4.0]])
    scores = public.linear_scores(columns, 2, [[0.5, 0.0], [1.0, -1.0]], [1.0, 0.0])
    first, second = (secret.decrypt(score, 2) for score in scores)
    assert first == pytest.approx([1.5, 2.0], abs=1e-6)
    assert second == pytest.approx([-2.0, -2.0], abs=1e-6)


@pytest.mark.parametrize("data", [b"", b"\x00" * 50, b"garbage" * 100, b"\xff" * 5000])
def test_garbage_contexts_are_refused(data):
    with pytest.raises(he.HeError):
        he.PublicContext(data)


def test_a_context_with_the_secret_key_is_refused(secret):
    with pytest.raises(he.HeError, match="at most|secret key"):
        he.PublicContext(secret._context.serialize(save_secret_key=True))


def test_ciphertexts_that_do_not_fit_are_refused(secret):
    public = he.PublicContext(secret.public_bytes())
    columns = secret.encrypt_columns([[1.0, 2.0]])
    with pytest.raises(he.HeError, match="fresh ciphertext of 3"):
        public.linear_scores(columns, 3, [[1.0]], [0.0])
    with pytest.raises(he.HeError, match="a column is not"):
        public.linear_scores([b"x" * 100], 2, [[1.0]], [0.0])
    with pytest.raises(he.HeError, match="no non-zero weight"):
        public.linear_scores(columns, 2, [[0.0]], [0.0])
