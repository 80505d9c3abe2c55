"""What payload encryption costs: the encrypted path against plaintext, on the same service.

Starts one real `fedcare serve` on loopback with the benchmark-only plaintext mode on, so
both paths run in the same process with the same token, replay, validation, model and
audit work; only the HPKE seal/open and the response AES-GCM differ. A load client in
this process (threads, each with its own keep-alive SDK client) measures requests per
second and latency percentiles for 1 row and for 64 rows per request. The two modes are
interleaved in several short rounds, so a change in the machine's background load hits
both alike. Every request is built and sealed afresh (new request id, new response key),
as a real client would. Besides wall-clock throughput it reports the CPU time the service
process and the load client spend per request (from ``/proc``): on a machine shared with
other work, the service's CPU per request is the steadier measure of its capacity.

    .venv/bin/python benchmarks/inference_throughput.py [--seconds 2] [--rounds 8] [--tls]

The model is the Breast Cancer Wisconsin schema (30 numeric features) with an MLP; its
weights are untrained, which changes nothing for throughput. Results go to stdout and
``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sklearn.datasets import load_breast_cancer

from client.sdk import InferenceClient
from deploy import inference_service as launcher
from models.data.features import FeatureEncoder, Standardization
from models.data.kinds.registry import parse_schema
from models.families import build_model
from models.spec import ModelSpec, get_weights
from privacy import signing
from privacy.tokens import TokenStore
from server.inference.keyring import rotate
from server.registry import ModelRegistry

MODEL = "breast_cancer"


@dataclass(frozen=True)
class Measurement:
    """One mode and batch size: requests, seconds, throughput and latency percentiles."""

    mode: str
    rows: int
    requests: int
    seconds: float
    requests_per_second: float
    rows_per_second: float
    p50_ms: float
    p99_ms: float
    service_cpu_ms_per_request: float
    client_cpu_ms_per_request: float


def register_model(root: Path) -> tuple[Path, list[dict]]:
    """A signed breast-cancer MLP in ``root/registry``; return the registry and data rows."""
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.drop(columns=["target"])
    features = {name: {"type": "numeric"} for name in frame.columns}
    schema = parse_schema(
        {
            "dataset": {
                "name": MODEL,
                "task": "binary",
                "label": "target",
                "classes": ["malignant", "benign"],
            },
            "features": features,
        }
    )
    scale = Standardization(
        mean={c: float(frame[c].mean()) for c in frame.columns},
        std={c: float(frame[c].std()) for c in frame.columns},
    )
    spec = ModelSpec(
        kind="mlp",
        task="binary",
        input_dim=FeatureEncoder(schema, scale).input_dim,
        output_dim=1,
        options={"hidden": [32]},
    )
    signing.generate_signing_key(root / "coordinator.key")
    ModelRegistry(root / "registry").register(
        MODEL,
        get_weights(build_model(spec, seed=0)),
        spec,
        schema,
        scale,
        signer=signing.signer_from_file(root / "coordinator.key"),
    )
    return root / "registry", frame.to_dict(orient="records")


@dataclass
class Window:
    """What one measurement window saw: request latencies (s) and the CPU seconds the
    service process and this load-client process used meanwhile."""

    latencies: list[float]
    service_cpu: float
    client_cpu: float


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    url: str, token: str, ca: Path | None, batch: list[dict], plaintext: bool, seconds: float,
    threads: int, service_pid: int,
) -> Window:  # fmt: skip
    """The requests ``threads`` clients completed in a ``seconds`` window, and its CPU use.

    The window opens after every client has connected and fetched the key configuration.
    """
    completed: list[tuple[float, float]] = []  # (finished at, latency)
    errors: list[Exception] = []
    stop = threading.Event()
    lock = threading.Lock()

    def worker() -> None:
        with InferenceClient(
            url, token, MODEL, ca_cert=ca, plaintext_for_benchmark=plaintext
        ) as client:
            client.infer(batch)  # connection and (encrypted) key configuration
            mine = []
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    client.infer(batch)
                except Exception as err:  # noqa: BLE001 - reported below, never hidden
                    errors.append(err)
                    return
                finished = time.perf_counter()
                mine.append((finished, finished - started))
            with lock:
                completed.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    time.sleep(0.5)
    cpu_before = (process_cpu_seconds(service_pid), time.process_time())
    opened = time.perf_counter()
    time.sleep(seconds)
    closed = time.perf_counter()
    cpu_after = (process_cpu_seconds(service_pid), time.process_time())
    stop.set()
    for thread in pool:
        thread.join()
    if errors:
        raise RuntimeError(f"a benchmark request failed: {errors[0]!r}")
    return Window(
        latencies=[latency for finished, latency in completed if opened <= finished < closed],
        service_cpu=cpu_after[0] - cpu_before[0],
        client_cpu=cpu_after[1] - cpu_before[1],
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per round and mode")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per mode")
    parser.add_argument("--threads", type=int, default=4, help="concurrent load clients")
    parser.add_argument("--tls", action="store_true", help="over TLS (default: plain HTTP)")
    parser.add_argument("--out", type=Path, default=Path("fedcare-runs/bench-inference.json"))
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fedcare-bench-"))
    registry, rows = register_model(root)
    rotate(root / "keyring")
    token, _ = TokenStore(root / "tokens.json").create("bench", [MODEL], 1e9, 1e9)
    serve = ["--registry", str(registry), "--verify-key", str(root / "coordinator.pub")]
    serve += ["--keyring", str(root / "keyring"), "--tokens", str(root / "tokens.json")]
    serve += ["--audit-log", str(root / "audit.jsonl"), "--benchmark-plaintext"]
    serve += ["--log-level", "warning"]
    ca = None
    if args.tls:
        tls = signing.make_local_tls(root / "tls")
        serve += ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)]
        ca = tls.ca_cert
    else:
        serve += ["--insecure-http"]
    service = launcher.start_service(serve, root / "serve.log", ca_cert=ca)
    results: list[Measurement] = []
    try:
        for size in (1, 64):
            batch = rows[:size]
            collected: dict[str, list[Window]] = {"encrypted": [], "plaintext": []}
            for _ in range(args.rounds):
                for mode in collected:
                    collected[mode].append(
                        measure(
                            service.url, token, ca, batch, mode == "plaintext", args.seconds,
                            args.threads, service.process.pid,
                        )
                    )  # fmt: skip
            secs = args.seconds * args.rounds
            for mode, windows in collected.items():
                lat = [latency for w in windows for latency in w.latencies]
                service_cpu = sum(w.service_cpu for w in windows) * 1000 / len(lat)
                client_cpu = sum(w.client_cpu for w in windows) * 1000 / len(lat)
                results.append(
                    Measurement(
                        mode=mode,
                        rows=size,
                        requests=len(lat),
                        seconds=round(secs, 2),
                        requests_per_second=round(len(lat) / secs, 1),
                        rows_per_second=round(len(lat) * size / secs, 1),
                        p50_ms=round(statistics.median(lat) * 1000, 2),
                        p99_ms=round(percentile(lat, 0.99) * 1000, 2),
                        service_cpu_ms_per_request=round(service_cpu, 3),
                        client_cpu_ms_per_request=round(client_cpu, 3),
                    )
                )
    finally:
        service.stop()

    transport = "TLS" if args.tls else "plain HTTP"
    print(f"\nfedcare inference throughput, loopback, {transport}, {args.threads} client threads")
    print(
        f"{'rows':>4} {'mode':<10} {'req/s':>8} {'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'service CPU ms/req':>19} {'client CPU ms/req':>18}"
    )
    ratios, cpu_ratios = {}, {}
    for m in results:
        print(
            f"{m.rows:>4} {m.mode:<10} {m.requests_per_second:>8} {m.rows_per_second:>9} "
            f"{m.p50_ms:>8} {m.p99_ms:>8} {m.service_cpu_ms_per_request:>19} "
            f"{m.client_cpu_ms_per_request:>18}"
        )
    for size in (1, 64):
        enc, plain = (
            next(m for m in results if m.rows == size and m.mode == mode)
            for mode in ("encrypted", "plaintext")
        )
        ratios[size] = round(enc.requests_per_second / plain.requests_per_second, 3)
        # What the service could serve if it had its core to itself: 1 / CPU per request.
        cpu_ratios[size] = round(
            plain.service_cpu_ms_per_request / enc.service_cpu_ms_per_request, 3
        )
        aim = 0.85 if size == 1 else 0.95
        print(
            f"{size:>4} rows: encrypted/plaintext req/s {ratios[size]:.3f}, service "
            f"capacity (CPU per request) {cpu_ratios[size]:.3f}; aim {aim}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "transport": transport,
        "threads": args.threads,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "results": [asdict(m) for m in results],
        "throughput_ratio": ratios,
        "service_capacity_ratio": cpu_ratios,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
