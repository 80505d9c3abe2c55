"""What a deployed round costs beyond the training inside it, for 3 sites on this machine.

Brings up a real loopback federation (simulations/loopback.py: TLS, SuperNode
authentication, 3 SuperNodes), runs the fedcare app with and without SecAgg+, and for each
round compares the coordinator's wall time with the sites' own DP-SGD time (the
``train-seconds`` each site reports, averaged over the sites weighted by their rows; the
sites train in parallel, so this is about what a round could take with no framework). It
also times what every message costs a site before any work: Flower starts a fresh
``flwr-clientapp`` process per message, which imports the app (torch, Opacus, pandas,
scikit-learn).

    .venv/bin/python benchmarks/deployed_round.py [--rounds 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulations.loopback import start_loopback_federation  # noqa: E402

SITES = ["a", "b", "c"]


def clientapp_import_seconds() -> float:
    """Wall time of a fresh process importing the ClientApp (what each message pays)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import client.app"], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def measure(rounds: int, secure: bool, workdir: Path) -> dict:
    """Run ``rounds`` deployed rounds; per round: wall time and the sites' training time."""
    federation = start_loopback_federation(workdir, SITES)
    try:
        out = "secagg" if secure else "plain"
        config = federation.run_config(
            out,
            **{
                "num-server-rounds": rounds,
                "secure-aggregation": "on" if secure else "off",
                "round-timeout": 300.0,
            },
        )
        t0 = time.perf_counter()
        federation.coordinator.run(ROOT, config, timeout=3600)
        run_seconds = time.perf_counter() - t0
    finally:
        left = federation.stop()
        assert not left, f"processes left running: {left}"
    report = json.loads((workdir / out / "report.json").read_text())
    per_round = []
    for entry in report["history"]:
        train = float(entry["train"].get("train-seconds", 0.0))
        per_round.append(
            {
                "round": entry["round"],
                "wall_s": round(entry["wall_seconds"], 2),
                "local_training_s": round(train, 2),
                "overhead_s": round(entry["wall_seconds"] - train, 2),
                "ratio": round(entry["wall_seconds"] / train, 1) if train > 0 else None,
            }
        )
    return {"secure_aggregation": secure, "run_s": round(run_seconds, 1), "rounds": per_round}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    results = {"clientapp_import_s": round(clientapp_import_seconds(), 2), "runs": []}
    for secure in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            results["runs"].append(measure(args.rounds, secure, Path(tmp)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deployed_round.json").write_text(json.dumps(results, indent=2))
    print(f"fresh ClientApp process import: {results['clientapp_import_s']} s (per message)")
    header = ("secagg", "round", "wall s", "train s", "overhead s", "ratio")
    print(" ".join(f"{h:>10}" for h in header))
    for run in results["runs"]:
        for r in run["rounds"]:
            row = (run["secure_aggregation"], r["round"], r["wall_s"], r["local_training_s"])
            row += (r["overhead_s"], r["ratio"])
            print(" ".join(f"{v!s:>10}" for v in row))


if __name__ == "__main__":
    main()
