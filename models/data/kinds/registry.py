"""The built-in data kinds by name, and schemas checked by their kind.

As in Opacus's ``accountants/registry.py``: this module imports the implementations, the
implementations import only :mod:`models.data.kinds.base`. A schema's structure is read
by :mod:`models.data.schema`; what a kind needs on top (task, keys, features) is checked
here, so every schema a caller loads through :func:`load_schema` or :func:`parse_schema`
is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.data.kinds.base import DataKind
from models.data.kinds.image import ImageKind
from models.data.kinds.sequence import SequenceKind
from models.data.kinds.table import TableKind
from models.data.kinds.text import TextKind
from models.data.schema import (
    DATASET_KEYS,
    SchemaError,
    SiteSchema,
    read_schema_document,
    read_schema_file,
)

KINDS: dict[str, DataKind] = {
    kind.name: kind for kind in (TableKind(), ImageKind(), SequenceKind(), TextKind())
}


def kind_names() -> list[str]:
    """The names of the known data kinds, sorted."""
    return sorted(KINDS)


def get_kind(schema_or_name: SiteSchema | str) -> DataKind:
    """The kind a schema declares (``[dataset] kind``), or the kind of that name.

    Parameters
    ----------
    schema_or_name : SiteSchema or str
        A schema, or a kind's name.

    Raises
    ------
    SchemaError
        The kind is not known; the message lists the known ones.
    """
    if isinstance(schema_or_name, str):
        name, source = schema_or_name, "<kind>"
    else:
        name, source = schema_or_name.kind, schema_or_name.source
    if name not in KINDS:
        raise SchemaError(f"{source}: [dataset].kind is '{name}', expected one of {sorted(KINDS)}")
    return KINDS[name]


def check_schema(schema: SiteSchema) -> None:
    """Check the kind-specific part of a schema (task, keys, features).

    Parameters
    ----------
    schema : SiteSchema
        A schema whose structure :mod:`models.data.schema` has read.
    """
    kind = get_kind(schema)
    if schema.task not in kind.tasks:
        raise SchemaError(
            f"{schema.source}: [dataset].task '{schema.task}' does not fit {kind.name} data; "
            f"expected one of {kind.tasks}"
        )
    allowed = [*DATASET_KEYS, *kind.keys]
    unknown = sorted(set(schema.to_dict()["dataset"]) - set(allowed))
    if unknown:
        raise SchemaError(
            f"{schema.source}: [dataset] has unknown key '{unknown[0]}' for {kind.name} data; "
            f"expected one of {allowed}"
        )
    kind.check_schema(schema)


def parse_schema(raw: dict[str, Any], source: str = "<schema>") -> SiteSchema:
    """A complete schema from its parsed TOML: structure, then its kind's own keys.

    Parameters
    ----------
    raw : dict
        The parsed TOML document.
    source : str
        Where it was read from, for error messages.
    """
    schema = read_schema_document(raw, source)
    check_schema(schema)
    return schema


def load_schema(path: str | Path) -> SiteSchema:
    """Read a schema TOML file and check it completely (raises :class:`SchemaError`).

    Parameters
    ----------
    path : str or Path
        The schema file.
    """
    schema = read_schema_file(path)
    check_schema(schema)
    return schema
