"""The model registry: versioned, checksummed, signed (and optionally encrypted) models.

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

``manifest.sig`` holds the raw 64-byte Ed25519 signature of ``manifest.json``'s exact
bytes, and the manifest lists the sha256 of every other file, so one signature covers the
whole version: :func:`verify_version_bytes` checks both before anything is loaded.
Optional encryption at rest (:func:`encrypt_version_at_rest`) replaces ``weights.npz`` by
``weights.npz.enc`` (AES-256-GCM) and re-signs the manifest, which then names the
encrypted file under ``at_rest``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.data.features import Standardization
from models.data.schema import SiteSchema
from models.spec import ModelSpec
from privacy import hpke
from privacy.signing import SignatureError, VerifyKey, verify_manifest

MANIFEST_FORMAT = "fedcare-model/1"
AT_REST_CIPHER = "AES-256-GCM"
ENCRYPTED_SUFFIX = ".enc"
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
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
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
        """The model's name (the schema's data set name)."""
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        """The version number (1, 2, …)."""
        return int(self.manifest["version"])

    @property
    def spec(self) -> ModelSpec:
        """How to rebuild the network."""
        return ModelSpec.from_dict(self.manifest["model"])

    @property
    def data_kind(self) -> str:
        """What the model takes: ``table``, ``image``, ``sequence`` or ``text``."""
        return str(self.manifest.get("data_kind", "table"))

    @property
    def signature_path(self) -> Path:
        """Where the manifest's signature is (or would be)."""
        return self.path / SIGNATURE

    def manifest_bytes(self) -> bytes:
        """The manifest's exact bytes, as signed."""
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
        """The federation's schema, as TOML text."""
        return (self.path / SCHEMA).read_text()

    def standardization(self) -> Standardization:
        """The federated feature scaling the model was trained with."""
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
        """The names of the models with at least one complete version, sorted."""
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


# ------------------------------------------- signatures and encryption at rest


@dataclass(frozen=True)
class VerifiedVersion:
    """Every byte of a version, read once, checked, and (if needed) decrypted.

    Build the model from these bytes, not by re-reading the folder: a file swapped
    after the check is then never used.
    """

    path: Path
    manifest: dict[str, Any]
    files: dict[str, bytes]  # plain file name -> plaintext bytes


def verify_version_bytes(
    path: str | Path,
    public_key: VerifyKey,
    storage_key: bytes | None = None,
    required: Sequence[str] = (WEIGHTS, "schema.toml", "preprocessing.json"),
) -> VerifiedVersion:
    """Check a registry version folder and return its verified contents.

    Checks, in order: the signature over ``manifest.json``'s bytes; that the manifest
    lists every ``required`` file (directly or, encrypted, under ``at_rest``); each
    listed file's sha256; then decrypts encrypted files with ``storage_key``.
    Raises :class:`SignatureError` with a message naming what failed.
    """
    path = Path(path)
    try:
        manifest_bytes = (path / MANIFEST).read_bytes()
    except OSError as err:
        raise SignatureError(f"{path}: cannot read {MANIFEST} ({err.strerror})") from None
    signature_path = path / SIGNATURE
    signature = signature_path.read_bytes() if signature_path.is_file() else None
    verify_manifest(public_key, manifest_bytes, signature, SIGNATURE)
    try:
        manifest = json.loads(manifest_bytes)
        listed: dict[str, str] = dict(manifest["files"])
    except (ValueError, KeyError, TypeError):
        raise SignatureError(f"{path}: the signed manifest has no 'files' table") from None
    at_rest = manifest.get("at_rest") or {}
    encrypted: dict[str, str] = dict(at_rest.get("files", {}))  # stored name -> plain name
    plain_names = {encrypted.get(name, name) for name in listed}
    missing = [name for name in required if name not in plain_names]
    if missing:
        raise SignatureError(f"{path}: the manifest does not list {missing}")
    files: dict[str, bytes] = {}
    for name, expected in listed.items():
        if "/" in name or name.startswith("."):
            raise SignatureError(f"{path}: the manifest lists an unsafe file name {name!r}")
        try:
            data = (path / name).read_bytes()
        except OSError:
            raise SignatureError(f"{path}: {name} is missing") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise SignatureError(f"{path}: {name} does not match its sha256 in the manifest")
        if name in encrypted:
            if storage_key is None:
                raise SignatureError(f"{path}: {name} is encrypted at rest and no key was given")
            if at_rest.get("key_id") not in (None, hpke.storage_key_id(storage_key)):
                raise SignatureError(f"{path}: {name} is encrypted with another storage key")
            try:
                data = hpke.open_at_rest(storage_key, data, encrypted[name].encode())
            except hpke.EnvelopeError:
                raise SignatureError(f"{path}: {name} does not decrypt with the key") from None
            files[encrypted[name]] = data
        else:
            files[name] = data
    return VerifiedVersion(path=path, manifest=manifest, files=files)


def sign_version(path: str | Path, signer: Callable[[bytes], bytes]) -> Path:
    """Sign an already registered version folder that has no ``manifest.sig`` yet.

    For registries written without a key (a researcher's simulation); a coordinator
    signs at registration instead. An existing signature is never replaced here: see
    :func:`resign_version`.
    """
    path = Path(path)
    if (path / SIGNATURE).exists():
        raise SignatureError(
            f"{path}: already signed; to replace its signature give the key that signed it "
            "(re-signing)"
        )
    return _write_signature(path, signer)


def resign_version(
    path: str | Path,
    signer: Callable[[bytes], bytes],
    previous_key: VerifyKey,
    storage_key: bytes | None = None,
) -> Path:
    """Replace a signed version's signature, after checking it under the key that made it.

    For a coordinator that moves to a new signing key: every file must still match the
    manifest, and the manifest its signature under ``previous_key``; only then is the
    manifest signed with ``signer`` (the same bytes: nothing else of the version
    changes). Raises :class:`SignatureError` naming what does not check out.

    Parameters
    ----------
    path : path
        The version folder.
    signer : callable
        The new key's signing function.
    previous_key : VerifyKey
        The public key the version is signed with now.
    storage_key : bytes, optional
        The key of files encrypted at rest (they are decrypted to be checked).
    """
    verify_version_bytes(path, previous_key, storage_key=storage_key)
    return _write_signature(Path(path), signer)


def _write_signature(path: Path, signer: Callable[[bytes], bytes]) -> Path:
    """Sign ``path``'s manifest and put the signature in place atomically."""
    tmp = path / (SIGNATURE + ".tmp")
    tmp.write_bytes(signer((path / MANIFEST).read_bytes()))
    os.replace(tmp, path / SIGNATURE)
    return path / SIGNATURE


def encrypt_version_at_rest(
    path: str | Path, storage_key: bytes, signer: Callable[[bytes], bytes]
) -> Path:
    """Encrypt a version's weights in place and re-sign its manifest.

    Do this before the service can see the folder (e.g. on a copy of the registry that
    is then moved into place): a reader during the swap sees a manifest that does not
    match its signature or files, refuses it, and retries when the files settle.
    """
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_bytes())
    if manifest.get("at_rest"):
        raise ValueError(f"{path}: already encrypted at rest")
    plain = (path / WEIGHTS).read_bytes()
    if hashlib.sha256(plain).hexdigest() != manifest["files"].get(WEIGHTS):
        raise ValueError(f"{path}: {WEIGHTS} does not match its sha256; refusing to encrypt")
    stored = WEIGHTS + ENCRYPTED_SUFFIX
    blob = hpke.seal_at_rest(storage_key, plain, WEIGHTS.encode())
    (path / stored).write_bytes(blob)
    files = {k: v for k, v in manifest["files"].items() if k != WEIGHTS}
    files[stored] = hashlib.sha256(blob).hexdigest()
    manifest["files"] = files
    manifest["at_rest"] = {
        "cipher": AT_REST_CIPHER,
        "key_id": hpke.storage_key_id(storage_key),
        "files": {stored: WEIGHTS},
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (path / (SIGNATURE + ".tmp")).write_bytes(signer(manifest_bytes))
    (path / (MANIFEST + ".tmp")).write_bytes(manifest_bytes)
    os.replace(path / (SIGNATURE + ".tmp"), path / SIGNATURE)
    os.replace(path / (MANIFEST + ".tmp"), path / MANIFEST)
    (path / WEIGHTS).unlink()
    return path
