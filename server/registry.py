"""The model registry: versioned, checksummed (and optionally signed) global models.

Layout, one folder per version::

    <root>/<model name>/v0001/
        manifest.json        what the model is, how to rebuild it, metrics, ε per site,
                             and the sha256 of every other file
        weights.npz          the plain module's state dict (no Opacus prefixes)
        schema.toml          the federation's site schema
        preprocessing.json   the federated standardization
        manifest.sig         Ed25519 signature of manifest.json's bytes (when signed)

A version folder is written under a temporary name and renamed into place, so a reader
(the inference service) never sees half a version.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.data.features import Standardization
from models.data.schema import SiteSchema
from models.spec import ModelSpec

MANIFEST_FORMAT = "fedcare-model/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
WEIGHTS = "weights.npz"
SCHEMA = "schema.toml"
PREPROCESSING = "preprocessing.json"
_VERSION_DIR = re.compile(r"^v(\d{4,})$")

Signer = Callable[[bytes], bytes]


class RegistryError(ValueError):
    """A registry version is missing, malformed or fails its integrity check."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its folder and its parsed manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.manifest["model"])

    @property
    def data_kind(self) -> str:
        """What the model takes: ``table``, ``image``, ``sequence`` or ``text``."""
        return str(self.manifest.get("data_kind", "table"))

    @property
    def signature_path(self) -> Path:
        return self.path / SIGNATURE

    def manifest_bytes(self) -> bytes:
        return (self.path / MANIFEST).read_bytes()

    def verify_files(self) -> None:
        """Raise :class:`RegistryError` unless every listed file matches its sha256."""
        for filename, expected in self.manifest["files"].items():
            path = self.path / filename
            if not path.is_file():
                raise RegistryError(f"{self.path}: {filename} is missing")
            if sha256_file(path) != expected:
                raise RegistryError(f"{self.path}: {filename} does not match its sha256")

    def load_weights(self, data: bytes | None = None) -> dict[str, np.ndarray]:
        """The weights; ``data`` replaces reading ``weights.npz`` (e.g. after decryption)."""
        source = io.BytesIO(data) if data is not None else self.path / WEIGHTS
        with np.load(source, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}

    def schema_text(self) -> str:
        return (self.path / SCHEMA).read_text()

    def standardization(self) -> Standardization:
        return Standardization.from_dict(json.loads((self.path / PREPROCESSING).read_text()))


class ModelRegistry:
    """A folder of model versions.

    Parameters
    ----------
    root : path
        The registry folder; created on first registration.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[ModelVersion]:
        """Every complete version of ``name``, oldest first."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            if _VERSION_DIR.match(path.name) and (path / MANIFEST).is_file():
                found.append(self._read(path))
        return sorted(found, key=lambda v: v.version)

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """A version of ``name``: the given one, or the newest."""
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"{self.root}: no model named '{name}'")
        if version is None:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        raise RegistryError(f"{self.root}: '{name}' has no version {version}")

    def register(
        self,
        name: str,
        weights: Mapping[str, np.ndarray],
        spec: ModelSpec,
        schema: SiteSchema,
        standardization: Standardization,
        metrics: Mapping[str, float] | None = None,
        privacy: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        signer: Signer | None = None,
    ) -> ModelVersion:
        """Write a new version of ``name`` and return it.

        Parameters
        ----------
        weights : mapping of str to ndarray
            The global model's plain state dict.
        spec : ModelSpec
            How to rebuild the network.
        schema, standardization :
            How request rows are checked and encoded.
        metrics : mapping, optional
            Final evaluation metrics.
        privacy : mapping, optional
            ``delta``, ``epsilon_budget`` and ``epsilon_per_site``.
        extra : mapping, optional
            Anything else worth keeping (run id, strategy, rounds).
        signer : callable, optional
            Signs the manifest's bytes (the coordinator's Ed25519 key); the signature
            is written to ``manifest.sig``.
        """
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=folder))
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in weights.items()})
        (staging / WEIGHTS).write_bytes(buffer.getvalue())
        (staging / SCHEMA).write_text(schema.to_toml())
        (staging / PREPROCESSING).write_text(json.dumps(standardization.to_dict(), indent=2))
        files = {f: sha256_file(staging / f) for f in (WEIGHTS, SCHEMA, PREPROCESSING)}
        # Claim the next number by renaming; a concurrent writer makes us retry.
        while True:
            existing = [v.version for v in self.versions(name)]
            number = (max(existing) if existing else 0) + 1
            manifest = {
                "format": MANIFEST_FORMAT,
                "name": name,
                "version": number,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model": spec.to_dict(),
                "task": spec.task,
                "data_kind": schema.kind,
                "metrics": dict(metrics or {}),
                "privacy": dict(privacy or {}),
                "extra": dict(extra or {}),
                "files": files,
            }
            manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
            (staging / MANIFEST).write_bytes(manifest_bytes)
            if signer is not None:
                (staging / SIGNATURE).write_bytes(signer(manifest_bytes))
            target = folder / f"v{number:04d}"
            try:
                os.rename(staging, target)
            except OSError:
                if target.exists():
                    continue
                raise
            return self._read(target)

    @staticmethod
    def _read(path: Path) -> ModelVersion:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RegistryError(f"{path}: unreadable manifest ({err})") from err
        if manifest.get("format") != MANIFEST_FORMAT:
            raise RegistryError(f"{path}: manifest format is not {MANIFEST_FORMAT}")
        return ModelVersion(path=path, manifest=manifest)
