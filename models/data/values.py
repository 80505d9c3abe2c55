"""One definition of a value, for every path that reads one.

Training's loader (:mod:`models.data.tables`, hence ``fedcare site check``, ``fedcare
simulate`` and ``fedcare evaluate``), the inference service's request check
(:func:`models.data.kinds.table.check_rows`, hence ``fedcare predict`` and the SDK's
plaintext route) and the SDK's homomorphic encoding (:mod:`protocol.inference`) all
read a feature's value with :meth:`ValueRule.read` and decide what is missing with
:class:`MissingValues`. A value is a cell's text (CSV), or a JSON or Parquet value:

- **a number**: an ``int`` or ``float`` (never ``true``/``false``), or text written as a
  spreadsheet writes it (``12``, ``-1.5``, ``2e3``; spaces around it are ignored).
  Python's ``1_20`` and ``0x10`` are not numbers, nor is a decimal comma (``1,5``).
  It must be finite and within the feature's declared ``[min, max]``.
- **missing**: ``None``, a float NaN, or a text in the schema's ``missing_values``
  (default :data:`DEFAULT_MISSING_VALUES`; spaces around it are ignored), or a number
  equal to one of them (``-999`` and ``-999.0``) — except in a categorical column or
  label that declares that word as a value: a declared category ``NA`` is a category.
- **a category**: exactly one of the declared categories, case and spaces included;
  a number naming an integer category is that category (``1``, ``1.0`` → ``"1"``).
  A near miss (``" M"``, ``"m"``) is refused with a hint, never silently normalized.
- **a binary value**: ``true``/``false``; a number equal to 0 or 1 (``1``, ``1.0``);
  or, in any case, one of ``1 true yes y t`` / ``0 false no n f``.

Standard library only: the SDK distribution (``packaging/fedcare-sdk``) ships this module
(and the empty ``models/__init__.py``, ``models/data/__init__.py``) without numpy.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

FEATURE_TYPES = ("numeric", "categorical", "binary")
# Cells read as missing unless the schema's [dataset].missing_values says otherwise.
DEFAULT_MISSING_VALUES = ("", "NA", "NaN", "nan", "null")
TRUE_WORDS = frozenset({"1", "true", "yes", "y", "t"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "f"})
# A decimal number as a spreadsheet writes it; ``inf``/``nan`` are read to be refused.
NUMBER = re.compile(
    r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.IGNORECASE | re.ASCII
)
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+", re.ASCII)

# The kinds of refusal, words of models.data.tables.ProblemKind's closed vocabulary.
NOT_A_NUMBER = "not_a_number"
NOT_FINITE = "not_finite"
OUT_OF_RANGE = "out_of_range"
NOT_BINARY = "not_binary"
UNKNOWN_CATEGORY = "unknown_category"


class ValueRefused(ValueError):
    """A value does not fit its feature.

    The message never quotes the value: callers that may show it (a site's own check)
    add it themselves.

    Parameters
    ----------
    kind : str
        The refusal's word (:data:`NOT_A_NUMBER`, :data:`OUT_OF_RANGE` …).
    expected : str
        What was expected, e.g. ``a number at most 120 (max)``.
    hint : str
        What probably went wrong, when something likely did ('' otherwise).
    """

    def __init__(self, kind: str, expected: str, hint: str = ""):
        self.kind = kind
        self.expected = expected
        self.hint = hint
        super().__init__(f"expected {expected}" + (f"; {hint}" if hint else ""))


def parse_number(text: str) -> float:
    """A number as a spreadsheet writes it (``1.5``, ``-2e3``); ``1_20`` is not one.

    Parameters
    ----------
    text : str
        The cell's text; spaces around it are ignored.

    Raises
    ------
    ValueRefused
        ``text`` is not a decimal number (``inf`` and ``nan`` are read, to be refused
        by :meth:`ValueRule.read` as not finite).
    """
    stripped = text.strip()
    if not NUMBER.fullmatch(stripped):
        hint = (
            "write decimals with a point (1.5), not a comma"
            if _DECIMAL_COMMA.fullmatch(stripped)
            else ""
        )
        raise ValueRefused(NOT_A_NUMBER, "a number", hint)
    return float(stripped)


def as_number(value: Any) -> float:
    """A number from a JSON, Parquet or text value (see the module docstring).

    Parameters
    ----------
    value : Any
        The value.

    Raises
    ------
    ValueRefused
        It is not a number (``true``/``false`` are not numbers).
    """
    if isinstance(value, bool):
        raise ValueRefused(NOT_A_NUMBER, "a number, not true/false")
    if isinstance(value, numbers.Integral):  # numpy's integers too (Parquet)
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            return math.inf
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return parse_number(value)
    raise ValueRefused(NOT_A_NUMBER, "a number")


@dataclass(frozen=True)
class MissingValues:
    """What counts as a missing value: a schema's ``[dataset].missing_values``.

    Parameters
    ----------
    words : tuple of str
        The texts read as missing (compared after stripping spaces); a word that is a
        number (``-999``) also makes that number missing.
    """

    words: tuple[str, ...] = DEFAULT_MISSING_VALUES

    @property
    def numbers(self) -> frozenset[float]:
        """The words that are numbers, as numbers."""
        return frozenset(float(word) for word in self.words if NUMBER.fullmatch(word.strip()))

    def is_missing(self, value: Any, declared: Iterable[str] = ()) -> bool:
        """Whether ``value`` is missing; a value the column declares never is.

        Parameters
        ----------
        value : Any
            A cell or request value.
        declared : iterable of str
            The column's declared categories or classes.
        """
        if value is None:
            return True
        if isinstance(value, bool):
            return False
        if isinstance(value, numbers.Real):
            if math.isnan(value):
                return True
            return value in self.numbers and _category_text(value) not in set(declared)
        if not isinstance(value, str):
            return False
        if value in set(declared):
            return False
        text = value.strip()
        if text in self.words:
            return True
        return bool(NUMBER.fullmatch(text)) and float(text) in self.numbers


def _category_text(value: numbers.Real) -> str:
    """A number as the category it names: ``1`` and ``1.0`` are ``"1"``."""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


@dataclass(frozen=True)
class ValueRule:
    """How one feature's values are read: its type and what the schema declares.

    Parameters
    ----------
    type : str
        ``numeric``, ``categorical`` or ``binary``.
    categories : tuple of str
        A categorical feature's declared values (or a label's classes).
    min, max : float or None
        A numeric feature's declared inclusive bounds.
    """

    type: str
    categories: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None

    @classmethod
    def of_entry(cls, entry: Mapping[str, Any]) -> ValueRule:
        """The rule of a schema's ``[features.<name>]`` table (or the service's metadata).

        Parameters
        ----------
        entry : mapping
            ``type`` and, as the type needs, ``categories``, ``min``, ``max``.
        """
        low, high = entry.get("min"), entry.get("max")
        return cls(
            type=str(entry.get("type")),
            categories=tuple(str(c) for c in entry.get("categories", ())),
            min=None if low is None else float(low),
            max=None if high is None else float(high),
        )

    def read(self, value: Any) -> float | str:
        """The value as the model reads it: a float (numeric, binary 0.0/1.0) or a category.

        Call it on a value that is not missing (:meth:`MissingValues.is_missing`).

        Parameters
        ----------
        value : Any
            A cell's text, or a JSON or Parquet value.

        Raises
        ------
        ValueRefused
            The value does not fit; its ``kind`` and ``expected`` say how.
        """
        if self.type == "numeric":
            return self._number(value)
        if self.type == "binary":
            return read_binary(value)
        return read_category(value, self.categories)

    def _number(self, value: Any) -> float:
        number = as_number(value)
        if not math.isfinite(number):
            raise ValueRefused(NOT_FINITE, "a finite number")
        if self.min is not None and number < self.min:
            raise ValueRefused(OUT_OF_RANGE, f"a number at least {self.min:g} (min)")
        if self.max is not None and number > self.max:
            raise ValueRefused(OUT_OF_RANGE, f"a number at most {self.max:g} (max)")
        return number


def read_binary(value: Any) -> float:
    """A binary value as 0.0 or 1.0 (see the module docstring).

    Parameters
    ----------
    value : Any
        The value.

    Raises
    ------
    ValueRefused
        It is none of the binary spellings.
    """
    expected = "0/1, true/false, yes/no, y/n or t/f"
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return 1.0 if word in TRUE_WORDS else 0.0
    try:
        number = as_number(value)
    except ValueRefused:
        raise ValueRefused(NOT_BINARY, expected) from None
    if number in (0.0, 1.0):
        return number
    raise ValueRefused(NOT_BINARY, expected)


def read_category(value: Any, categories: tuple[str, ...]) -> str:
    """One of ``categories``, exactly (see the module docstring).

    Parameters
    ----------
    value : Any
        The value.
    categories : tuple of str
        The declared categories (or a label's classes).

    Raises
    ------
    ValueRefused
        It is not a declared category; a near miss gets a hint.
    """
    expected = f"one of {list(categories)}"
    if isinstance(value, str) and value in categories:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        raise ValueRefused(UNKNOWN_CATEGORY, expected)
    if isinstance(value, str):
        if NUMBER.fullmatch(value.strip()) and _category_text(float(value)) in categories:
            return _category_text(float(value))
        raise ValueRefused(UNKNOWN_CATEGORY, expected, _near_category(value, categories))
    if _category_text(value) in categories:
        return _category_text(value)
    raise ValueRefused(UNKNOWN_CATEGORY, expected)


def _near_category(text: str, categories: tuple[str, ...]) -> str:
    """A hint when ``text`` differs from a category only by spaces or case."""
    for category in categories:
        if text.strip() == category:
            return f"did you mean '{category}'? categories match exactly, without spaces around"
        if text.strip().casefold() == category.casefold():
            return f"did you mean '{category}'? categories match exactly, case included"
    return ""
