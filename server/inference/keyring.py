"""The service's HPKE keys: one current key, older ones still accepted, retired ones gone.

A keyring is a folder::

    keyring.json          {"format": "fedcare-hpke-keyring/1",
                           "keys": [{"key_id": "<16 hex>", "created": "…Z",
                                     "state": "current" | "previous" | "retired"}]}
    <key_id>.pem          the X25519 private key (PKCS#8 PEM, mode 0600), for
                          current and previous keys only

Rotation (:func:`rotate`) makes a new current key and turns the old current key into a
previous one: it is still published and still opens requests, so clients holding a cached
key configuration keep working. Retiring (:func:`retire`) deletes the private key: the
service then answers ``unknown_key_id`` and clients fetch the configuration again.

The service re-reads the folder when ``keyring.json`` changes (:class:`Keyring`), so
rotation and retirement need no restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from privacy import hpke, pki
from protocol.inference import KeyConfiguration, PublishedKey

FORMAT = "fedcare-hpke-keyring/1"
INDEX = "keyring.json"
STATES = ("current", "previous", "retired")
log = logging.getLogger("fedcare.inference")


class KeyringError(ValueError):
    """A keyring folder is missing, malformed, or an operation on it is refused."""


@dataclass
class KeyEntry:
    """One key of the index: its id (hex), when it was made, and its state."""

    key_id: str
    created: str
    state: str


def _read_index(folder: Path) -> list[KeyEntry]:
    path = folder / INDEX
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        hint = "make one with `fedcare keys hpke-rotate`"
        raise KeyringError(f"{path}: no keyring ({hint})") from None
    except (OSError, ValueError) as err:
        raise KeyringError(f"{path}: unreadable keyring index ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise KeyringError(f"{path}: not a {FORMAT} index")
    try:
        entries = [KeyEntry(**item) for item in raw["keys"]]
    except (KeyError, TypeError) as err:
        raise KeyringError(f"{path}: malformed key entry ({err})") from None
    for entry in entries:
        if entry.state not in STATES:
            raise KeyringError(f"{path}: key {entry.key_id} has unknown state '{entry.state}'")
    return entries


def _write_index(folder: Path, entries: list[KeyEntry]) -> None:
    data = json.dumps({"format": FORMAT, "keys": [asdict(e) for e in entries]}, indent=2)
    pki.write_public(folder / INDEX, data.encode() + b"\n")


def rotate(folder: str | Path) -> KeyEntry:
    """Make a new current key (a new keyring if ``folder`` has none); return its entry."""
    folder = Path(folder)
    entries = _read_index(folder) if (folder / INDEX).exists() else []
    keypair = hpke.generate_keypair()
    pki.write_private_key(folder / f"{keypair.key_id.hex()}.pem", keypair.private_pem())
    for entry in entries:
        if entry.state == "current":
            entry.state = "previous"
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    new = KeyEntry(key_id=keypair.key_id.hex(), created=created, state="current")
    _write_index(folder, [*entries, new])
    return new


def retire(folder: str | Path, key_id: str) -> KeyEntry:
    """Retire a previous key: it is no longer published or accepted; its file is deleted."""
    folder = Path(folder)
    entries = _read_index(folder)
    matches = [e for e in entries if e.key_id == key_id]
    if not matches:
        raise KeyringError(f"{folder}: no key with id {key_id}")
    entry = matches[0]
    if entry.state == "current":
        raise KeyringError(f"key {key_id} is the current key; rotate first, then retire it")
    entry.state = "retired"
    _write_index(folder, entries)
    (folder / f"{key_id}.pem").unlink(missing_ok=True)
    return entry


def list_keys(folder: str | Path) -> list[KeyEntry]:
    """The index's entries, oldest first."""
    return _read_index(Path(folder))


@dataclass(frozen=True)
class LoadedKeys:
    """The usable keys of a keyring at one moment."""

    current: hpke.HpkeKeyPair
    by_id: dict[bytes, hpke.HpkeKeyPair]
    created: dict[bytes, str]

    def config(self) -> KeyConfiguration:
        """The published key configuration: the current key first, then the previous ones."""
        keys = [
            PublishedKey(
                key_id=key_id,
                public_key=keypair.public,
                status="current" if keypair is self.current else "previous",
                created=self.created[key_id],
            )
            for key_id, keypair in self.by_id.items()
        ]
        keys.sort(key=lambda k: k.status != "current")
        return KeyConfiguration(current_key_id=self.current.key_id, keys=tuple(keys))


def _load(folder: Path) -> LoadedKeys:
    entries = _read_index(folder)
    by_id: dict[bytes, hpke.HpkeKeyPair] = {}
    created: dict[bytes, str] = {}
    current = None
    for entry in entries:
        if entry.state == "retired":
            continue
        path = folder / f"{entry.key_id}.pem"
        try:
            keypair = hpke.keypair_from_pem(path.read_bytes())
        except OSError as err:
            raise KeyringError(f"{path}: cannot read key {entry.key_id} ({err.strerror})") from None
        except ValueError as err:
            raise KeyringError(f"{path}: {err}") from None
        if keypair.key_id.hex() != entry.key_id:
            found = keypair.key_id.hex()
            raise KeyringError(f"{path}: the key's id is {found}, not {entry.key_id}")
        by_id[keypair.key_id] = keypair
        created[keypair.key_id] = entry.created
        if entry.state == "current":
            current = keypair
    if current is None:
        raise KeyringError(f"{folder / INDEX}: no current key")
    return LoadedKeys(current=current, by_id=by_id, created=created)


class Keyring:
    """The keyring the service uses, re-read when its index changes on disk.

    Parameters
    ----------
    folder : path
        The keyring folder.
    reload_interval : float
        Seconds between checks of the index's modification time.
    """

    def __init__(self, folder: str | Path, reload_interval: float = 1.0):
        self.folder = Path(folder)
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        self._stamp = self._index_stamp()
        self._keys = _load(self.folder)
        self._checked = time.monotonic()

    def _index_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.folder / INDEX).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def keys(self) -> LoadedKeys:
        """The keys now; a broken index on disk keeps the last good keys in use."""
        now = time.monotonic()
        if now - self._checked >= self.reload_interval:
            with self._lock:
                self._checked = now
                stamp = self._index_stamp()
                if stamp != self._stamp:
                    try:
                        self._keys = _load(self.folder)
                        self._stamp = stamp
                        current = self._keys.current.key_id.hex()
                        log.info("keyring reloaded: current key %s", current)
                    except KeyringError as err:
                        log.error("keyring not reloaded (%s); the last good keys stay in use", err)
        return self._keys

    def find(self, key_id: bytes) -> hpke.HpkeKeyPair | None:
        """The key pair named by ``key_id``, or None if unknown or retired."""
        return self.keys().by_id.get(key_id)


def ensure_keyring(folder: str | Path) -> None:
    """Make a keyring with one key unless ``folder`` already holds one."""
    if not (Path(folder) / INDEX).exists():
        rotate(folder)
