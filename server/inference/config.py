"""The inference service's settings, in one record.

`fedcare serve`'s options map onto it and take their defaults from it (cli/inference.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ServiceConfig:
    """Where the service's keys, tokens and models are, and its limits.

    Parameters
    ----------
    registry : path
        The model registry folder (``<run>/registry``).
    verify_key : path
        The coordinator's Ed25519 public key (PEM); only versions it signed are served.
    keyring : path
        The HPKE keyring folder (``fedcare keys hpke-rotate``).
    tokens : path
        The bearer-token store (``fedcare tokens create``).
    audit_log : path, optional
        JSON-lines audit file; None writes no audit.
    storage_key : path, optional
        Key file of model files encrypted at rest.
    pins : dict of str to int
        Model name to the version served instead of the newest.
    max_body_bytes : int
        Larger request bodies get 413.
    max_rows : int
        The most rows one request may carry.
    replay_window : float
        Seconds a request's timestamp may be off; ids are remembered that long.
    rate_per_second, burst : float
        Default per-token rate limit (a token's own limit overrides it).
    poll_interval : float
        Seconds between looks at the registry and the keyring.
    plaintext_payloads : bool
        BENCHMARK ONLY: also accept unencrypted ``application/json`` requests and answer
        them unencrypted, to measure what payload encryption costs.
    workers : int
        Threads that open, predict, explain and seal requests, off the event loop (health
        probes and key fetches keep answering while they work).
    explain_rate_per_second, explain_burst : float
        Per-token limit of requests that ask for attributions, apart from the request
        rate (an explanation costs ~128 forward and backward passes per row).
    he_max_body_bytes : int
        Larger homomorphic request bodies get 413 (a CKKS ciphertext is ~108 kB and
        holds 2048 / block patients: 64 of 30 features).
    he_context_ttl : float
        Seconds a client's public CKKS context stays cached after it was last sent.
    he_max_contexts : int
        The most public contexts cached; the oldest is dropped first.
    max_header_bytes : int
        The most bytes of request line and headers (uvicorn's
        ``h11_max_incomplete_event_size``; beyond it the parser answers 400 itself).
    max_headers : int
        The most header fields a request may have (431 beyond).
    """

    registry: Path
    verify_key: Path
    keyring: Path
    tokens: Path
    audit_log: Path | None = None
    storage_key: Path | None = None
    pins: dict[str, int] = field(default_factory=dict)
    max_body_bytes: int = 1 << 20
    max_rows: int = 256
    replay_window: float = 120.0
    rate_per_second: float = 50.0
    burst: float = 100.0
    poll_interval: float = 2.0
    plaintext_payloads: bool = False
    workers: int = 2
    explain_rate_per_second: float = 0.5
    explain_burst: float = 4.0
    he_max_body_bytes: int = 64 << 20
    he_context_ttl: float = 3600.0
    he_max_contexts: int = 1024
    max_header_bytes: int = 16 << 10
    max_headers: int = 64
