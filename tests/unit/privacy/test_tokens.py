"""Bearer tokens: stored hashed, scoped, revocable, re-read from disk, rate-limited."""

from __future__ import annotations

import json
import time

import pytest

from privacy.tokens import RateLimiter, TokenError, TokenStore


def test_tokens_are_stored_hashed_and_authenticate(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    token, record = store.create("ward-app", ["ward"])
    assert token.startswith(f"fct_{record.id}_")
    text = (tmp_path / "tokens.json").read_text()
    assert token not in text and token.split("_", 2)[2] not in text  # the secret part
    assert (tmp_path / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert store.authenticate(token).id == record.id
    assert store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.authenticate("fct_short") is None and store.authenticate("") is None
    assert record.allows("ward") and not record.allows("oncology")
    assert "sha256" not in record.public()


def test_scopes_are_checked_and_revocation_and_new_tokens_reach_a_running_store(tmp_path):
    path = tmp_path / "tokens.json"
    service_view = TokenStore(path, reload_interval=0.0)
    operator = TokenStore(path)
    token, record = operator.create("admin", ["*"])
    assert service_view.authenticate(token) is not None  # re-read without restart
    assert record.allows("anything")
    operator.revoke(record.id)
    assert service_view.authenticate(token) is None
    with pytest.raises(TokenError, match="no token with id"):
        operator.revoke("000000000000")
    with pytest.raises(TokenError, match="at least one scope"):
        operator.create("x", [])
    with pytest.raises(TokenError, match="is not a model name"):
        operator.create("x", ["../etc"])


def test_a_malformed_store_is_refused_by_name(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(TokenError, match="not a fedcare-tokens/1 token store"):
        TokenStore(path)


def test_rate_limiter_allows_the_burst_then_the_rate():
    limiter = RateLimiter(rate=10.0, burst=3.0)
    assert [limiter.acquire("a") for _ in range(3)] == [None, None, None]
    wait = limiter.acquire("a")
    assert wait is not None and 0 < wait <= 0.1
    assert limiter.acquire("b") is None  # per token
    time.sleep(0.12)
    assert limiter.acquire("a") is None
    assert limiter.acquire("c", rate=1.0, burst=1.0) is None
    assert limiter.acquire("c", rate=1.0, burst=1.0) is not None
