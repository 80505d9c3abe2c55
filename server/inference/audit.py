"""The audit log: one JSON line per inference request, and nothing a patient could be found in.

Fields: ``time`` (UTC, ISO 8601), ``token_id``, ``model``, ``version``, ``rows``,
``status`` (HTTP), ``code`` (the error code, or ``ok``) and ``latency_ms``. Never a
feature, a prediction, a request id or any other plaintext from inside an envelope; the
fields are fixed by :meth:`AuditLog.record`'s signature, so nothing else can slip in.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TextIO


class AuditLog:
    """Appends audit records to a JSON-lines file (or nowhere when ``path`` is None).

    Parameters
    ----------
    path : path, optional
        The file; created if missing, appended to otherwise.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def record(
        self,
        token_id: str | None,
        model: str,
        version: int | None,
        rows: int,
        status: int,
        code: str,
        latency_ms: float,
    ) -> None:
        """Write one request's record (``token_id`` None: no valid token was shown)."""
        if self._file is None:
            return
        line = json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "token_id": token_id,
                "model": model,
                "version": version,
                "rows": rows,
                "status": status,
                "code": code,
                "latency_ms": round(latency_ms, 3),
            },
            separators=(",", ":"),
        )
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the log file; later records are dropped."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
