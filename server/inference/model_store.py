"""The models the service answers with: verified, loaded, and swapped in when a new one lands.

For every model in the registry the store serves the newest version that passes
verification (or the version pinned for it). A background thread looks at the registry
every few seconds; a newly registered version is verified and loaded *beside* the one in
use and then swapped in with one reference assignment, so requests in flight finish on
the model they started with and none fails.

Verification (:func:`server.registry.verify_version_bytes`): the Ed25519 signature over
``manifest.json`` with the coordinator's public key, then every listed file's sha256, then
decryption of files encrypted at rest. The model is built from those verified bytes, never
by reading the folder again. A version that fails is refused with one log line naming the
reason, and the last good version keeps serving; it is looked at again only when its files
change.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.data.features import Standardization
from models.data.kinds.registry import parse_schema
from models.predictor import Predictor
from models.spec import ModelSpec
from privacy.signing import SignatureError, VerifyKey
from server.registry import (
    PREPROCESSING,
    SCHEMA,
    WEIGHTS,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    verify_version_bytes,
)

log = logging.getLogger("fedcare.inference")


@dataclass(frozen=True)
class ServedModel:
    """A verified, loaded model version.

    Parameters
    ----------
    name : str
        The model's name in the registry (and in the request path).
    version : int
        Its registry version.
    predictor : Predictor
        Checks request rows and computes predictions.
    manifest : dict
        The signed manifest it was built from.
    """

    name: str
    version: int
    predictor: Predictor
    manifest: dict[str, Any]


def _folder_stamp(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when any file of a version folder is replaced or edited."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return ()
    stamps = []
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            continue
        stamps.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(sorted(stamps))


def load_verified(
    version: ModelVersion, verify_key: VerifyKey, storage_key: bytes | None
) -> ServedModel:
    """Verify a registry version and build its model from the verified bytes.

    Raises :class:`SignatureError` (signature, checksum or decryption) or ``ValueError``
    (the signed contents do not make a model), each naming what failed.
    """
    verified = verify_version_bytes(version.path, verify_key, storage_key)
    manifest = verified.manifest
    try:
        schema = parse_schema(
            tomllib.loads(verified.files[SCHEMA].decode()), source=f"{version.path}/{SCHEMA}"
        )
        predictor = Predictor(
            spec=ModelSpec.from_dict(manifest["model"]),
            weights=ModelVersion(version.path, manifest).load_weights(verified.files[WEIGHTS]),
            schema=schema,
            standardization=Standardization.from_dict(json.loads(verified.files[PREPROCESSING])),
        )
    except Exception as err:  # the signed files are the coordinator's; say what broke
        raise ValueError(f"cannot build the model ({type(err).__name__}: {err})") from None
    return ServedModel(
        name=str(manifest["name"]),
        version=int(manifest["version"]),
        predictor=predictor,
        manifest=manifest,
    )


class ModelStore:
    """The served version of each model, kept up to date from a registry folder.

    Parameters
    ----------
    registry : path
        The model registry's root folder (what ``fedcare simulate`` writes).
    verify_key : VerifyKey
        The coordinator's model-signing public key.
    storage_key : bytes, optional
        The key of model files encrypted at rest.
    pins : mapping of str to int, optional
        Model name to the version to serve instead of the newest.
    poll_interval : float
        Seconds between looks at the registry.
    """

    def __init__(
        self,
        registry: str | Path,
        verify_key: VerifyKey,
        storage_key: bytes | None = None,
        pins: Mapping[str, int] | None = None,
        poll_interval: float = 2.0,
    ):
        self.registry = ModelRegistry(registry)
        self.verify_key = verify_key
        self.storage_key = storage_key
        self.pins = dict(pins or {})
        self.poll_interval = poll_interval
        self._served: dict[str, ServedModel] = {}
        self._refused: dict[Path, tuple[tuple[str, int, int], ...]] = {}
        self._missing_pins: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, name: str) -> ServedModel | None:
        """The model served under ``name``, or None."""
        return self._served.get(name)

    def served(self) -> dict[str, int]:
        """Model name to the version being served."""
        return {name: model.version for name, model in self._served.items()}

    def refresh(self) -> None:
        """Look at the registry once and swap in any newer version that verifies."""
        for name in sorted(set(self.registry.names()) | set(self.pins)):
            try:
                versions = self.registry.versions(name)
            except RegistryError as err:
                log.error("model %s: registry unreadable (%s)", name, err)
                continue
            current = self._served.get(name)
            if name in self.pins:
                pin = (name, self.pins[name])
                candidates = [v for v in versions if v.version == self.pins[name]]
                if not candidates and name not in self._missing_pins:
                    self._missing_pins.add(name)
                    log.error("model %s: pinned version %d is not in the registry", *pin)
            else:
                candidates = sorted(versions, key=lambda v: v.version, reverse=True)
            for version in candidates:
                if current is not None and version.version <= current.version:
                    break
                if self._try_load(name, version, current):
                    break

    def _try_load(self, name: str, version: ModelVersion, current: ServedModel | None) -> bool:
        stamp = _folder_stamp(version.path)
        if self._refused.get(version.path) == stamp:
            return False  # refused before and unchanged since
        try:
            model = load_verified(version, self.verify_key, self.storage_key)
            if model.name != name or model.version != version.version:
                raise SignatureError(
                    f"the signed manifest names {model.name} v{model.version}, "
                    f"not {name} v{version.version}"
                )
        except (SignatureError, ValueError) as err:
            self._refused[version.path] = stamp
            still = f"still serving v{current.version}" if current else "looking at older versions"
            log.error("REFUSED model %s v%d: %s; %s", name, version.version, err, still)
            return False
        self._served[name] = model  # one assignment: requests in flight keep their model
        self._refused.pop(version.path, None)
        log.info("serving model %s v%d (signature and sha256 verified)", name, model.version)
        return True

    def start(self) -> None:
        """Load what verifies now, then keep watching the registry in a daemon thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._watch, name="model-store", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except OSError as err:  # a registry on a flaky mount must not stop the watcher
                log.error("registry scan failed (%s); retrying", err)

    def stop(self) -> None:
        """Stop the watcher thread (waiting up to 5 s for it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
