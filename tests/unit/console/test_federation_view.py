"""The federation page's logic: sites matched to nodes by key, ε as last reported, and
versions encrypted at rest verified only with the registry's storage key."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from console.coordinator_app import CoordinatorConsole, CoordinatorSources, make_coordinator_app
from console.federation import (
    NEVER_CONNECTED,
    NO_SUPERLINK,
    NOT_PROVISIONED,
    NOT_REGISTERED,
    UNREACHABLE,
    federation_view,
    last_reported_epsilon,
    node_of_site,
    site_row,
)
from console.runs import RunSummary
from console.versions import NO_STORAGE_KEY, VERIFIED, version_rows
from deploy.nodes import SuperLinkNode
from deploy.process import free_loopback_port
from deploy.provision import provision
from privacy.signing import (
    generate_signing_key,
    generate_storage_key,
    load_storage_key,
    load_verify_key,
    signer_from_file,
)
from privacy.tokens import TokenStore
from server.inference.audit import AuditLog
from server.registry import encrypt_version_at_rest, sign_version
from tests.conftest import ward_registry


def _run(
    name: str,
    spent: dict[str, float],
    budget: float | None,
    remaining: dict[str, float] | None = None,
) -> RunSummary:
    return RunSummary(
        name=name,
        path=f"/runs/{name}",
        run_key=name,
        status="finished",
        rounds_done=1,
        rounds_total=1,
        dp=True,
        delta=1e-5,
        epsilon_budget=budget,
        epsilon_spent=spent,
        epsilon_remaining=remaining or {},
        final={},
        model=None,
        updated="",
    )


def _node(node_id: str, fp: str, status: str, registered: str = "2026-01-01") -> SuperLinkNode:
    return SuperLinkNode(
        node_id=node_id,
        name="",
        fingerprint=fp,
        status=status,
        registered_at=registered,
        activated_at="2026-01-02T00:00:00+00:00" if status != "registered" else "",
        deactivated_at="2026-01-03T00:00:00+00:00" if status == "offline" else "",
        last_heartbeat="2026-01-02T00:00:30+00:00" if status == "online" else "",
        heartbeat_interval=30.0,
    )


def test_each_site_has_the_epsilon_of_the_newest_run_it_took_part_in():
    runs = [  # newest first; b took no part in the newest run
        _run("deployed", {"a": 2.5}, None),
        _run("simulated", {"a": 0.5, "b": 0.75}, 1.0),
    ]
    eps = last_reported_epsilon(runs)
    assert (eps["a"].spent, eps["a"].left, eps["a"].run) == (2.5, None, "deployed")
    assert (eps["b"].spent, eps["b"].left, eps["b"].run) == (0.75, 0.25, "simulated")


def test_what_is_left_is_what_the_site_said_before_any_run_budget():
    runs = [_run("deployed", {"a": 2.5, "b": 1.0}, None, remaining={"a": 27.5})]
    eps = last_reported_epsilon(runs)
    assert eps["a"].left == 27.5  # the site's own lifetime budget, from its reply
    assert eps["b"].left is None  # a site whose reply did not say
    said = last_reported_epsilon([_run("sim", {"a": 0.5}, 1.0, remaining={"a": 9.5})])
    assert said["a"].left == 9.5


def test_a_site_is_its_current_node_with_its_key_not_a_removed_one_nor_anothers():
    nodes = [
        _node("1", "SHA256:a", "unregistered", "2026-01-01"),
        _node("2", "SHA256:a", "online", "2026-01-02"),
        _node("3", "SHA256:b", "offline"),
    ]
    assert node_of_site(nodes, "SHA256:a").node_id == "2"
    assert node_of_site(nodes[:1], "SHA256:a").node_id == "1"
    assert node_of_site(nodes, "SHA256:c") is None
    online = site_row("a", True, nodes[1], "", None)
    assert (online.status, online.last_seen, online.node_id) == (
        "online",
        "2026-01-02T00:00:30+00:00",
        "2",
    )
    offline = site_row("b", True, nodes[2], "", None)
    assert (offline.status, offline.last_seen) == ("offline", "2026-01-03T00:00:00+00:00")
    never = site_row("c", True, _node("4", "SHA256:c", "registered"), "", None)
    assert (never.status, never.last_seen, never.online_since) == (NEVER_CONNECTED, "", "")
    removed = site_row("a", True, nodes[0], "", None)
    assert removed.status == NOT_REGISTERED


def test_an_unreachable_superlink_is_said_so_at_once(tmp_path: Path):
    # provisioned for a port where nothing listens: the page answers, saying why
    provision("fed", ["a", "b"], tmp_path / "fed", port=free_loopback_port(), approved_apps=[])
    started = time.monotonic()
    view = federation_view(tmp_path / "fed" / "coordinator", [_run("r", {"x": 1.0}, 3.0)])
    assert time.monotonic() - started < 5
    assert view.federation == "fed" and view.superlink.startswith("SuperLink not reachable")
    by_name = {s.name: s for s in view.sites}
    assert by_name["a"].status == by_name["b"].status == UNREACHABLE
    assert by_name["x"].status == NOT_PROVISIONED and not by_name["x"].provisioned
    assert by_name["x"].epsilon is not None and by_name["x"].epsilon.left == 2.0
    plain = federation_view(None, [_run("r", {"x": 1.0}, None)])
    assert [(s.name, s.status) for s in plain.sites] == [("x", NO_SUPERLINK)]


def test_versions_encrypted_at_rest_verify_with_the_storage_key_only(
    tmp_path: Path, ward_schema_path: Path
):
    generate_signing_key(tmp_path / "signing.key")
    signer = signer_from_file(tmp_path / "signing.key")
    verify = load_verify_key(tmp_path / "signing.pub")
    registry = ward_registry(tmp_path / "registry", ward_schema_path, (0,))
    (version,) = registry.versions("ward")
    sign_version(version.path, signer)
    generate_storage_key(tmp_path / "storage.key")
    generate_storage_key(tmp_path / "other.key")
    encrypt_version_at_rest(version.path, load_storage_key(tmp_path / "storage.key"), signer)

    def state(storage_key: bytes | None) -> str:
        (row,) = version_rows([registry.root], verify, storage_key)
        return row.signature

    without = state(None)
    assert without.startswith("not verified") and NO_STORAGE_KEY in without
    assert state(load_storage_key(tmp_path / "storage.key")) == VERIFIED
    other = state(load_storage_key(tmp_path / "other.key"))
    assert "another storage key" in other and NO_STORAGE_KEY not in other

    store = TokenStore(tmp_path / "tokens.json")
    token, _ = store.create("ops", ["console"])
    sources = CoordinatorSources(
        tmp_path / "runs",
        registries=(registry.root,),
        verify_key=tmp_path / "signing.pub",
        storage_key=tmp_path / "storage.key",
    )
    http = TestClient(make_coordinator_app(sources, store))
    (row,) = http.get("/api/models", headers={"Authorization": f"Bearer {token}"}).json()[
        "versions"
    ]
    assert row["signature"] == VERIFIED


def test_served_versions_come_from_the_audit_log_when_the_service_does_not_answer(
    tmp_path: Path,
):
    AuditLog(tmp_path / "audit.jsonl").record("abcdefabcdef", "ward", 3, 2, 200, "ok", 1.0)
    url = f"https://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    sources = CoordinatorSources(tmp_path / "runs", audit_log=tmp_path / "audit.jsonl", service=url)
    serving = CoordinatorConsole(sources).serving({"ward"})
    assert serving.versions == {"ward": 3}
    said = "the audit log (last answered) (the inference service at"
    assert serving.source.startswith(f"{said} {url} did not say")
