"""One hospital as the ClientApp sees it: its settings, its checked data, its ledger.

Settings come from the SuperNode's ``--node-config`` in deployment (``data-path``,
``schema-path``, ``state-dir``, ``epsilon-budget``, optional ``epsilon-per-run`` and
``epsilon-per-federation``, ``delta``, ``site-name``) or, in a
simulation, from the simulation folder's ``sites.json`` entry for the node's
``partition-id``. Either way the same keys mean the same thing.

The refusals the site sends are kept, one JSON line each, in ``refusals.jsonl`` in its
state folder (:func:`record_refusal`), with the public reason only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from models.data.features import FeatureStatistics, Standardization
from models.data.kinds.base import EncodedExamples, SiteExamples
from models.data.kinds.registry import get_kind, load_schema
from models.data.schema import SiteSchema
from models.data.site_config import DEFAULT_VALIDATION_FRACTION, SiteConfigError
from privacy.ledger import PrivacyLedger

REFUSALS_FILE = "refusals.jsonl"

log = logging.getLogger("fedcare.site")


@dataclass(frozen=True)
class SiteSettings:
    """A site's local settings.

    Parameters
    ----------
    name : str
        How the site appears in reports.
    data_path, schema_path : Path
        The site's data (a table, an image archive or folder … as the schema's data
        kind reads it) and the federation's schema.
    state_dir : Path
        Where the privacy ledger lives; must survive restarts.
    epsilon_budget : float
        The most ε this site will spend on its data, over all runs.
    epsilon_per_run, epsilon_per_federation : float or None
        The most ε one run's, or one federation's, releases may compose to (no cap when
        None); each run's noise plan fits the least of what is left of the three.
    audit_canaries : int
        Simulation only (``fedcare simulate --audit``): the data's last this many examples
        are audit canaries, always in the training part (the validation split is drawn
        from the other examples, so a canary changes the training data by itself alone).
    delta : float
        δ of the site's accounting (below 1/n).
    validation_fraction : float
        Share of the site's rows kept for federated evaluation.
    """

    name: str
    data_path: Path
    schema_path: Path
    state_dir: Path
    epsilon_budget: float
    delta: float = 1e-5
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    epsilon_per_run: float | None = None
    epsilon_per_federation: float | None = None
    audit_canaries: int = 0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], source: str) -> SiteSettings:
        """Settings from dashed keys (``data-path``, ``epsilon-budget`` …).

        Parameters
        ----------
        raw : mapping
            The SuperNode's node config, or a simulated site's ``sites.json`` entry.
        source : str
            Where ``raw`` came from, for messages.

        Raises
        ------
        SiteConfigError
            A required key is missing or a value has the wrong type.
        """
        missing = [
            k for k in ("data-path", "schema-path", "state-dir", "epsilon-budget") if k not in raw
        ]
        if missing:
            raise SiteConfigError(f"{source}: missing {', '.join(missing)}")
        try:
            return cls(
                name=str(raw.get("site-name", Path(str(raw["data-path"])).stem)),
                data_path=Path(str(raw["data-path"])),
                schema_path=Path(str(raw["schema-path"])),
                state_dir=Path(str(raw["state-dir"])),
                epsilon_budget=float(raw["epsilon-budget"]),
                delta=float(raw.get("delta", 1e-5)),
                validation_fraction=float(
                    raw.get("validation-fraction", DEFAULT_VALIDATION_FRACTION)
                ),
                epsilon_per_run=_optional_cap(raw, "epsilon-per-run"),
                epsilon_per_federation=_optional_cap(raw, "epsilon-per-federation"),
                audit_canaries=int(raw.get("audit-canaries", 0)),
            )
        except (TypeError, ValueError) as err:
            raise SiteConfigError(f"{source}: {err}") from err

    def ledger(self) -> PrivacyLedger:
        """The site's privacy ledger, in its state folder."""
        return PrivacyLedger(
            self.state_dir,
            self.epsilon_budget,
            self.delta,
            epsilon_per_run=self.epsilon_per_run,
            epsilon_per_federation=self.epsilon_per_federation,
        )


def _optional_cap(raw: Mapping[str, Any], key: str) -> float | None:
    """The ε cap under ``key``, or None when the site sets none."""
    return float(raw[key]) if key in raw else None


def resolve_settings(node_config: Mapping[str, Any], simulation_dir: str = "") -> SiteSettings:
    """The settings of the site this ClientApp runs for.

    Parameters
    ----------
    node_config : mapping
        The SuperNode's ``--node-config`` (deployment) or ``partition-id`` (simulation).
    simulation_dir : str
        The simulated sites' folder the coordinator names (empty in deployment).
    """
    if "data-path" in node_config:
        return SiteSettings.from_mapping(node_config, "SuperNode --node-config")
    if simulation_dir and "partition-id" in node_config:
        sites_file = Path(str(simulation_dir)) / "sites.json"
        sites = json.loads(sites_file.read_text())
        index = int(node_config["partition-id"])
        if index >= len(sites):
            raise SiteConfigError(
                f"{sites_file}: no site for partition {index} ({len(sites)} sites prepared)"
            )
        return SiteSettings.from_mapping(sites[index], f"{sites_file} site {index}")
    raise SiteConfigError(
        "this SuperNode has no site data: start it with --node-config "
        '\'data-path="…" schema-path="…" state-dir="…" epsilon-budget=…\''
    )


@dataclass
class SiteData:
    """A site's checked data, split into training and validation parts.

    ``examples`` is what the schema's data kind loaded (``models.data.kinds``); the indexes
    count its examples (rows, images, patients or notes).
    """

    settings: SiteSettings
    schema: SiteSchema
    examples: SiteExamples
    train_index: np.ndarray
    validation_index: np.ndarray

    @property
    def schema_sha256(self) -> str:
        """The hash of the site's schema (a federation with another one is refused)."""
        return self.schema.sha256

    def statistics(self) -> FeatureStatistics:
        """Counts, sums and sums of squares (and class counts) over the training part only."""
        return self.examples.statistics(self.train_index)

    def encoded(self, standardization: Standardization, part: str) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of the ``train`` or ``validation`` part."""
        index = self.train_index if part == "train" else self.validation_index
        encoded: EncodedExamples = self.examples.encode(index, standardization)
        return encoded.inputs, encoded.targets


_CACHE: dict[tuple[str, float], SiteData] = {}


def load_site(settings: SiteSettings, seed: int = 0) -> SiteData:
    """Load, check and split the site's data (cached per file and modification time)."""
    key = (
        str(settings.data_path),
        settings.data_path.stat().st_mtime if settings.data_path.exists() else 0.0,
    )
    if key in _CACHE and _CACHE[key].settings == settings:
        return _CACHE[key]
    schema = load_schema(settings.schema_path)
    examples = get_kind(schema).load(settings.data_path, schema)
    if examples.dropped_rows:  # the site's own log: row numbers, never a value
        log.info(
            "%s: %d row(s) dropped for a missing value (missing = %s): rows %s",
            settings.data_path,
            len(examples.dropped_rows),
            schema.missing,
            ", ".join(str(r) for r in examples.dropped_rows),
        )
    canaries = np.arange(examples.num_examples - settings.audit_canaries, examples.num_examples)
    rows = np.arange(examples.num_examples - settings.audit_canaries)
    strata = examples.strata()
    strata = strata[rows] if strata is not None else None
    if strata is not None and np.unique(strata, return_counts=True)[1].min() < 2:
        strata = None  # a class with a single example cannot be stratified
    train_index, validation_index = train_test_split(
        rows, test_size=settings.validation_fraction, random_state=seed, stratify=strata
    )
    train_index = np.concatenate([np.sort(train_index), canaries])
    data = SiteData(settings, schema, examples, train_index, np.sort(validation_index))
    _CACHE[key] = data
    return data


@dataclass(frozen=True)
class RefusalRecord:
    """A refusal the site sent, as its state folder keeps it.

    Parameters
    ----------
    time : str
        When, ISO 8601 in UTC.
    message_type : str
        What was refused: ``query``, ``train`` or ``evaluate``.
    code : str
        The name of its :class:`~protocol.federation.RefusalCode`.
    reason : str
        The public reason, exactly as sent to the coordinator: a closed vocabulary, no
        value of a record and no path of the site.
    federation, run : str
        The federation and run that asked ('' when the message named none).
    round : int or None
        The round (None for a query).
    """

    time: str
    message_type: str
    code: str
    reason: str
    federation: str
    run: str
    round: int | None

    def to_json(self) -> str:
        """The record as one line of JSON."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> RefusalRecord:
        """A record from a line :meth:`to_json` wrote.

        Parameters
        ----------
        line : str
            One line of ``refusals.jsonl``.

        Raises
        ------
        ValueError, KeyError, TypeError
            The line is not such a record (a write cut short, say).
        """
        data = json.loads(line)
        round_ = data["round"]
        return cls(
            time=str(data["time"]),
            message_type=str(data["message_type"]),
            code=str(data["code"]),
            reason=str(data["reason"]),
            federation=str(data["federation"]),
            run=str(data["run"]),
            round=None if round_ is None else int(round_),
        )


def record_refusal(state_dir: Path, record: RefusalRecord) -> None:
    """Append ``record`` to the site's ``refusals.jsonl``; a failed write is only logged.

    Parameters
    ----------
    state_dir : Path
        The site's state folder.
    record : RefusalRecord
        The refusal sent.
    """
    path = state_dir / REFUSALS_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(record.to_json() + "\n")
    except OSError as err:  # the refusal is sent all the same
        log.error("refusal not recorded in %s: %s", path, err)
