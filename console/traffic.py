"""The inference service's audit log, counted: requests per model, status and time.

The log (``server/inference/audit.py``) holds no feature, prediction or request id, so
neither does anything here: only counts.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from console.charts import Chart, Series

# Minutes while the log spans a few hours, hours beyond: a readable number of points.
MINUTE_BUCKETS_UP_TO_HOURS = 6
# The audit log's code of an answered request (server/inference/service.py writes it).
OK = "ok"


@dataclass(frozen=True)
class AuditRecord:
    """The fields of one audit line the console counts.

    Parameters
    ----------
    time : str
        UTC, ISO 8601, to the second.
    model : str
        The model the request named.
    version : int or None
        The version that answered (None when none did).
    status : int
        The HTTP status.
    code : str
        ``ok`` or the error code.
    """

    time: str
    model: str
    version: int | None
    status: int
    code: str


@dataclass(frozen=True)
class ModelTraffic:
    """Requests to one model.

    Parameters
    ----------
    model : str
        The model's name.
    total : int
        Its requests.
    by_code : dict of str to int
        Its requests per outcome (``ok`` or the error code, with the status).
    served_version : int or None
        The version of its last answered request: what the service serves, as far as
        the log knows.
    """

    model: str
    total: int
    by_code: dict[str, int]
    served_version: int | None


@dataclass(frozen=True)
class Traffic:
    """The audit log, counted.

    Parameters
    ----------
    source : str
        The log file ('' when none is configured).
    total : int
        Requests logged.
    unreadable : int
        Lines that are not audit records (skipped).
    models : list of ModelTraffic
        Per model.
    chart : Chart
        Requests per time bucket, one line per status.
    """

    source: str
    total: int
    unreadable: int
    models: list[ModelTraffic]
    chart: Chart


def parse_audit_line(line: bytes) -> AuditRecord | None:
    """The record of one audit line, or None when it is not one (cut short by a crash).

    Parameters
    ----------
    line : bytes
        One line of the log.
    """
    try:
        raw = json.loads(line)
        return AuditRecord(
            time=str(raw["time"]),
            model=str(raw["model"]),
            version=raw["version"],
            status=int(raw["status"]),
            code=str(raw["code"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


class AuditReader:
    """The audit log, read as it grows: each call parses only what was appended since.

    The service only appends to its log (``server/inference/audit.py``), so the records
    read before stay as they are; a new file at the path (rotated) or a shorter one is read
    again from its start, and a last line still without its newline waits for the next call.
    Every call still looks at the file itself: nothing is copied for the console.

    Parameters
    ----------
    path : Path or None
        The JSON-lines audit log; None or a missing file: no requests.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()  # the app answers requests in a thread pool
        self._file: tuple[int, int] | None = None  # (device, inode) read so far
        self._offset = 0
        self._records: list[AuditRecord] = []
        self._bad = 0

    def read(self) -> tuple[list[AuditRecord], int]:
        """The log's records and the number of lines that were not records."""
        with self._lock:
            try:
                handle = self.path.open("rb") if self.path is not None else None
            except FileNotFoundError:
                handle = None
            if handle is None:
                self._file, self._offset, self._records, self._bad = None, 0, [], 0
                return [], 0
            with handle:
                stat = os.fstat(handle.fileno())
                if (stat.st_dev, stat.st_ino) != self._file or stat.st_size < self._offset:
                    self._file, self._offset, self._records, self._bad = (
                        (stat.st_dev, stat.st_ino),
                        0,
                        [],
                        0,
                    )
                handle.seek(self._offset)
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]
            for line in complete.splitlines():
                record = parse_audit_line(line)
                if record is None:
                    self._bad += 1
                else:
                    self._records.append(record)
            self._offset += len(complete)
            return list(self._records), self._bad


def lines_from_end(path: Path, block: int = 1 << 16) -> Iterator[str]:
    """The file's non-empty lines, last first, read in blocks from its end.

    Parameters
    ----------
    path : Path
        A text file.
    block : int
        Bytes read at a time.
    """
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        head = b""  # the first, maybe partial, line of the block read last
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            lines = (handle.read(end - start) + head).split(b"\n")
            head = lines.pop(0)
            for line in reversed(lines):
                if line.strip():
                    yield line.decode("utf-8", errors="replace")
            end = start
        if head.strip():
            yield head.decode("utf-8", errors="replace")


def last_answered(path: Path | None, models: set[str]) -> dict[str, int]:
    """The version each of ``models`` was last answered with, reading the log from its end.

    The same answer as :func:`traffic`'s ``served_version``, without reading a long log
    through when every model's last answer is near its end.

    Parameters
    ----------
    path : Path or None
        The audit log; None or a missing file: no answers.
    models : set of str
        The model names wanted.
    """
    found: dict[str, int] = {}
    if path is None or not path.is_file():
        return found
    for line in lines_from_end(path):
        try:
            raw = json.loads(line)
            model, version, code = str(raw["model"]), raw["version"], str(raw["code"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash, or not ours
        if code == OK and version is not None and model in models and model not in found:
            found[model] = int(version)
            if found.keys() >= models:
                break
    return found


def _bucket_width(records: list[AuditRecord]) -> int:
    """Characters of the ISO time kept per bucket: minutes (16) or hours (13)."""
    hours = {r.time[:13] for r in records}
    return 16 if len(hours) <= MINUTE_BUCKETS_UP_TO_HOURS else 13


def traffic(log: AuditReader) -> Traffic:
    """Requests per model and outcome, and over time per status.

    Parameters
    ----------
    log : AuditReader
        The audit log.
    """
    records, bad = log.read()
    models = []
    for model in sorted({r.model for r in records}):
        mine = [r for r in records if r.model == model]
        answered = [r.version for r in mine if r.code == OK and r.version is not None]
        by_code = Counter(f"{r.status} {r.code}" for r in mine)
        served = answered[-1] if answered else None
        models.append(ModelTraffic(model, len(mine), dict(sorted(by_code.items())), served))
    width = _bucket_width(records)
    buckets = sorted({r.time[:width] for r in records})
    index = {b: i for i, b in enumerate(buckets)}
    series = []
    for status in sorted({r.status for r in records}):
        counts = Counter(index[r.time[:width]] for r in records if r.status == status)
        series.append(Series(str(status), [(float(i), float(counts[i])) for i in index.values()]))
    unit = "minute" if width == 16 else "hour"
    title = f"requests per {unit} by status"
    chart = Chart("requests", title, "time (UTC)", "requests", series, x_ticks=buckets)
    return Traffic(str(log.path or ""), len(records), bad, models, chart)
