"""Clinical notes as fixed-width vectors by feature hashing: no vocabulary is ever shared.

A vocabulary built from the notes would reveal the words each hospital's notes contain.
Feature hashing needs none: every site maps each word (and word n-gram) of a note to one
of ``n_features`` buckets with the same fixed hash function (scikit-learn's
``HashingVectorizer``: MurmurHash3 with seed 0, identical in every process and on every
machine, unlike Python's salted ``hash()``), so all sites and the inference service build
the same columns without exchanging anything. Bucket counts become ``log(1 + count)`` and
each note's vector is scaled to unit length, so long and short notes are comparable.

The vectors feed the ordinary ``logreg``/``mlp`` families (``Linear`` layers, which
Opacus handles). :meth:`TextHasher.terms` maps a note's terms to their buckets, so an
attribution per bucket can be shown per word.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.utils import murmurhash3_32

TOKEN_PATTERN = r"(?u)\b\w+\b"


@dataclass(frozen=True)
class TextHasher:
    """Turns notes into fixed-width float vectors, identically everywhere.

    Parameters
    ----------
    n_features : int
        Number of hash buckets (the model's ``input_dim``).
    ngram_max : int
        Use word n-grams from 1 up to this length.
    """

    n_features: int = 1024
    ngram_max: int = 2

    def _vectorizer(self) -> HashingVectorizer:
        return HashingVectorizer(
            n_features=self.n_features,
            ngram_range=(1, self.ngram_max),
            lowercase=True,
            token_pattern=TOKEN_PATTERN,
            alternate_sign=False,
            norm=None,
            dtype=np.float64,
        )

    def transform(self, texts: Iterable[str]) -> np.ndarray:
        """The notes as ``(n, n_features)`` float32 rows of log(1 + bucket count).

        Each row is scaled to unit L2 norm (an empty note is all zeros).

        Parameters
        ----------
        texts : iterable of str
            The notes.
        """
        counts = self._vectorizer().transform(list(texts)).toarray()
        values = np.log1p(counts)
        norms = np.linalg.norm(values, axis=1, keepdims=True)
        return (values / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    def terms(self, text: str) -> dict[str, int]:
        """The note's distinct terms (words and n-grams) and the bucket each falls in.

        Parameters
        ----------
        text : str
            One note.

        Returns
        -------
        dict of str to int
            Term to bucket, in order of first appearance.
        """
        analyzer = self._vectorizer().build_analyzer()
        return {term: self.bucket(term) for term in dict.fromkeys(analyzer(text))}

    def bucket(self, term: str) -> int:
        """The column of one term, as ``HashingVectorizer`` computes it."""
        return abs(int(murmurhash3_32(term, seed=0))) % self.n_features
