"""The model store without a server: newest or pinned version, refusals, swaps."""

from __future__ import annotations

import logging

import pytest

from privacy import signing
from server import registry
from server.inference.model_store import ModelStore
from tests.e2e.test_inference import make_federation


@pytest.fixture
def fed(tmp_path):
    fed = make_federation(tmp_path)
    fed.register(seed=1)  # v2
    return fed


def store(fed, **kwargs) -> ModelStore:
    return ModelStore(fed.registry, signing.load_verify_key(fed.verify_key), **kwargs)


def test_the_newest_version_or_the_pinned_one_is_served(fed):
    newest = store(fed)
    newest.refresh()
    assert newest.served() == {"ward": 2}
    pinned = store(fed, pins={"ward": 1})
    pinned.refresh()
    fed.register(seed=2)  # v3 does not move a pin
    pinned.refresh()
    assert pinned.served() == {"ward": 1}
    newest.refresh()
    assert newest.served() == {"ward": 3}


def test_a_refused_newest_version_falls_back_and_is_logged_once(fed, caplog):
    unsigned = fed.register(seed=2, sign=False)  # v3
    models = store(fed)
    with caplog.at_level(logging.ERROR, logger="fedcare.inference"):
        models.refresh()
        models.refresh()
    assert models.served() == {"ward": 2}
    refusals = [r.getMessage() for r in caplog.records if "REFUSED" in r.getMessage()]
    assert refusals == [
        "REFUSED model ward v3: the version is unsigned (no manifest.sig); "
        "looking at older versions"
    ]
    registry.sign_version(unsigned, signing.signer_from_file(fed.signing_key))
    models.refresh()  # changed files are looked at again
    assert models.served() == {"ward": 3}
