"""What a deployed round costs beyond the training inside it: Flower's default isolation
against fedcare's warm site runtime, plain and SecAgg+, 3 sites, in one run.

Brings up a real loopback federation (simulations/loopback.py: TLS, SuperNode
authentication, 3 SuperNodes) four times: {default isolation, warm runtime} × {plain,
SecAgg+}. For each round it compares the coordinator's wall time with the sites' own DP-SGD
time (the ``train-seconds`` each site reports, averaged over the sites weighted by their
rows; the sites train in parallel, so this is about what a round could take with no
framework). The machine's load average is recorded beside every measurement: on a shared
2-core machine absolute times mean little without it.

- default isolation (today's way): Flower's ``flower-supernode`` as it is (3 s idle poll),
  every message starting a fresh ``flwr-clientapp`` process that installs the run's FAB
  and imports it (torch, Opacus, pandas, scikit-learn), and the coordinator pulling
  replies every 3 s as Flower's grid does (``reply-poll-interval`` 3.0);
- warm runtime: ``flower-supernode --isolation process`` started through
  deploy/supernode_poll.py (idle pauses capped at 0.2 s, 50 ms for 3 s after a message,
  looks for a reply at 20 ms, a nudge to the executor per message) plus the site executor
  (deploy/site_runtime.py), which imported the site's ClientApp once, keeps the site's
  data loaded and forks per message, and replies pulled every 0.1 s.

Both runtimes send the same messages (fedcare's records, protocol/federation.py: the
model as one flat Array per dtype) through the same coordinator (its SuperLink's state
in memory, the default), so the comparison is of the site runtimes alone.

    .venv/bin/python benchmarks/deployed_round.py [--rounds 4] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulations.loopback import start_loopback_federation  # noqa: E402

SITES = ["a", "b", "c"]
GOALS = {
    "plain_overhead_s_max": 3.0,
    "new_over_old_max": 0.1,
    "secagg_over_plain_max": 2.0,
}


@dataclass(frozen=True)
class RoundFigures:
    round: int
    wall_s: float
    local_training_s: float
    overhead_s: float
    wall_over_training: float | None


@dataclass(frozen=True)
class Measurement:
    runtime: str  # "default-isolation" or "warm"
    secure_aggregation: bool
    run_s: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    rounds: list[RoundFigures]

    @property
    def mean_wall_s(self) -> float:
        return statistics.fmean(r.wall_s for r in self.rounds)

    @property
    def mean_overhead_s(self) -> float:
        return statistics.fmean(r.overhead_s for r in self.rounds)


def _load() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def measure(rounds: int, secure: bool, warm: bool, workdir: Path) -> Measurement:
    """Run ``rounds`` deployed rounds; per round: wall time and the sites' training time."""
    federation = start_loopback_federation(workdir, SITES, warm=warm)
    load_before = _load()
    try:
        out = "secagg" if secure else "plain"
        config = federation.run_config(
            out,
            **{
                "num-server-rounds": rounds,
                "secure-aggregation": "on" if secure else "off",
                "round-timeout": 300.0,
                # today's way pulls replies every 3 s, as Flower's grid does
                "reply-poll-interval": 0.1 if warm else 3.0,
            },
        )
        t0 = time.perf_counter()
        federation.coordinator.run(federation.app, config, timeout=3600)
        run_seconds = time.perf_counter() - t0
    finally:
        left = federation.stop()
        assert not left, f"processes left running: {left}"
    report = json.loads((workdir / out / "report.json").read_text())
    figures = []
    for entry in report["history"]:
        train = float(entry["train"].get("train-seconds", 0.0))
        wall = float(entry["wall_seconds"])
        figures.append(
            RoundFigures(
                round=entry["round"],
                wall_s=round(wall, 2),
                local_training_s=round(train, 2),
                overhead_s=round(wall - train, 2),
                wall_over_training=round(wall / train, 1) if train > 0 else None,
            )
        )
    return Measurement(
        runtime="warm" if warm else "default-isolation",
        secure_aggregation=secure,
        run_s=round(run_seconds, 1),
        load_before=load_before,
        load_after=_load(),
        rounds=figures,
    )


def _find(runs: list[Measurement], warm: bool, secure: bool) -> Measurement:
    runtime = "warm" if warm else "default-isolation"
    return next(m for m in runs if m.runtime == runtime and m.secure_aggregation == secure)


def summarize(runs: list[Measurement]) -> dict[str, float | bool]:
    """The figures the goals are stated in, and whether each goal was met."""
    new_plain, old_plain = _find(runs, True, False), _find(runs, False, False)
    new_secagg = _find(runs, True, True)
    summary: dict[str, float | bool] = {
        "plain_overhead_s_warm": round(new_plain.mean_overhead_s, 2),
        "plain_overhead_s_default": round(old_plain.mean_overhead_s, 2),
        "new_over_old_plain_round": round(new_plain.mean_wall_s / old_plain.mean_wall_s, 3),
        "new_over_old_secagg_round": round(
            new_secagg.mean_wall_s / _find(runs, False, True).mean_wall_s, 3
        ),
        "secagg_over_plain_warm": round(new_secagg.mean_wall_s / new_plain.mean_wall_s, 2),
    }
    summary["goal_plain_overhead_met"] = (
        summary["plain_overhead_s_warm"] <= GOALS["plain_overhead_s_max"]
    )
    summary["goal_new_over_old_met"] = (
        summary["new_over_old_plain_round"] <= GOALS["new_over_old_max"]
    )
    summary["goal_secagg_over_plain_met"] = (
        summary["secagg_over_plain_warm"] <= GOALS["secagg_over_plain_max"]
    )
    return summary


def markdown(runs: list[Measurement], summary: dict[str, float | bool]) -> str:
    lines = [
        "# Deployed round: default isolation vs the warm site runtime (3 sites, loopback)",
        "",
        "Written by `benchmarks/deployed_round.py`; load average (1, 5, 15 min) of the "
        f"machine ({os.cpu_count()} cores) before and after each run.",
        "",
        "| runtime | aggregation | round | wall s | training s | overhead s | wall/training "
        "| load before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in runs:
        for r in m.rounds:
            lines.append(
                f"| {m.runtime} | {'SecAgg+' if m.secure_aggregation else 'plain'} | "
                f"{r.round} | {r.wall_s} | {r.local_training_s} | {r.overhead_s} | "
                f"{r.wall_over_training}× | {m.load_before} → {m.load_after} |"
            )
    lines += ["", "| figure | value | goal |", "|---|---|---|"]
    goals = {
        "plain_overhead_s_warm": f"≤ {GOALS['plain_overhead_s_max']} s",
        "new_over_old_plain_round": f"≤ {GOALS['new_over_old_max']}",
        "secagg_over_plain_warm": f"≤ {GOALS['secagg_over_plain_max']}",
    }
    for key, value in summary.items():
        if not key.startswith("goal_"):
            lines.append(f"| {key} | {value} | {goals.get(key, '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    runs: list[Measurement] = []
    for warm in (False, True):
        for secure in (False, True):
            with tempfile.TemporaryDirectory(prefix="fedcare-bench-") as tmp:
                runs.append(measure(args.rounds, secure, warm, Path(tmp)))
            m = runs[-1]
            print(
                f"{m.runtime:>17} {'secagg' if secure else 'plain':>6}: run {m.run_s} s, "
                f"mean round {m.mean_wall_s:.2f} s, overhead {m.mean_overhead_s:.2f} s, "
                f"load {m.load_before} → {m.load_after}",
                flush=True,
            )
    summary = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "sites": len(SITES),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "runs": [asdict(m) for m in runs],
        "summary": summary,
        "goals": GOALS,
    }
    (args.out / "deployed_round.json").write_text(json.dumps(result, indent=2))
    (args.out / "deployed_round.md").write_text(markdown(runs, summary))
    print(markdown(runs, summary))


if __name__ == "__main__":
    main()
