"""SecAgg+ through the fedcare round loop, in one process: what the coordinator sees.

The real ServerApp pieces (``run_federation`` behind :class:`SecureAggregationGrid`) talk
to the real ClientApp (``client.app.app``, DP-SGD, ledgers) through a Grid that hands each
message straight to the addressed site and keeps a copy of every reply, i.e. of
everything that reaches the coordinator. The deployment over TLS is in
tests/e2e/test_deploy_loopback.py; here the point is the protocol's arithmetic and privacy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.supercore.task_identity import TaskIdentity

from privacy.budget import LAST_RELEASE, LAST_RELEASE_META
from privacy.ledger import PrivacyLedger
from protocol.federation import SECAGG_NEXT_SETUP
from server.federation.rounds import run_federation
from server.federation.secure_aggregation import SecureAggregationGrid, quantization_bound
from server.settings import RunSettings, SettingsError
from simulations.in_process import InProcessGrid
from simulations.prepare import prepare_simulation


class LocalGrid(InProcessGrid):
    """Delivers each message to the addressed site's ClientApp in this process.

    ``replies`` keeps every reply (what the coordinator receives); a node in ``dead``
    stops answering from SecAgg+'s masked-update stage on, as a SuperNode killed in the
    middle of a round would.
    """

    def __init__(self, node_configs: dict[int, dict]):
        """``node_configs``: each node id's ``--node-config`` (its site settings)."""
        super().__init__(node_configs)
        self.replies: list[Message] = []
        self.sent: list[tuple[str, str, bool]] = []  # (round, stage, carries a next set-up)
        self.dead: set[int] = set()

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            early = SECAGG_NEXT_SETUP in msg.content.config_records
            self.sent.append((msg.metadata.group_id, _stage(msg), early))
            if msg.metadata.dst_node_id in self.dead and _stage(msg) in ("masked", "unmask"):
                continue
            reply = self.deliver(msg)
            self.replies.append(reply)
            out.append(reply)
        return out


def _stage(msg: Message) -> str:
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return msg.metadata.message_type
    stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
    return {"collect_masked_vectors": "masked"}.get(stage, stage)


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> tuple[Path, RunSettings, dict[int, dict]]:
    # Messages take their run and sender from the process's task identity (one process
    # plays coordinator and sites here).
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    root = tmp_path_factory.mktemp("secagg")
    layout = prepare_simulation(RunSettings(sites=3, seed=3), root / "data")
    settings = RunSettings(
        mode="deployment",
        num_server_rounds=1,
        schema_path=str(layout.schema_path),
        test_path=str(layout.test_path),
        min_sites=2,
        secagg_max_weight=1000.0,
    )
    # Node ids as a SuperLink would hand them out: large, unordered.
    configs = {
        node: {**entry, "state-dir": str(root / "state" / entry["site-name"])}
        for node, entry in zip((9_001_337, 42, 77_000_001), layout.sites, strict=True)
    }
    return root, settings, configs


def _released(configs: dict[int, dict]) -> dict[str, tuple[dict[str, np.ndarray], float]]:
    """Each site's own update of the last round (kept in its state folder) and its rows."""
    out = {}
    for cfg in configs.values():
        state = Path(cfg["state-dir"])
        with np.load(state / LAST_RELEASE) as saved:
            weights = {k: saved[k] for k in saved.files}
        meta = json.loads((state / LAST_RELEASE_META).read_text())
        out[cfg["site-name"]] = (weights, meta["update"]["num_examples"])
    return out


def _weighted_mean(updates: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in updates)
    return {k: sum(w[k] * n for w, n in updates) / total for k in updates[0][0]}


def test_secagg_aggregate_matches_plain_aggregate_and_hides_each_update(sites):
    root, settings, configs = sites
    settings = RunSettings(**{**settings.to_dict(), "out_dir": str(root / "run-all")})
    assert settings.uses_secure_aggregation
    grid = LocalGrid(configs)
    outcome = run_federation(SecureAggregationGrid(grid, _context(), settings), settings)

    released = _released(configs)
    plain = _weighted_mean(list(released.values()))
    secure = outcome.model.load_weights()
    bound = quantization_bound(settings, [n for _, n in released.values()])
    errors = [float(np.max(np.abs(secure[k] - plain[k]))) for k in plain]
    assert max(errors) <= bound, (max(errors), bound)
    assert max(errors) > 0  # it went through quantization, not the plain path

    # What reached the coordinator from the sites: no arrays in any training reply, and
    # each masked vector is unrelated to that site's quantized update.
    train_replies = [r for r in grid.replies if r.metadata.message_type == "train"]
    assert train_replies and all(not r.has_error() for r in train_replies)
    levels = 2**settings.secagg_quantization_bits
    masked_values, quantized_values = [], []
    for reply in train_replies:
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        configs_record = reply.content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS not in configs_record:
            continue
        masked = np.concatenate(
            [np.ravel(bytes_to_ndarray(b)) for b in configs_record[Key.MASKED_PARAMETERS]]
        )
        site = next(c["site-name"] for n, c in configs.items() if n == reply.metadata.src_node_id)
        weights, n = released[site]
        factor = n / settings.secagg_max_weight
        update = np.concatenate([np.ravel(weights[k]) for k in sorted(weights)]) * factor
        quantized = (
            (update + settings.secagg_clipping_range)
            * levels
            / (2 * settings.secagg_clipping_range)
        )
        # masks are uniform over [0, 2^32): the masked values spread over that whole range
        assert masked.max() > levels * 64
        masked_values.append(masked[1 : 1 + len(quantized)])
        quantized_values.append(quantized)
    # Pooled over every reply: one reply's ~20 weights are too few values for a correlation
    # to tell (its spread under independence is 1/√n ≈ 0.2; pooled ≈ 0.13, so 0.5 is ~4σ).
    masked_all, quantized_all = np.concatenate(masked_values), np.concatenate(quantized_values)
    assert len(masked_all) >= 60
    assert abs(np.corrcoef(masked_all, quantized_all)[0, 1]) < 0.5

    # ε: what the report says each site spent is what each site's own ledger holds.
    spent = outcome.report["privacy"]["epsilon_spent"]
    for cfg in configs.values():
        ledger = PrivacyLedger(Path(cfg["state-dir"]), cfg["epsilon-budget"], cfg["delta"])
        assert spent[cfg["site-name"]] == pytest.approx(ledger.spent)


def test_secagg_round_survives_a_site_that_dies_after_sharing_keys(sites, tmp_path):
    _, settings, configs = sites
    configs = {n: {**c, "state-dir": str(tmp_path / c["site-name"])} for n, c in configs.items()}
    settings = RunSettings(**{**settings.to_dict(), "out_dir": str(tmp_path / "run")})
    grid = LocalGrid(configs)
    dead_node = next(iter(configs))
    grid.dead.add(dead_node)  # answers set-up and key sharing, then is gone
    outcome = run_federation(SecureAggregationGrid(grid, _context(), settings), settings)

    entry = outcome.report["history"][0]
    dead_site = configs[dead_node]["site-name"]
    assert entry["sites_trained"] == 2
    assert dead_site in entry["refused"]
    survivors = _released({n: c for n, c in configs.items() if n != dead_node})
    plain = _weighted_mean(list(survivors.values()))
    secure = outcome.model.load_weights()
    bound = quantization_bound(settings, [n for _, n in survivors.values()])
    assert max(float(np.max(np.abs(secure[k] - plain[k]))) for k in plain) <= bound


def test_robust_aggregators_are_refused_under_secure_aggregation():
    with pytest.raises(SettingsError, match="secure aggregation"):
        RunSettings(mode="deployment", schema_path="s.toml", strategy="krum")
    with pytest.raises(SettingsError, match="fedmedian"):
        RunSettings(strategy="fedmedian", secure_aggregation="on")
    # an explicit choice of robust aggregation over secure aggregation is allowed
    assert not RunSettings(
        mode="deployment", schema_path="s.toml", strategy="krum", secure_aggregation="off"
    ).uses_secure_aggregation


def _context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def test_later_rounds_take_their_setup_from_the_previous_unmasking(sites, tmp_path):
    _, settings, configs = sites
    configs = {n: {**c, "state-dir": str(tmp_path / c["site-name"])} for n, c in configs.items()}
    settings = RunSettings(
        **{**settings.to_dict(), "num_server_rounds": 3, "out_dir": str(tmp_path / "run")}
    )
    grid = LocalGrid(configs)
    outcome = run_federation(SecureAggregationGrid(grid, _context(), settings), settings)

    assert [e["sites_trained"] for e in outcome.report["history"]] == [3, 3, 3]
    assert [s[:2] for s in grid.sent if s[1] == "setup"] == [("1", "setup")] * 3  # round 1 only
    carries = [(s[0], s[2]) for s in grid.sent if s[1] == "unmask"]
    # rounds 1 and 2 send the next set-up with their unmasking; round 3 is the last
    assert carries == [("1", True)] * 3 + [("2", True)] * 3 + [("3", False)] * 3
    unmasking = [r for r in grid.replies if SECAGG_NEXT_SETUP in r.content.config_records]
    # the early keys are fresh: no site answers two set-ups with the same key
    keys = [
        bytes(r.content.config_records[SECAGG_NEXT_SETUP][Key.PUBLIC_KEY_1]) for r in unmasking[:6]
    ]
    assert len(set(keys)) == 6


def test_a_site_without_early_keys_gets_a_setup_of_its_own(sites, tmp_path):
    _, settings, configs = sites
    configs = {n: {**c, "state-dir": str(tmp_path / c["site-name"])} for n, c in configs.items()}
    settings = RunSettings(
        **{**settings.to_dict(), "num_server_rounds": 2, "out_dir": str(tmp_path / "run")}
    )
    grid = LocalGrid(configs)
    grid.dead.add(next(iter(configs)))  # no masked update, no unmasking: no early keys
    outcome = run_federation(SecureAggregationGrid(grid, _context(), settings), settings)

    assert [e["sites_trained"] for e in outcome.report["history"]] == [2, 2]
    setups = [s[:2] for s in grid.sent if s[1] == "setup"]
    assert setups == [("1", "setup")] * 3 + [("2", "setup")] * 3
