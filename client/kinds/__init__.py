"""Kinds of site data (tables, images, sequences, clinical notes); see ``client.kinds.base``."""

from client.kinds.base import (
    DataKind,
    EncodedExamples,
    ModelInput,
    RowError,
    SiteExamples,
    check_schema,
    get_kind,
    kind_names,
    register_kind,
)

__all__ = [
    "DataKind",
    "EncodedExamples",
    "ModelInput",
    "RowError",
    "SiteExamples",
    "check_schema",
    "get_kind",
    "kind_names",
    "register_kind",
]
