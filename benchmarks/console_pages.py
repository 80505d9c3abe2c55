"""Page load time of the coordinator's console for a synthetic run of 100 rounds × 20 sites.

Writes a run folder as the round loop would (``report.json`` with 100 rounds, 20 sites'
ε, metrics and a few refusals), a registry with 5 signed versions and an audit log of
10,000 requests; provisions those 20 sites, starts a real SuperLink (TLS, SuperNode
authentication) with all 20 keys registered and 2 SuperNodes connected, starts the real
console (`fedcare console --dir …`, TLS, a console token) as a child on a loopback port,
and times each page and JSON route over HTTPS: the median and the 95th percentile of 20
loads, after one warm-up load. Goal: every page ≤ 300 ms.

Side by side, the federation page's SuperLink part both ways: the Control API asked
in-process (``deploy.nodes.list_nodes``, what the page does) against one
``flwr supernode list --format json`` process (what it did before), alternated.

    .venv/bin/python benchmarks/console_pages.py [--loads 20] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from console.launcher import start_console  # noqa: E402
from deploy.nodes import list_nodes  # noqa: E402
from deploy.process import ManagedProcess, free_loopback_port  # noqa: E402
from deploy.provision import provision  # noqa: E402
from deploy.superlink import CONNECTION, Coordinator, open_coordinator  # noqa: E402
from deploy.supernode import load_site_config, start_site  # noqa: E402
from models.data.features import Standardization  # noqa: E402
from models.data.kinds.registry import load_schema  # noqa: E402
from models.families import build_model  # noqa: E402
from models.spec import ModelSpec, get_weights  # noqa: E402
from privacy.signing import generate_signing_key, make_local_tls, signer_from_file  # noqa: E402
from privacy.tokens import TokenStore  # noqa: E402
from server.inference.audit import AuditLog  # noqa: E402
from server.registry import ModelRegistry  # noqa: E402
from server.settings import RunSettings  # noqa: E402
from simulations.loopback import fill_site_file  # noqa: E402

ROUNDS, SITES, VERSIONS, REQUESTS = 100, 20, 5, 10_000
CONNECTED = 2  # SuperNodes started (the other sites are registered, never connected)
LISTINGS = 5  # SuperLink listings timed each way
GOAL_MS = 300.0
SCHEMA = """
[dataset]
name = "synthetic"
task = "binary"
label = "outcome"
classes = ["0", "1"]

[features.age]
type = "numeric"
min = 0
max = 120
"""


SITE_NAMES = [f"hospital-{i:02d}" for i in range(SITES)]


def write_run(out: Path, registry: Path) -> None:
    sites = SITE_NAMES
    history = []
    for r in range(1, ROUNDS + 1):
        refused = (
            {sites[r % SITES]: "round would exceed the site's ε budget"} if r % 10 == 0 else {}
        )
        metrics = {"accuracy": 0.6 + 0.003 * r, "roc_auc": 0.7 + 0.002 * r, "f1": 0.5 + 0.004 * r}
        history.append(
            {
                "round": r,
                "wall_seconds": 2.0 + (r % 7) * 0.1,
                "sites_trained": SITES - len(refused),
                "train": {"loss": 1.0 / r},
                "federated_evaluation": {**metrics, "num-examples": 4000.0},
                "per_site_evaluation": {s: metrics for s in sites},
                "global_test": metrics,
                "epsilon": {s: 0.08 * r * (1 + i / 100) for i, s in enumerate(sites)},
                "refused": refused,
            }
        )
    settings = RunSettings(sites=SITES, num_server_rounds=ROUNDS, epsilon=10.0, out_dir=str(out))
    report = {
        "run": "synthetic0001",
        "settings": settings.to_dict(),
        "final": history[-1]["global_test"],
        "final_source": "global_test",
        "history": history,
        "privacy": {
            "dp": True,
            "delta": 1e-5,
            "epsilon_budget": 10.0,
            "epsilon_spent": history[-1]["epsilon"],
        },
        "model": {"name": "synthetic", "version": VERSIONS, "registry": str(registry)},
        "plot": str(out / "report.png"),
    }
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))


def write_registry(registry: Path, signing_key: Path, schema_path: Path) -> None:
    schema = load_schema(schema_path)
    spec = ModelSpec(kind="mlp", task="binary", input_dim=1, output_dim=1, options={"hidden": [32]})
    weights = get_weights(build_model(spec, seed=0))
    for v in range(VERSIONS):
        ModelRegistry(registry).register(
            name="synthetic",
            weights=weights,
            spec=spec,
            schema=schema,
            standardization=Standardization({"age": 50.0}, {"age": 15.0}),
            metrics={"accuracy": 0.8 + v / 100, "roc_auc": 0.85 + v / 100},
            privacy={"delta": 1e-5, "epsilon_budget": 10.0, "epsilon_per_site": {"a": 1.0}},
            extra={"run": "synthetic0001"},
            signer=signer_from_file(signing_key),
        )


def write_audit(path: Path) -> None:
    log = AuditLog(path)
    for i in range(REQUESTS):
        ok = i % 20 != 0
        log.record(
            "abcdefabcdef",
            "synthetic",
            VERSIONS if ok else None,
            4,
            200 if ok else 429,
            "ok" if ok else "rate_limited",
            3.0,
        )
    log.close()


def start_superlink(work: Path) -> tuple[Coordinator, list[ManagedProcess]]:
    """Provision the run's sites, start the SuperLink, register all, connect CONNECTED."""
    fed = work / "fed"
    provision("bench", SITE_NAMES, fed, port=free_loopback_port(), approved_apps=[])
    coordinator = open_coordinator(fed / "coordinator", host="127.0.0.1")
    coordinator.start()
    nodes: list[ManagedProcess] = []
    try:
        coordinator.register_sites()
        for site in SITE_NAMES[:CONNECTED]:
            site_toml = fed / "sites" / site / "site.toml"
            # no data: a SuperNode connects without reading it (no run is sent here)
            fill_site_file(site_toml, work / "none.csv", work / "schema.toml", free_loopback_port())
            nodes.append(start_site(load_site_config(site_toml), warm=False))
        coordinator.wait_nodes_online(CONNECTED, timeout=300)
    except BaseException:
        for node in nodes:
            node.stop()
        coordinator.stop()
        raise
    return coordinator, nodes


def time_listings(coordinator: Coordinator) -> dict[str, float]:
    """The SuperLink's nodes via the Control API in-process vs a `flwr` process, alternated."""
    api, cli = [], []
    for _ in range(LISTINGS):
        t0 = time.perf_counter()
        assert len(list_nodes(coordinator).nodes) == SITES
        api.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        assert len(coordinator.flwr_json("supernode", "list", CONNECTION)["nodes"]) == SITES
        cli.append((time.perf_counter() - t0) * 1000)
    return {
        "control_api_median_ms": round(statistics.median(api), 1),
        "flwr_cli_median_ms": round(statistics.median(cli), 1),
        "cli_over_api": round(statistics.median(cli) / statistics.median(api), 1),
    }


def time_route(client: httpx.Client, url: str, loads: int) -> dict[str, float]:
    client.get(url).raise_for_status()  # warm-up: imports, first TLS session
    times = []
    for _ in range(loads):
        t0 = time.perf_counter()
        client.get(url).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
        "max_ms": round(times[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        work = Path(tmp)
        generate_signing_key(work / "signing.key")
        (work / "schema.toml").write_text(SCHEMA)
        registry = work / "runs" / "synthetic-100x20" / "registry"
        write_run(work / "runs" / "synthetic-100x20", registry)
        write_registry(registry, work / "signing.key", work / "schema.toml")
        write_audit(work / "audit.jsonl")
        tls = make_local_tls(work / "tls")
        token, _ = TokenStore(work / "tokens.json").create("bench", ["console"])
        coordinator, supernodes = start_superlink(work)
        console = start_console(
            [
                "console",
                "--runs",
                str(work / "runs"),
                "--verify-key",
                str(work / "signing.pub"),
                "--audit-log",
                str(work / "audit.jsonl"),
                "--dir",
                str(work / "fed" / "coordinator"),
                "--tokens",
                str(work / "tokens.json"),
                "--tls-cert",
                str(tls.server_cert),
                "--tls-key",
                str(tls.server_key),
            ],
            work / "console.log",
            tls.ca_cert,
        )
        routes = [
            "/",
            "/api/federation",
            "/runs",
            "/runs/synthetic-100x20",
            "/api/runs/synthetic-100x20",
            "/models",
            "/api/models",
            "/inference",
            "/api/inference",
        ]
        try:
            verify = ssl.create_default_context(cafile=str(tls.ca_cert))
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=console.url, verify=verify, headers=headers) as client:
                federation = client.get("/api/federation").json()
                figures = {route: time_route(client, route, args.loads) for route in routes}
            listings = time_listings(coordinator)
        finally:
            console.stop()
            for node in supernodes:
                node.stop()
            coordinator.stop()
    states = [site["status"] for site in federation["sites"]]
    load = os.getloadavg()
    worst = max(f["p95_ms"] for f in figures.values())
    result = {
        "run": {"rounds": ROUNDS, "sites": SITES, "versions": VERSIONS, "audit_requests": REQUESTS},
        "superlink": {"registered": SITES, "online": states.count("online"), **listings},
        "loads_per_route": args.loads,
        "load_average": [round(x, 2) for x in load],
        "cpus": os.cpu_count(),
        "goal_ms": GOAL_MS,
        "worst_p95_ms": worst,
        "meets_goal": worst <= GOAL_MS,
        "routes": figures,
    }
    print(f"console pages, {ROUNDS} rounds × {SITES} sites, {args.loads} loads each over HTTPS")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    for route, f in figures.items():
        print(f"  {route:32s} median {f['median_ms']:7.1f} ms  p95 {f['p95_ms']:7.1f} ms")
    print(
        f"SuperLink: {SITES} registered, {states.count('online')} online on the page; "
        f"listing via Control API {listings['control_api_median_ms']:.1f} ms vs flwr CLI "
        f"{listings['flwr_cli_median_ms']:.1f} ms (CLI ÷ API {listings['cli_over_api']:.1f})"
    )
    print(
        f"worst p95 {worst:.1f} ms: "
        f"{'meets' if worst <= GOAL_MS else 'misses'} the {GOAL_MS:.0f} ms goal"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "console_pages.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
