"""Clinical-note classification with feature hashing: no vocabulary is ever shared.

A vocabulary built from the notes would reveal the words each hospital's notes contain.
Feature hashing needs none: every site maps each word (and word pair) of a note to one
of ``n_features`` buckets with the same fixed hash function (scikit-learn's
``HashingVectorizer``, MurmurHash3 with seed 0, identical in every process and on every
machine, unlike Python's salted ``hash()``), so all sites and the inference service build
the same columns without exchanging anything. Bucket counts become ``log(1 + count)``
and each note's vector is scaled to unit length, so long and short notes are comparable.

The network (family ``text_hash``) is a linear model or a small MLP on the hashed vector:
``Linear`` layers only, so Opacus's per-sample gradients apply unchanged. The
featurizer's settings live in the model's ``options`` (``n_features``, ``ngram_max``,
``lowercase``), so the registry's spec is enough to featurize a request the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from torch import nn

from models.spec import ModelSpec, register_family

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
    lowercase : bool
        Lower-case before tokenizing.
    """

    n_features: int = 4096
    ngram_max: int = 2
    lowercase: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any], input_dim: int | None = None) -> TextHasher:
        n = int(options.get("n_features", input_dim if input_dim is not None else 4096))
        if input_dim is not None and n != input_dim:
            raise ValueError(f"text_hash: n_features {n} != input_dim {input_dim}")
        return cls(
            n_features=n,
            ngram_max=int(options.get("ngram_max", 2)),
            lowercase=bool(options.get("lowercase", True)),
        )

    def to_options(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "ngram_max": self.ngram_max,
            "lowercase": self.lowercase,
        }

    def _vectorizer(self) -> HashingVectorizer:
        return HashingVectorizer(
            n_features=self.n_features,
            ngram_range=(1, self.ngram_max),
            lowercase=self.lowercase,
            token_pattern=TOKEN_PATTERN,
            alternate_sign=False,
            norm=None,
            dtype=np.float64,
        )

    def transform(self, texts: Iterable[str]) -> np.ndarray:
        """``(n, n_features)`` float32: log(1 + bucket count), rows scaled to unit L2 norm
        (an empty note is all zeros)."""
        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("notes must be strings")
        counts = self._vectorizer().transform(texts).toarray()
        values = np.log1p(counts)
        norms = np.linalg.norm(values, axis=1, keepdims=True)
        return (values / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    def terms(self, text: str) -> list[tuple[str, int]]:
        """The note's terms (words and n-grams) with the bucket each falls in, in order
        of appearance; used to turn bucket attributions back into words."""
        analyzer = self._vectorizer().build_analyzer()
        seen: dict[str, int] = {}
        for term in analyzer(text):
            if term not in seen:
                column = self._vectorizer().transform([term])
                # a single term is a single n-gram only if it has no space; hash it alone
                seen[term] = int(column.indices[0]) if " " not in term else self._bucket(term)
        return list(seen.items())

    def _bucket(self, term: str) -> int:
        from sklearn.utils import murmurhash3_32

        return int(abs(murmurhash3_32(term, seed=0)) % self.n_features)


@register_family("text_hash")
def text_hash(spec: ModelSpec) -> nn.Module:
    """Options: the featurizer's ``n_features`` (= ``input_dim``), ``ngram_max`` (2),
    ``lowercase`` (true); the network's ``hidden`` (default ``[]``: a linear model) and
    ``dropout`` (0)."""
    TextHasher.from_options(spec.options, spec.input_dim)
    hidden = [int(h) for h in spec.options.get("hidden", [])]
    dropout = float(spec.options.get("dropout", 0.0))
    layers: list[nn.Module] = []
    width = spec.input_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, spec.output_dim))
    return nn.Sequential(*layers)
