"""`fedcare site check`: a site's data against the federation's schema, before any round.

The same load the ClientApp makes (the schema's data kind reads and checks the file,
listing every problem), plus what only a check before training can say:

- δ must be below 1/n for the site's n training examples (its rows less the validation
  split), or the ClientApp refuses every round;
- a site needs at least ``min_rows`` examples (:data:`DEFAULT_MIN_ROWS` by default);
- data-quality warnings by column and count, never a value (:mod:`models.data.quality`);
- the rows dropped for a missing value (``missing = drop_row``), by file row.

It needs only a data file and a schema (``fedcare site check --data F --schema S``);
with a site's ``site.toml`` (:func:`deploy.supernode.check_site`) it also shows the
privacy budget and the approved apps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.data.kinds.registry import get_kind, load_schema
from models.data.quality import quality_warnings
from models.data.schema import SchemaError
from models.data.site_config import DEFAULT_VALIDATION_FRACTION
from models.data.tables import DataProblem, SiteDataError

DEFAULT_DELTA = 1e-5
# Fewer examples than this cannot train anything useful under DP noise.
DEFAULT_MIN_ROWS = 20


@dataclass(frozen=True)
class SiteCheck:
    """What `fedcare site check` found.

    Parameters
    ----------
    rows : int
        Examples in the site's data (0 when it could not be read).
    label_counts : dict
        Examples per class (classification), empty otherwise.
    problems : list of str
        Everything wrong with the data or the schema, by row and column where known.
    budget : dict
        The privacy ledger's summary (``PrivacyLedger.summary``); empty without site.toml.
    approved_apps : tuple of str
        The FAB hashes whose runs the site takes part in (``[runtime] approved-apps``).
    warnings : list of str
        Data-quality warnings, by column and count.
    dropped_rows : list of int
        File rows dropped for a missing value.
    """

    rows: int
    label_counts: dict[str, int]
    problems: list[str]
    budget: dict = field(default_factory=dict)
    approved_apps: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)
    dropped_rows: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the check found no problem (warnings are not problems)."""
        return not self.problems


def training_rows(examples: int, validation_fraction: float) -> int:
    """The examples a site trains on: all less the validation split (rounded up, as sklearn).

    Parameters
    ----------
    examples : int
        The site's examples.
    validation_fraction : float
        The share kept for validation.
    """
    return examples - math.ceil(validation_fraction * examples)


def check_site_data(
    data_path: Path,
    schema_path: Path,
    delta: float = DEFAULT_DELTA,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> SiteCheck:
    """Check a data file against a schema as the ClientApp will, and more (module docstring).

    Parameters
    ----------
    data_path, schema_path : Path
        The site's data and the federation's schema.
    delta : float
        δ of the site's accounting.
    validation_fraction : float
        The share of examples kept for validation.
    min_rows : int
        The fewest examples a site may have.
    """
    try:
        schema = load_schema(schema_path)
        examples = get_kind(schema).load(data_path, schema)
    except SiteDataError as err:
        warnings = _warnings(data_path, schema_path)
        return SiteCheck(0, {}, [str(p) for p in err.problems], warnings=warnings)
    except (SchemaError, OSError) as err:  # OSError: a kind's own reader (images)
        return SiteCheck(0, {}, [str(err)])
    rows = examples.num_examples
    stats = examples.statistics(np.arange(rows))
    labels = {k: int(v) for k, v in sorted(stats.label_counts.items())}
    problems = []
    if rows < min_rows:
        problems.append(
            str(
                DataProblem(
                    str(data_path),
                    None,
                    None,
                    f"{rows} example(s); a site needs at least {min_rows} (--min-rows)",
                )
            )
        )
    train = training_rows(rows, validation_fraction)
    if train > 0 and delta >= 1.0 / train:
        problems.append(
            f"δ={delta:g} must be below 1/n = {1.0 / train:.2e} for the site's {train} "
            f"training examples ({rows} less the {validation_fraction:g} validation split)"
        )
    return SiteCheck(
        rows,
        labels,
        problems,
        warnings=_warnings(data_path, schema_path),
        dropped_rows=list(examples.dropped_rows),
    )


def _warnings(data_path: Path, schema_path: Path) -> list[str]:
    """The data-quality warnings, as text (none when the schema cannot be read)."""
    try:
        schema = load_schema(schema_path)
    except SchemaError:
        return []
    return [str(w) for w in quality_warnings(data_path, schema)]
