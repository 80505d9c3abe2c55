"""Laying out a simulated federation on disk: one data file and state folder per site.

A simulation folder looks exactly like what real sites would have, so the ClientApp
reads it with the same code as in deployment::

    <dir>/schema.toml      the federation's schema
    <dir>/site-<i>.csv     each hospital's data (or the user's own files): a table, or
                           what the schema's data kind reads (``.npz``, a PNG folder …)
    <dir>/test.csv         the global test set, held out from every site (same format)
    <dir>/state/site-<i>/  each site's state (privacy ledger)
    <dir>/sites.json       per site: name, data path, schema path, state dir, ε budget, δ
    <dir>/audit/           with ``audit-canaries``: the canaries and each site's secret
                           coins (``simulations.canaries``); a site's table ends with the
                           canaries its coins put in
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from models.data.kinds.base import DataKind
from models.data.kinds.registry import get_kind, load_schema
from models.data.schema import SiteSchema
from models.data.tables import DataProblem, ProblemKind, SiteDataError
from server.federation.run_state import SiteFiles
from server.settings import RunSettings
from simulations.canaries import draw_coins, make_canaries, save_audit
from simulations.datasets import load_dataset
from simulations.partition import partition

SITES_FILE = "sites.json"
SCHEMA_FILE = "schema.toml"
TEST_SET = "test"  # test.<ext>: the global test set of a --data-dir folder


@dataclass(frozen=True)
class SimulationLayout:
    """Where a prepared simulation's files are.

    Parameters
    ----------
    root : Path
        The simulation folder.
    schema_path : Path
        The federation's schema.
    test_path : Path, optional
        The global test set, when there is one.
    sites : list of dict
        Per site, the entry of ``sites.json`` (``site-name``, ``data-path``,
        ``schema-path``, ``state-dir``, ``epsilon-budget``, ``delta``).
    """

    root: Path
    schema_path: Path
    test_path: Path | None
    sites: list[dict[str, Any]]


def prepare_simulation(settings: RunSettings, root: str | Path) -> SimulationLayout:
    """Create (or reopen) the simulation folder for ``settings``.

    A folder that already holds ``sites.json`` is reopened as it is, whatever
    ``settings`` say.

    Parameters
    ----------
    settings : RunSettings
        The run (``dataset`` or ``data-dir``, ``sites``, partitioning, ε budget, δ).
    root : str or Path
        The simulation folder; created if needed.
    """
    root = Path(root).resolve()
    if (root / SITES_FILE).is_file():
        return read_layout(root)
    root.mkdir(parents=True, exist_ok=True)
    if settings.data_dir:
        if settings.audit_canaries:
            raise ValueError(
                "the privacy audit puts canaries into simulated sites made from --dataset; "
                "it does not change the files of --data-dir"
            )
        layout = _from_data_dir(settings, root)
    else:
        layout = _from_dataset(settings, root)
    (root / SITES_FILE).write_text(json.dumps(layout.sites, indent=2))
    return layout


def prepare_sites(settings: RunSettings, root: Path) -> SiteFiles:
    """The round loop's site preparer: the simulation laid out under ``root``.

    Lays out (or reopens) the simulation with :func:`prepare_simulation` and says where
    its schema and test set are.

    Parameters
    ----------
    settings : RunSettings
        The run (``dataset`` or ``data-dir``, ``sites``, partitioning).
    root : Path
        The run's simulation folder.
    """
    layout = prepare_simulation(settings, root)
    return SiteFiles(layout.schema_path, layout.test_path, str(layout.root))


def read_layout(root: str | Path) -> SimulationLayout:
    """The layout of a prepared simulation folder, from its ``sites.json``.

    Parameters
    ----------
    root : str or Path
        The simulation folder.
    """
    root = Path(root)
    sites = json.loads((root / SITES_FILE).read_text())
    schema_path = Path(sites[0]["schema-path"]) if sites else root / "schema.toml"
    # the test set lies beside the schema: in this folder, or in the user's --data-dir
    test = find_test_set(schema_path.parent, get_kind(load_schema(schema_path)))
    return SimulationLayout(root, schema_path, test, sites)


def _site_entry(settings: RunSettings, root: Path, index: int, data: Path, schema: Path) -> dict:
    return {
        "site-name": _site_name(index),
        "data-path": str(data),
        "schema-path": str(schema),
        "state-dir": str(root / "state" / f"site-{index}"),
        "epsilon-budget": settings.epsilon,
        "delta": settings.delta,
    }


def _from_dataset(settings: RunSettings, root: Path) -> SimulationLayout:
    dataset = load_dataset(settings.dataset)
    frame, schema = dataset.examples, dataset.schema
    classification = schema.task in ("binary", "multiclass")
    train, test = train_test_split(
        frame,
        test_size=settings.test_fraction,
        random_state=settings.seed,
        stratify=frame[schema.label] if classification else None,
    )
    parts = partition(
        train.reset_index(drop=True),
        schema.label,
        settings.sites,
        method=settings.partition,
        alpha=settings.alpha,
        seed=settings.seed,
        classification=classification,
    )
    schema_path = root / "schema.toml"
    schema.save(schema_path)
    test_path = dataset.write(test, root / "test")
    canaries = [0] * len(parts)
    if settings.audit_canaries:
        parts, canaries = _with_canaries(settings, root, schema, train, parts)
    sites = []
    for i, part in enumerate(parts):
        data = dataset.write(part, root / f"site-{i}")
        entry = _site_entry(settings, root, i, data, schema_path)
        if canaries[i]:
            entry["audit-canaries"] = canaries[i]
        sites.append(entry)
    return SimulationLayout(root, schema_path, test_path, sites)


def _with_canaries(
    settings: RunSettings,
    root: Path,
    schema: SiteSchema,
    train: pd.DataFrame,
    parts: list[pd.DataFrame],
) -> tuple[list[pd.DataFrame], list[int]]:
    """Each site's part followed by the canaries its secret coins put in, and their count."""
    canaries = make_canaries(train, schema, settings.audit_canaries)
    names = [_site_name(i) for i in range(len(parts))]
    coins = draw_coins(names, len(canaries), settings.seed)
    save_audit(root, canaries, coins)
    joined = [
        pd.concat([part, canaries[coins[name]]], ignore_index=True)
        for part, name in zip(parts, names, strict=True)
    ]
    return joined, [int(sum(coins[name])) for name in names]


def _site_name(index: int) -> str:
    return f"hospital-{index}"


def site_files(folder: Path, kind: DataKind) -> list[Path]:
    """The site sources of a ``--data-dir`` folder, sorted (the test set excluded).

    Parameters
    ----------
    folder : Path
        The ``--data-dir`` folder.
    kind : DataKind
        The schema's data kind.

    Raises
    ------
    SiteDataError
        The folder is ambiguous (see :func:`folder_sources`).
    """
    return [p for p in folder_sources(folder, kind) if p.stem != TEST_SET]


def find_test_set(folder: Path, kind: DataKind) -> Path | None:
    """The folder's global test set, ``test.<ext>`` (or a ``test`` folder for images).

    :func:`site_files` checks the folder; this only looks (a prepared simulation folder
    holds more than site sources).
    """
    found = [p for p in folder.iterdir() if p.stem == TEST_SET and kind.is_site_source(p)]
    return found[0] if found else None


def folder_sources(folder: Path, kind: DataKind) -> list[Path]:
    """Every site source (and the test set) of a ``--data-dir`` folder, sorted.

    A data folder is unambiguous: beside ``schema.toml`` (and hidden files, whose names
    start with a dot, which are ignored) it holds only the kind's sources, one per site
    name. Anything else is an error naming the entry.

    Parameters
    ----------
    folder : Path
        The ``--data-dir`` folder.
    kind : DataKind
        The schema's data kind.

    Raises
    ------
    SiteDataError
        Naming every entry of another type, every broken link or unreadable entry, and
        every pair of sources that name one site (``a.csv`` and ``a.parquet``).
    """
    problems: list[DataProblem] = []
    sources: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name == SCHEMA_FILE or entry.name.startswith("."):
            continue
        problem = _entry_problem(entry, kind)
        if problem is None:
            sources.append(entry)
        else:
            problems.append(problem)
    by_site: dict[str, list[Path]] = {}
    for path in sources:
        by_site.setdefault(path.stem.casefold(), []).append(path)
    for paths in by_site.values():
        if len(paths) > 1:
            names = " and ".join(str(p) for p in paths)
            problems.append(
                DataProblem(
                    names,
                    None,
                    None,
                    "two sources for one site name: keep one (the file name is the site's name)",
                    ProblemKind.DUPLICATE_SITE,
                )
            )
    if problems:
        raise SiteDataError(problems)
    return sources


def _entry_problem(entry: Path, kind: DataKind) -> DataProblem | None:
    """Why a data folder's entry is not a readable site source, or None."""
    if entry.is_symlink() and not entry.exists():
        return DataProblem(
            str(entry),
            None,
            None,
            "a broken link (it points at nothing)",
            ProblemKind.FILE_NOT_FOUND,
        )
    if not kind.is_site_source(entry):
        what = "a folder" if entry.is_dir() else "a file of another type"
        return DataProblem(
            str(entry),
            None,
            None,
            f"{what}: a {kind.name} data folder holds schema.toml and, per site, {kind.sources}",
            ProblemKind.WRONG_FILE_TYPE,
        )
    try:
        if entry.is_dir():
            os.listdir(entry)
        else:
            entry.open("rb").close()
    except OSError as err:
        return DataProblem(
            str(entry),
            None,
            None,
            f"cannot be read ({err.strerror or type(err).__name__})",
            ProblemKind.UNREADABLE_FILE,
        )
    return None


def _from_data_dir(settings: RunSettings, root: Path) -> SimulationLayout:
    """The user's own hospitals: ``schema.toml`` plus one site source per site.

    ``test.*``, if present, is the global test set.
    """
    source = Path(settings.data_dir).resolve()
    schema_path = source / SCHEMA_FILE
    kind = get_kind(load_schema(schema_path))  # fail early, naming the file
    files = site_files(source, kind)
    if not files:
        raise ValueError(f"{source}: no site files ({kind.name} data) beside schema.toml")
    sites = []
    for i, data in enumerate(files):
        entry = _site_entry(settings, root, i, data, schema_path)
        entry["site-name"] = data.stem
        sites.append(entry)
    return SimulationLayout(root, schema_path, find_test_set(source, kind), sites)
