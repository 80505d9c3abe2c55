"""What payload encryption costs: sealed against plaintext, worker threads, and CKKS.

Starts real `fedcare serve` processes on loopback with the benchmark-only plaintext mode
on, so that both paths run in the same process with the same token, replay, validation,
model and audit work; only the HPKE seal/open and the response AES-GCM differ. Three
measurements, in one run:

1. **Sealed against plaintext.** A load client in this process (threads, each with its
   own keep-alive SDK client) measures requests per second and latency percentiles for 1
   row and for 64 rows per request. The two modes are interleaved in several short
   rounds, so that a change in the machine's background load hits both alike. Every
   request is built and sealed afresh (new request id, new response key), as a real
   client would.
2. **Worker threads.** The same sealed load against a second service started with
   ``--workers 1``, interleaved round by round with the first (``--workers 2``).
3. **Homomorphic (CKKS) inference** of a logistic regression on the same 30 features, one
   request at a time (each is CPU-bound on both sides), for 1 patient and for batches of
   256 and 4096 patients per request (in the layout the SDK picks: blocks of 32 slots, 64
   patients per ciphertext, for 1 and 256; a ciphertext per feature column of 2048
   patients for 4096; ``privacy/he.py``; ciphertexts as raw parts of a binary frame
   inside HPKE, the reply rescaled to one prime): wall-clock ms per patient, the client's
   CPU for encryption, decryption and in all, the service's CPU, the bytes each way; each
   request followed by the same patients through the sealed route (the baseline, and the
   predictions the HE ones are checked against). Beside it, both layouts for 256 and
   4096 patients computed in this process (CPU of the CKKS steps only), to show the
   choice.

Besides wall-clock figures it reports the CPU time the service process and the load
client spend per request (from ``/proc``): on a machine shared with other work, the
service's CPU per request is the steadier measure of its capacity. The load average is
recorded beside every section, since wall-clock figures depend on it.

    .venv/bin/python benchmarks/inference_throughput.py [--seconds 2] [--rounds 8] [--tls]

The models are on the Breast Cancer Wisconsin schema (30 numeric features): an MLP for
sections 1 and 2, a logistic regression for section 3; their weights are untrained, which
changes nothing for throughput. Results go to stdout, ``--out`` (JSON) and the Markdown
file beside it.
"""

from __future__ import annotations

import argparse
import itertools
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
from privacy import he, signing
from privacy.tokens import TokenStore
from server.inference.keyring import rotate
from server.registry import ModelRegistry

MODEL = "breast_cancer"
LINEAR = "breast_cancer_linear"
RESULTS = Path(__file__).resolve().parent / "results" / "inference_throughput.json"
# Goals the figures are reported against.
GOAL_SEALED_RATIO_1_ROW = 0.9
GOAL_HE_MS_ONE_PATIENT = 10.0
GOAL_HE_MS_PER_PATIENT_BATCHED = 0.1


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


@dataclass(frozen=True)
class HeMeasurement:
    """Homomorphic requests of one batch size, one at a time; means per request."""

    patients: int
    layout: str
    ciphertexts: int
    requests: int
    wall_ms_per_request: float
    wall_ms_p50: float
    wall_ms_per_patient: float
    client_encrypt_cpu_ms: float
    client_decrypt_cpu_ms: float
    client_cpu_ms: float
    client_cpu_ms_per_patient: float
    service_cpu_ms: float
    service_cpu_ms_per_patient: float
    request_mb: float
    response_mb: float
    max_abs_error: float
    sealed_wall_ms_p50: float
    sealed_client_cpu_ms: float
    sealed_service_cpu_ms: float
    he_over_sealed_p50: float


def register_models(root: Path) -> tuple[Path, list[dict]]:
    """A signed breast-cancer MLP and logistic regression in ``root/registry``; return
    the registry and the data rows."""
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
    dim = FeatureEncoder(schema, scale).input_dim
    signing.generate_signing_key(root / "coordinator.key")
    signer = signing.signer_from_file(root / "coordinator.key")
    registry = ModelRegistry(root / "registry")
    mlp = ModelSpec(
        kind="mlp", task="binary", input_dim=dim, output_dim=1, options={"hidden": [32]}
    )
    linear = ModelSpec(kind="logreg", task="binary", input_dim=dim, output_dim=1)
    for name, spec in ((MODEL, mlp), (LINEAR, linear)):
        weights = get_weights(build_model(spec, seed=0))
        registry.register(name, weights, spec, schema, scale, signer=signer)
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


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


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


def summarize(mode: str, size: int, windows: list[Window], seconds: float) -> Measurement:
    """One :class:`Measurement` of the windows of one mode and batch size."""
    lat = [latency for w in windows for latency in w.latencies]
    secs = seconds * len(windows)
    return Measurement(
        mode=mode,
        rows=size,
        requests=len(lat),
        seconds=round(secs, 2),
        requests_per_second=round(len(lat) / secs, 1),
        rows_per_second=round(len(lat) * size / secs, 1),
        p50_ms=round(statistics.median(lat) * 1000, 2),
        p99_ms=round(percentile(lat, 0.99) * 1000, 2),
        service_cpu_ms_per_request=round(sum(w.service_cpu for w in windows) * 1000 / len(lat), 3),
        client_cpu_ms_per_request=round(sum(w.client_cpu for w in windows) * 1000 / len(lat), 3),
    )


class TimedSecretContext(he.SecretContext):
    """A client CKKS context that adds up the CPU seconds of its encryptions and
    decryptions (this process is single-threaded while it runs), and keeps the sizes of
    the last request's and reply's ciphertexts."""

    def __init__(self) -> None:
        super().__init__()
        self.encrypt_cpu = 0.0
        self.decrypt_cpu = 0.0
        self.sent: list[int] = []
        self.received = 0
        self.layout = ""

    def encrypt_rows(self, rows, layout=he.BLOCKS):
        started = time.process_time()
        try:
            out = super().encrypt_rows(rows, layout)
            self.sent, self.layout = [len(c) for c in out], layout
            return out
        finally:
            self.encrypt_cpu += time.process_time() - started

    def decrypt_scores(self, ciphertexts, rows, block, layout=he.BLOCKS):
        started = time.process_time()
        self.received = sum(len(c) for c in ciphertexts)
        try:
            return super().decrypt_scores(ciphertexts, rows, block, layout)
        finally:
            self.decrypt_cpu += time.process_time() - started


@dataclass
class Timed:
    """Requests of one kind, one at a time: their wall-clock seconds and the CPU seconds
    the service process and this process spent on them."""

    walls: list[float]
    client_cpu: float = 0.0
    service_cpu: float = 0.0

    def run(self, call, service_pid: int):
        """Make one request with ``call()``, timed; return what it returned."""
        cpu_before = (process_cpu_seconds(service_pid), time.process_time())
        started = time.perf_counter()
        result = call()
        self.walls.append(time.perf_counter() - started)
        self.service_cpu += process_cpu_seconds(service_pid) - cpu_before[0]
        self.client_cpu += time.process_time() - cpu_before[1]
        return result


def measure_he(
    url: str, token: str, ca: Path | None, rows: list[dict], requests: int, service_pid: int
) -> HeMeasurement:
    """``requests`` homomorphic requests of ``len(rows)`` patients, one after the other,
    after one that sends the context and is not counted; each followed by the same rows
    through the sealed route of the same model (the baseline), whose predictions the HE
    ones are checked against."""
    patients = len(rows)
    homomorphic, sealed = Timed([]), Timed([])
    with (
        InferenceClient(url, token, LINEAR, ca_cert=ca, mode="he", timeout=300) as client,
        InferenceClient(url, token, LINEAR, ca_cert=ca, timeout=300) as plain,
    ):
        timed = client._he = TimedSecretContext()  # the SDK makes one on first use otherwise
        expected = [p["probability"] for p in plain.predict(rows[: min(patients, 256)])]
        client.infer(rows)  # context sent and cached, connection and key configuration
        timed.encrypt_cpu = timed.decrypt_cpu = 0.0
        for _ in range(requests):
            result = homomorphic.run(lambda: client.infer(rows), service_pid)
            sealed.run(lambda: plain.infer(rows), service_pid)
        encrypt_cpu, decrypt_cpu = timed.encrypt_cpu, timed.decrypt_cpu
        layout = timed.layout
    got = [p["probability"] for p in result.predictions[: len(expected)]]
    error = max(abs(g - e) for g, e in zip(got, expected, strict=True))

    def ms(seconds: float, per: int = 1) -> float:
        return round(seconds * 1000 / requests / per, 2 if per == 1 else 4)

    wall, median = sum(homomorphic.walls), statistics.median(homomorphic.walls)
    return HeMeasurement(
        patients=patients,
        layout=layout,
        ciphertexts=len(timed.sent),
        requests=requests,
        wall_ms_per_request=ms(wall),
        wall_ms_p50=round(median * 1000, 2),
        wall_ms_per_patient=ms(wall, patients),
        client_encrypt_cpu_ms=ms(encrypt_cpu),
        client_decrypt_cpu_ms=ms(decrypt_cpu),
        client_cpu_ms=ms(homomorphic.client_cpu),
        client_cpu_ms_per_patient=ms(homomorphic.client_cpu, patients),
        service_cpu_ms=ms(homomorphic.service_cpu),
        service_cpu_ms_per_patient=ms(homomorphic.service_cpu, patients),
        request_mb=round(sum(timed.sent) / 1e6, 2),  # the ciphertexts, raw in the frame
        response_mb=round(timed.received / 1e6, 2),
        max_abs_error=float(f"{error:.2g}"),
        sealed_wall_ms_p50=round(statistics.median(sealed.walls) * 1000, 2),
        sealed_client_cpu_ms=ms(sealed.client_cpu),
        sealed_service_cpu_ms=ms(sealed.service_cpu),
        he_over_sealed_p50=round(median / statistics.median(sealed.walls), 2),
    )


@dataclass(frozen=True)
class LayoutCost:
    """One layout for one batch, computed in this process: CPU of the CKKS steps only."""

    patients: int
    layout: str
    ciphertexts_sent: int
    ciphertexts_back: int
    encrypt_cpu_ms: float
    compute_cpu_ms: float
    decrypt_cpu_ms: float
    cpu_ms_per_patient: float
    max_abs_error: float


def compare_layouts(encoded: list[list[float]], sizes: tuple[int, ...]) -> list[LayoutCost]:
    """Both layouts for the first ``n`` of ``encoded`` patients, for each ``n`` in ``sizes``:
    encryption, the service's computation and decryption, one after the other."""
    columns = len(encoded[0])
    secret = he.SecretContext()
    public = he.PublicContext(secret.public_bytes())
    weights, bias = [[(-1) ** j * (0.001 + j % 7 * 0.01) for j in range(columns)]], [0.5]
    results = []
    for patients in sizes:
        rows = encoded[:patients]
        expected = [sum(w * x for w, x in zip(weights[0], row, strict=True)) + 0.5 for row in rows]
        for layout in he.LAYOUTS:
            marks = [time.process_time()]
            sent = secret.encrypt_rows(rows, layout)
            marks.append(time.process_time())
            [back] = public.linear_scores(sent, patients, weights, bias, layout)
            marks.append(time.process_time())
            got = secret.decrypt_scores(back, patients, he.block_width(columns), layout)
            marks.append(time.process_time())
            encrypt, compute, decrypt = (1000 * (b - a) for a, b in itertools.pairwise(marks))
            error = max(abs(g - e) for g, e in zip(got, expected, strict=True))
            results.append(
                LayoutCost(
                    patients=patients,
                    layout=layout,
                    ciphertexts_sent=len(sent),
                    ciphertexts_back=len(back),
                    encrypt_cpu_ms=round(encrypt, 1),
                    compute_cpu_ms=round(compute, 1),
                    decrypt_cpu_ms=round(decrypt, 1),
                    cpu_ms_per_patient=round((encrypt + compute + decrypt) / patients, 4),
                    max_abs_error=float(f"{error:.2g}"),
                )
            )
    return results


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def report_markdown(report: dict) -> str:
    """The Markdown summary of a run's report."""
    sealed, workers, homomorphic = report["sealed"], report["workers"], report["he"]
    goals = report["goals"]
    out = [
        "# Inference throughput: sealed against plaintext, worker threads, CKKS",
        "",
        f"`benchmarks/inference_throughput.py`, loopback, {report['transport']}, "
        f"{report['cores']} cores; {report['started']}. Load average (1/5/15 min) at each "
        "section's start and end beside its table: the machine is shared, so wall-clock "
        "figures move with it; CPU per request is the steadier measure.",
        "",
        f"## Sealed against plaintext ({sealed['threads']} client threads, "
        f"{sealed['rounds']} interleaved rounds of {sealed['seconds_per_round']} s)",
        "",
        f"Load average: {sealed['load_average']}",
        "",
    ]
    head = ["rows", "mode", "req/s", "rows/s", "p50 ms", "p99 ms", "service CPU ms/req"]
    head.append("client CPU ms/req")
    out += table(
        head,
        [
            [m["rows"], m["mode"], m["requests_per_second"], m["rows_per_second"], m["p50_ms"],
             m["p99_ms"], m["service_cpu_ms_per_request"], m["client_cpu_ms_per_request"]]
            for m in sealed["results"]
        ],
    )  # fmt: skip
    ratio = sealed["throughput_ratio"]
    out += [
        "",
        f"Sealed ÷ plaintext req/s: 1 row {ratio['1']} (goal ≥ {goals['sealed_ratio_1_row']}: "
        f"{'met' if ratio['1'] >= goals['sealed_ratio_1_row'] else 'not met'}), 64 rows "
        f"{ratio['64']}; service capacity (plaintext ÷ sealed CPU per request): 1 row "
        f"{sealed['service_capacity_ratio']['1']}, 64 rows "
        f"{sealed['service_capacity_ratio']['64']}.",
        "",
        f"## `--workers 1` against `--workers 2` (sealed, {workers['threads']} client threads, "
        f"{workers['rounds']} interleaved rounds of {workers['seconds_per_round']} s)",
        "",
        f"Load average: {workers['load_average']}",
        "",
    ]
    out += table(
        ["rows", "workers", "req/s", "p50 ms", "p99 ms", "service CPU ms/req"],
        [
            [m["rows"], m["mode"], m["requests_per_second"], m["p50_ms"], m["p99_ms"],
             m["service_cpu_ms_per_request"]]
            for m in workers["results"]
        ],
    )  # fmt: skip
    out += [
        "",
        "## Homomorphic (CKKS) inference of a logistic regression, 30 features "
        "(one request at a time)",
        "",
        f"Load average: {homomorphic['load_average']}",
        "",
    ]
    out += table(
        ["patients", "layout", "ciphertexts", "requests", "wall ms/req", "p50 ms/req",
         "wall ms/patient", "client encrypt CPU ms", "client decrypt CPU ms", "client CPU ms",
         "client CPU ms/patient", "service CPU ms", "service CPU ms/patient", "request MB",
         "response MB", "max abs error", "sealed p50 ms/req", "sealed client CPU ms",
         "sealed service CPU ms", "HE ÷ sealed p50"],
        [
            [m["patients"], m["layout"], m["ciphertexts"], m["requests"],
             m["wall_ms_per_request"], m["wall_ms_p50"], m["wall_ms_per_patient"],
             m["client_encrypt_cpu_ms"], m["client_decrypt_cpu_ms"], m["client_cpu_ms"],
             m["client_cpu_ms_per_patient"], m["service_cpu_ms"],
             m["service_cpu_ms_per_patient"], m["request_mb"], m["response_mb"],
             m["max_abs_error"], m["sealed_wall_ms_p50"], m["sealed_client_cpu_ms"],
             m["sealed_service_cpu_ms"], m["he_over_sealed_p50"]]
            for m in homomorphic["results"]
        ],
    )  # fmt: skip
    out += ["", *homomorphic["verdicts"], ""]
    layouts = report["layouts"]
    out += [
        "### Both layouts, in one process (CPU of encryption, the service's computation and "
        "decryption only)",
        "",
        f"Load average: {layouts['load_average']}",
        "",
    ]
    out += table(
        ["patients", "layout", "ciphertexts sent", "ciphertexts back", "encrypt CPU ms",
         "compute CPU ms", "decrypt CPU ms", "CPU ms/patient", "max abs error"],
        [
            [m["patients"], m["layout"], m["ciphertexts_sent"], m["ciphertexts_back"],
             m["encrypt_cpu_ms"], m["compute_cpu_ms"], m["decrypt_cpu_ms"],
             m["cpu_ms_per_patient"], m["max_abs_error"]]
            for m in layouts["results"]
        ],
    )  # fmt: skip
    out.append("")
    return "\n".join(out)


def he_verdicts(results: list[HeMeasurement]) -> list[str]:
    """The HE figures against the goals, one sentence each."""
    one = next(m for m in results if m.patients == 1)
    lines = [
        f"One patient ({one.layout} layout): {one.wall_ms_per_request} ms per request "
        f"wall-clock (median "
        f"{one.wall_ms_p50}) "
        f"(client CPU {one.client_cpu_ms} ms, of which encryption {one.client_encrypt_cpu_ms}; "
        f"service CPU {one.service_cpu_ms} ms); goal ≤ {GOAL_HE_MS_ONE_PATIENT} ms: "
        f"{'met' if one.wall_ms_p50 <= GOAL_HE_MS_ONE_PATIENT else 'not met'} (median). "
        f"CPU of both sides: {round(one.client_cpu_ms + one.service_cpu_ms, 2)} ms. The "
        f"sealed route, the same patient interleaved: median {one.sealed_wall_ms_p50} ms "
        f"(HE ÷ sealed {one.he_over_sealed_p50})."
    ]
    for m in results:
        if m.patients >= 256:
            met = m.wall_ms_per_patient <= GOAL_HE_MS_PER_PATIENT_BATCHED
            lines.append(
                f"{m.patients} patients per request ({m.layout} layout, {m.ciphertexts} "
                f"ciphertexts): {m.wall_ms_per_patient} ms per patient wall-clock (median "
                f"{round(m.wall_ms_p50 / m.patients, 4)}; client CPU "
                f"{m.client_cpu_ms_per_patient}, service CPU {m.service_cpu_ms_per_patient}); "
                f"goal ≤ {GOAL_HE_MS_PER_PATIENT_BATCHED} ms: {'met' if met else 'not met'} "
                f"(mean); HE ÷ sealed median {m.he_over_sealed_p50}."
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per round and mode")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per mode")
    parser.add_argument("--threads", type=int, default=4, help="concurrent load clients")
    parser.add_argument(
        "--worker-rounds", type=int, default=4, help="interleaved rounds per --workers setting"
    )
    parser.add_argument(
        "--he-requests", type=int, default=6, help="homomorphic requests per batch size"
    )
    parser.add_argument("--tls", action="store_true", help="over TLS (default: plain HTTP)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON (and .md beside it)")
    args = parser.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    root = Path(tempfile.mkdtemp(prefix="fedcare-bench-"))
    registry, rows = register_models(root)
    rotate(root / "keyring")
    token, _ = TokenStore(root / "tokens.json").create("bench", ["*"], 1e9, 1e9)
    serve = ["--registry", str(registry), "--verify-key", str(root / "coordinator.pub")]
    serve += ["--keyring", str(root / "keyring"), "--tokens", str(root / "tokens.json")]
    # 4096 rows for the largest batched HE figure (1 and 64-row requests are unaffected
    # by the limit).
    serve += ["--benchmark-plaintext", "--log-level", "warning", "--max-rows", "4096"]
    serve += ["--max-body-bytes", str(16 << 20)]  # 4096 rows through the sealed route
    ca = None
    if args.tls:
        tls = signing.make_local_tls(root / "tls")
        serve += ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)]
        ca = tls.ca_cert
    else:
        serve += ["--insecure-http"]

    def start(name: str, workers: int) -> launcher.ServiceProcess:
        extra = ["--audit-log", str(root / f"{name}-audit.jsonl"), "--workers", str(workers)]
        return launcher.start_service([*serve, *extra], root / f"{name}.log", ca_cert=ca)

    services = {2: start("two-workers", 2)}
    try:
        services[1] = start("one-worker", 1)
        two = services[2]
        # 1. Sealed against plaintext, on the two-worker service.
        load = [load_average()]
        sealed: list[Measurement] = []
        for size in (1, 64):
            collected: dict[str, list[Window]] = {"encrypted": [], "plaintext": []}
            for _ in range(args.rounds):
                for mode in collected:
                    collected[mode].append(
                        measure(
                            two.url, token, ca, rows[:size], mode == "plaintext", args.seconds,
                            args.threads, two.process.pid,
                        )
                    )  # fmt: skip
            sealed += [summarize(mode, size, w, args.seconds) for mode, w in collected.items()]
        load.append(load_average())
        sealed_load = load
        # 2. --workers 1 against --workers 2, sealed, interleaved.
        load = [load_average()]
        by_workers: list[Measurement] = []
        for size in (1, 64):
            windows: dict[int, list[Window]] = {1: [], 2: []}
            for _ in range(args.worker_rounds):
                for workers, service in services.items():
                    windows[workers].append(
                        measure(
                            service.url, token, ca, rows[:size], False, args.seconds,
                            args.threads, service.process.pid,
                        )
                    )  # fmt: skip
            by_workers += [
                summarize(str(workers), size, windows[workers], args.seconds) for workers in (1, 2)
            ]
        load.append(load_average())
        workers_load = load
        services.pop(1).stop()
        # 3. Homomorphic inference, one request at a time, on the two-worker service.
        load = [load_average()]
        tiled = (rows * (4096 // len(rows) + 1))[:4096]
        # One patient's request is short: more of them, for a steadier median.
        homomorphic = [
            measure_he(two.url, token, ca, tiled[:size], count, two.process.pid)
            for size, count in ((1, 10 * args.he_requests), (256, args.he_requests),
                                (4096, args.he_requests))
        ]  # fmt: skip
        load.append(load_average())
        he_load = load
        load = [load_average()]
        encoded = [[float(value) for value in row.values()] for row in tiled]
        layouts = compare_layouts(encoded, (256, 4096))
        load.append(load_average())
        layouts_load = load
    finally:
        for service in services.values():
            service.stop()

    transport = "TLS" if args.tls else "plain HTTP"
    ratios, cpu_ratios = {}, {}
    for size in (1, 64):
        enc, plain = (
            next(m for m in sealed if m.rows == size and m.mode == mode)
            for mode in ("encrypted", "plaintext")
        )
        ratios[str(size)] = round(enc.requests_per_second / plain.requests_per_second, 3)
        # What the service could serve if it had its core to itself: 1 / CPU per request.
        cpu_ratios[str(size)] = round(
            plain.service_cpu_ms_per_request / enc.service_cpu_ms_per_request, 3
        )
    report = {
        "started": started,
        "transport": transport,
        "cores": os.cpu_count(),
        "goals": {
            "sealed_ratio_1_row": GOAL_SEALED_RATIO_1_ROW,
            "he_ms_one_patient": GOAL_HE_MS_ONE_PATIENT,
            "he_ms_per_patient_batched": GOAL_HE_MS_PER_PATIENT_BATCHED,
        },
        "sealed": {
            "threads": args.threads,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "load_average": sealed_load,
            "results": [asdict(m) for m in sealed],
            "throughput_ratio": ratios,
            "service_capacity_ratio": cpu_ratios,
        },
        "workers": {
            "threads": args.threads,
            "seconds_per_round": args.seconds,
            "rounds": args.worker_rounds,
            "load_average": workers_load,
            "results": [asdict(m) for m in by_workers],
        },
        "he": {
            "model": "logreg, 30 numeric features",
            "requests": args.he_requests,
            "load_average": he_load,
            "results": [asdict(m) for m in homomorphic],
            "verdicts": he_verdicts(homomorphic),
        },
        "layouts": {
            "load_average": layouts_load,
            "results": [asdict(m) for m in layouts],
        },
    }
    markdown = report_markdown(report)
    print("\n" + markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown)
    print(f"written to {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
