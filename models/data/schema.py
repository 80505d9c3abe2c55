"""The site schema: what a hospital's table must look like.

A schema is a TOML file that every site of a federation shares. It declares the label
column, the task, each feature's type and the missing-value policy. See
``docs/SITE_DATA.md`` for the format. Loading a table against it is in
``models.data.tables``.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.data.transforms import transform_requirement
from models.data.values import DEFAULT_MISSING_VALUES, FEATURE_TYPES, MissingValues, ValueRule

TASKS = ("binary", "multiclass", "regression", "survival")
MISSING_POLICIES = ("reject", "drop_row", "impute_mean")
# Every key a schema may hold outside its data kind's own [dataset] keys: a misspelt key
# (``minimum`` for ``min``) would otherwise silently switch a check off.
TOP_LEVEL_TABLES = ("dataset", "features")
DATASET_KEYS = (
    "name",
    "task",
    "label",
    "classes",
    "missing",
    "missing_values",
    "kind",
    "label_min",
    "label_max",
)
FEATURE_KEYS = ("type", "categories", "min", "max", "transform")


class SchemaError(ValueError):
    """A schema file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class FeatureSpec:
    """One input column.

    Parameters
    ----------
    name : str
        The column header in the site's table.
    type : str
        ``numeric`` (a real number), ``categorical`` (one of ``categories``) or
        ``binary`` (0/1, true/false …); :mod:`models.data.values` reads each.
    categories : tuple[str, ...]
        Allowed values of a categorical feature, in the order of its one-hot columns.
    min, max : float | None
        Optional inclusive bounds of a numeric feature.
    transform : str | None
        A numeric feature's declared transform before standardization (``log``; see
        :mod:`models.data.transforms`), or None.
    """

    name: str
    type: str
    categories: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    transform: str | None = None

    @property
    def rule(self) -> ValueRule:
        """How this feature's values are read (:mod:`models.data.values`)."""
        return ValueRule(self.type, self.categories, self.min, self.max)

    def to_dict(self) -> dict[str, Any]:
        """The feature's ``[features.<name>]`` table (keys left unset are omitted)."""
        out: dict[str, Any] = {"type": self.type}
        if self.categories:
            out["categories"] = list(self.categories)
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.transform is not None:
            out["transform"] = self.transform
        return out


@dataclass(frozen=True)
class SiteSchema:
    """The shared description of every site's table.

    Parameters
    ----------
    name : str
        The data set's name; also the model's name in the registry.
    task : str
        ``binary``, ``multiclass``, ``regression`` or ``survival`` (the label is then the
        follow-up time and ``[dataset].event`` names the event column).
    label : str
        The label column.
    classes : tuple[str, ...]
        For classification, the label values in class-index order (as text).
    features : tuple[FeatureSpec, ...]
        The input columns, in model order.
    missing : str
        What to do with an empty cell: ``reject`` the file, ``drop_row`` or
        ``impute_mean`` (numeric features only; uses the federated mean).
    source : str
        Where the schema was read from, for error messages.
    extra : dict
        The other ``[dataset]`` keys: ``kind`` (``table``, ``image``, ``sequence``,
        ``text``; see ``models.data.kinds``), a regression label's ``label_min`` and
        ``label_max``, ``missing_values`` (the texts read as missing) and the kind's
        own keys.
    """

    name: str
    task: str
    label: str
    features: tuple[FeatureSpec, ...]
    classes: tuple[str, ...] = ()
    missing: str = "reject"
    source: str = "<schema>"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        """The features' names, in model order."""
        return [f.name for f in self.features]

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``); 1 for regression."""
        return len(self.classes) if self.task != "regression" else 1

    @property
    def label_range(self) -> tuple[float | None, float | None]:
        """A regression label's declared ``[label_min, label_max]`` (None where unset)."""
        low, high = self.extra.get("label_min"), self.extra.get("label_max")
        return (
            None if low is None else float(low),
            None if high is None else float(high),
        )

    @property
    def missing_values(self) -> MissingValues:
        """What counts as missing: ``[dataset].missing_values`` or the default list."""
        words = self.extra.get("missing_values", DEFAULT_MISSING_VALUES)
        return MissingValues(tuple(str(w) for w in words))

    @property
    def kind(self) -> str:
        """The kind of site data (``[dataset].kind``, ``table`` by default)."""
        return str(self.extra.get("kind", "table"))

    def feature(self, name: str) -> FeatureSpec:
        """The feature called ``name``.

        Parameters
        ----------
        name : str
            A feature's name.

        Raises
        ------
        KeyError
            No feature has that name.
        """
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The schema as its parsed TOML: ``{"dataset": {…}, "features": {name: {…}}}``."""
        dataset: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "label": self.label,
            "missing": self.missing,
        }
        if self.classes:
            dataset["classes"] = list(self.classes)
        dataset.update(self.extra)
        return {"dataset": dataset, "features": {f.name: f.to_dict() for f in self.features}}

    def to_toml(self) -> str:
        """The schema as TOML text, readable by :func:`read_schema_document`."""
        lines = ["[dataset]"]
        for key, value in self.to_dict()["dataset"].items():
            lines.append(f"{key} = {_toml_value(value)}")
        for feature in self.features:
            lines.append("")
            lines.append(f"[features.{_toml_key(feature.name)}]")
            for key, value in feature.to_dict().items():
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    @property
    def sha256(self) -> str:
        """Identifies the schema's content (sites refuse a federation with another)."""
        return hashlib.sha256(self.to_toml().encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_toml` to ``path``.

        Parameters
        ----------
        path : str or Path
            The schema file to write.
        """
        Path(path).write_text(self.to_toml())


def read_schema_file(path: str | Path) -> SiteSchema:
    """Read a schema TOML file's structure; its kind checks the rest.

    Use ``models.data.kinds.registry.load_schema`` for a completely checked schema.

    Parameters
    ----------
    path : str or Path
        The schema file.

    Raises
    ------
    SchemaError
        The file is missing, is not TOML, or its structure is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: schema file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SchemaError(f"{path}: not valid TOML ({err})") from err
    return read_schema_document(raw, source=str(path))


def read_schema_document(raw: dict[str, Any], source: str = "<schema>") -> SiteSchema:
    """Check a schema's structure given as a dict and build a :class:`SiteSchema`.

    Its data kind checks the rest (``models.data.kinds.registry``).

    Parameters
    ----------
    raw : dict
        The parsed TOML document.
    source : str
        Where it was read from, for error messages.

    Raises
    ------
    SchemaError
        A table or key is missing or has a wrong value; the message names it.
    """
    _refuse_unknown(source, "the schema", raw, TOP_LEVEL_TABLES)
    dataset = raw.get("dataset")
    if not isinstance(dataset, dict):
        raise SchemaError(f"{source}: missing [dataset] table")
    for key in ("task", "label"):
        if key not in dataset:
            raise SchemaError(f"{source}: [dataset] needs '{key}'")
    task = dataset["task"]
    if task not in TASKS:
        raise SchemaError(f"{source}: [dataset].task is '{task}', expected one of {TASKS}")
    missing = dataset.get("missing", "reject")
    if missing not in MISSING_POLICIES:
        raise SchemaError(
            f"{source}: [dataset].missing is '{missing}', expected one of {MISSING_POLICIES}"
        )
    classes = tuple(str(c) for c in dataset.get("classes", ()))
    if task == "binary" and classes and len(classes) != 2:
        raise SchemaError(f"{source}: [dataset].classes must list 2 values for a binary task")
    if task == "binary" and not classes:
        classes = ("0", "1")
    if task == "multiclass" and len(classes) < 2:
        raise SchemaError(
            f"{source}: [dataset].classes must list the label values for a multiclass task"
        )
    # Whether features are needed depends on the data kind (images have none).
    raw_features = raw.get("features", {})
    if not isinstance(raw_features, dict):
        raise SchemaError(f"{source}: [features] must hold [features.<name>] tables")
    features = []
    for name, spec in raw_features.items():
        features.append(_parse_feature(name, spec, source))
    label = str(dataset["label"])
    if label in raw_features:
        raise SchemaError(f"{source}: the label '{label}' is also declared as a feature")
    for key in ("label_min", "label_max"):
        if key in dataset and not _is_number(dataset[key]):
            raise SchemaError(f"{source}: [dataset].{key} must be a number")
    words = dataset.get("missing_values", [])
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise SchemaError(
            f'{source}: [dataset].missing_values must be a list of texts, e.g. ["", "NA", "-999"]'
        )
    if "label_min" in dataset and "label_max" in dataset:
        if dataset["label_min"] > dataset["label_max"]:
            raise SchemaError(f"{source}: [dataset].label_min is above label_max")
    known = {"name", "task", "label", "classes", "missing"}
    schema = SiteSchema(
        name=str(dataset.get("name", Path(source).stem)),
        task=task,
        label=label,
        features=tuple(features),
        classes=classes if task != "regression" else (),
        missing=missing,
        source=source,
        extra={k: v for k, v in dataset.items() if k not in known},
    )
    return schema


def _parse_feature(name: str, spec: Any, source: str) -> FeatureSpec:
    where = f"{source}: [features.{name}]"
    if not isinstance(spec, dict):
        raise SchemaError(f"{where} must be a table")
    _refuse_unknown(source, f"[features.{name}]", spec, FEATURE_KEYS)
    ftype = spec.get("type")
    if ftype not in FEATURE_TYPES:
        raise SchemaError(f"{where}.type is '{ftype}', expected one of {FEATURE_TYPES}")
    categories: tuple[str, ...] = ()
    if ftype == "categorical":
        cats = spec.get("categories")
        if not isinstance(cats, list) or len(cats) < 2:
            raise SchemaError(f"{where}.categories must list at least 2 allowed values")
        categories = tuple(str(c) for c in cats)
        if len(set(categories)) != len(categories):
            raise SchemaError(f"{where}.categories has duplicates")
    lo, hi = spec.get("min"), spec.get("max")
    for key, value in (("min", lo), ("max", hi)):
        if value is not None and not _is_number(value):
            raise SchemaError(f"{where}.{key} must be a number")
    if lo is not None and hi is not None and lo > hi:
        raise SchemaError(f"{where}: min {lo} is above max {hi}")
    transform = spec.get("transform")
    if transform is not None:
        _check_transform(where, ftype, transform, lo, hi)
    return FeatureSpec(
        name=name,
        type=ftype,
        categories=categories,
        min=None if lo is None else float(lo),
        max=None if hi is None else float(hi),
        transform=transform,
    )


def _check_transform(where: str, ftype: str, transform: Any, lo: Any, hi: Any) -> None:
    """Raise a :class:`SchemaError` unless a numeric feature's range allows ``transform``."""
    if ftype != "numeric":
        raise SchemaError(f"{where}.transform: only a numeric feature has one, this is {ftype}")
    problem = transform_requirement(str(transform), lo, hi)
    if problem:
        raise SchemaError(f"{where}.{problem}")


def _is_number(value: Any) -> bool:
    """A TOML number (a boolean is not one, although Python's ``bool`` is an ``int``)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _refuse_unknown(source: str, where: str, table: dict[str, Any], allowed: Sequence[str]) -> None:
    """Raise a :class:`SchemaError` naming the first key of ``table`` not in ``allowed``.

    Parameters
    ----------
    source : str
        The schema's file, for the message.
    where : str
        The table's name, for the message.
    table : dict
        The parsed table.
    allowed : sequence of str
        Its known keys.
    """
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise SchemaError(
            f"{source}: {where} has unknown key '{unknown[0]}'; expected one of {list(allowed)}"
        )


def _toml_key(key: str) -> str:
    if key.replace("_", "").replace("-", "").isalnum():
        return key
    return _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
