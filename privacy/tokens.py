"""Bearer tokens of clinical applications: stored hashed, scoped to models.

A token reads ``fct_<id>_<secret>``: ``id`` is 12 hex characters (public, it names the
token in the audit log) and ``secret`` 43 base64url characters (32 random bytes). The
store keeps only the SHA-256 of the whole token, so a leaked store grants nothing; a
token is shown once, when it is made.

Scopes are model names, or ``*`` for every model; ``console`` lets a token read the
federation console, which ``*`` does not include (an application's token reads no
console). Each token may carry its own rate limit (requests per second and burst);
otherwise the service's default applies.

Store file (JSON, mode 0600)::

    {"format": "fedcare-tokens/1",
     "tokens": [{"id": "…", "name": "ward-app", "sha256": "…", "scopes": ["breast_cancer"],
                 "created": "2025-01-01T00:00:00Z", "revoked": false,
                 "rate_per_second": null, "burst": null}]}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FORMAT = "fedcare-tokens/1"
PREFIX = "fct"
CONSOLE_SCOPE = "console"
_TOKEN = re.compile(r"^fct_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_SCOPE = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,127})$")
log = logging.getLogger("fedcare.inference")


class TokenError(ValueError):
    """A token store is malformed or an operation on it is refused."""


@dataclass
class TokenRecord:
    """A stored token: everything but the token itself."""

    id: str
    name: str
    sha256: str
    scopes: list[str]
    created: str
    revoked: bool = False
    rate_per_second: float | None = None
    burst: float | None = None

    def allows(self, model: str) -> bool:
        """Whether the token's scopes include ``model`` (or ``*``)."""
        return "*" in self.scopes or model in self.scopes

    def allows_console(self) -> bool:
        """Whether the token may read the console: only an explicit ``console`` scope."""
        return CONSOLE_SCOPE in self.scopes

    def public(self) -> dict[str, Any]:
        """What ``tokens list`` shows (no hash)."""
        out = asdict(self)
        out.pop("sha256")
        return out


def hash_token(token: str) -> str:
    """The hex SHA-256 of the whole token, as the store keeps it.

    Parameters
    ----------
    token : str
        The token as the application sends it.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_token_id(token: str) -> str | None:
    """The id part of a well-formed token, or None."""
    match = _TOKEN.match(token)
    return match.group(1) if match else None


class TokenStore:
    """A token file, re-read when it changes on disk (so ``tokens create`` needs no restart).

    Parameters
    ----------
    path : path
        The JSON store; created by :meth:`create` if missing.
    reload_interval : float
        Seconds between checks of the file's modification time.
    """

    def __init__(self, path: str | Path, reload_interval: float = 1.0):
        self.path = Path(path)
        self.reload_interval = reload_interval
        self._records: dict[str, TokenRecord] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._load()

    # ------------------------------------------------------------------ file

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _load(self) -> None:
        stamp = self._file_stamp()
        if stamp is None:
            self._records, self._stamp = {}, None
            return
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            raise TokenError(f"{self.path}: unreadable token store ({err})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise TokenError(f"{self.path}: not a {FORMAT} token store")
        records = {}
        for item in raw.get("tokens", []):
            try:
                record = TokenRecord(**item)
            except TypeError as err:
                raise TokenError(f"{self.path}: malformed token entry ({err})") from None
            records[record.id] = record
        self._records, self._stamp = records, stamp

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.reload_interval:
            return
        with self._lock:
            self._checked = now
            if self._file_stamp() != self._stamp:
                try:
                    self._load()
                except TokenError as err:  # writes are atomic; this is a damaged file
                    log.error("token store not reloaded (%s); the last good one stays in use", err)

    def _save(self) -> None:
        data = {"format": FORMAT, "tokens": [asdict(r) for r in self._records.values()]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, self.path)
        self._stamp = self._file_stamp()

    # ------------------------------------------------------------ operations

    def create(
        self,
        name: str,
        scopes: list[str],
        rate_per_second: float | None = None,
        burst: float | None = None,
    ) -> tuple[str, TokenRecord]:
        """Make a token; return (the token, shown only now, its record).

        Parameters
        ----------
        name : str
            Who the token is for (an application), shown in listings.
        scopes : list of str
            Model names the token may use, or ``*`` for all.
        rate_per_second, burst : float, optional
            The token's own rate limit; the service's default otherwise.
        """
        if not scopes:
            raise TokenError("a token needs at least one scope (a model name or '*')")
        for scope in scopes:
            if not _SCOPE.match(scope):
                raise TokenError(f"scope {scope!r} is not a model name or '*'")
        if rate_per_second is not None and rate_per_second <= 0:
            raise TokenError("rate_per_second must be positive")
        with self._lock:
            self._load()
            token_id = secrets.token_hex(6)
            while token_id in self._records:
                token_id = secrets.token_hex(6)
            token = f"{PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
            record = TokenRecord(
                id=token_id,
                name=name,
                sha256=hash_token(token),
                scopes=list(scopes),
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                rate_per_second=rate_per_second,
                burst=burst,
            )
            self._records[token_id] = record
            self._save()
        return token, record

    def revoke(self, token_id: str) -> TokenRecord:
        """Mark the token ``token_id`` revoked; services refuse it at their next reload."""
        with self._lock:
            self._load()
            if token_id not in self._records:
                raise TokenError(f"no token with id {token_id!r}")
            record = self._records[token_id]
            record.revoked = True
            self._save()
        return record

    def list(self) -> list[TokenRecord]:
        """Every stored token's record."""
        self._maybe_reload()
        return list(self._records.values())

    def authenticate(self, token: str) -> TokenRecord | None:
        """The record of a valid, unrevoked token, or None (constant-time hash compare)."""
        self._maybe_reload()
        token_id = parse_token_id(token)
        if token_id is None:
            return None
        record = self._records.get(token_id)
        if record is None or record.revoked:
            return None
        if not hmac.compare_digest(record.sha256, hash_token(token)):
            return None
        return record


class RateLimiter:
    """A token bucket per token id: ``rate`` requests per second, up to ``burst`` at once.

    Parameters
    ----------
    rate, burst : float
        The defaults for tokens without a limit of their own.
    """

    def __init__(self, rate: float, burst: float):
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(
        self, key: str, rate: float | None = None, burst: float | None = None
    ) -> float | None:
        """None if ``key``'s request may pass now; otherwise the seconds to wait.

        ``rate`` and ``burst`` override the defaults for this key (a token's own limit).
        """
        rate = rate or self.rate
        burst = burst or self.burst
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (burst, now))
            level = min(burst, level + (now - last) * rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                return None
            self._buckets[key] = (level, now)
            return (1.0 - level) / rate
