"""fedward's simulator and Flower's on the same task, split, model and local work.

Synchronous FedAvg on both sides, A/B alternated in one run (ours first, then
``flower ours`` pairs in ABBA order so neither side always runs on a warmer
or a quieter machine), wall time and held-out accuracy after every round of
each run reported side by side.

A third side, ``bare`` (``bare_loop.py``; ``--no-bare`` leaves it out), runs
the same rounds as a hand-written loop with no framework (a two-process
``multiprocessing`` pool, ``train_subset``, a weighted mean): the floor any
simulator doing this local work with this training code on these two cores
must spend. Its ratio to Flower's wall time says whether a target such as
"1/3 of Flower's time" is reachable by framework machinery at all. With it
the order rotates: fedward flower bare, flower bare fedward, bare fedward
flower, ... (``--pairs`` such rounds).

What is the same on both sides:

- **task and split**: the ``quick`` preset's simulated ECG rhythm task with
  ``--devices`` devices, each device's windows exactly as fedward generates
  them (device i is Flower's ``partition-id`` i); the same held-out windows;
- **model and start**: fedward's SensorCNN, from the same warm start;
- **local work**: every device trains every round (full participation:
  fedward's FedAvg without over-selection or deadline, every device always
  available and never dropping; Flower's ``fraction_train=1.0``), 2 epochs of
  SGD (batch 32, lr 0.05, momentum 0.9) with ``fedward.tinytrain.training.
  train_subset``, the code fedward's devices run, with the same per-task seed
  (the seeds fedward's coordinator gave each device in each round, recorded
  from its first run and handed to Flower in the task file);
- **merge**: the sample-weighted mean (fedward: of deltas, applied with
  server lr 1; Flower: of parameters): the same FedAvg step up to float rounding;
- **resources**: two training workers on two cores (fedward's process
  executor with 2 workers, one torch thread each; Flower's Ray backend with
  2 CPUs and 1 CPU per client, one torch thread each).

What differs is each framework's own machinery: fedward encodes every task
and update as real protocol frames, runs its coordinator engine and virtual
clock, and measures each device class's training memory when it plans the
study; Flower runs its SuperLink, Ray actors and Message API. Wall time is
each run's whole process (interpreter start, imports, setup, training,
evaluation), measured from outside.

Usage (fedward's .venv; the Flower side's environment from ``setup_venv.sh``)::

    bash bench/flower_side_by_side/setup_venv.sh /tmp/flwr-venv
    .venv/bin/python -m fedward.bench.flower_side_by_side.run \
        --flower-python /tmp/flwr-venv/bin/python --pairs 3 --out build/flower-sbs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedward.coordinator.engine import EngineEvent, EventKind
from fedward.protocol.messages import DeviceClass
from fedward.simulation.executor import Executor, ExecutorKind, JobHandle, TrainJob, make_executor
from fedward.simulation.scenario import PRESETS, ProfileSettings, Scenario, StrategyRun
from fedward.simulation.sensordata import load_study_data
from fedward.simulation.study import Study

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CPUS = 2


def side_by_side_scenario(*, devices: int, rounds: int, seed: int = 0) -> Scenario:
    """The quick preset, every device training every round of synchronous FedAvg."""
    always_there = ProfileSettings(availability=1.0, dropout=0.0)
    base = PRESETS["quick"].model_dump()
    return Scenario.model_validate(
        {
            **base,
            "name": f"flower-side-by-side-{devices}",
            "seed": seed,
            "devices": devices,
            "concurrency": devices,
            "fedavg_over_selection": 0.0,
            "fedavg_round_deadline_s": None,
            "update_budget": devices * rounds,
            "eval_every_updates": devices,
            "profiles": {c: always_there for c in DeviceClass},
        }
    )


@dataclass
class RecordingExecutor:
    """An executor that records each job's (model version, device, seed), then runs it."""

    inner: Executor
    seeds: dict[str, dict[str, int]] = field(default_factory=dict)

    def submit(self, job: TrainJob) -> JobHandle:
        version = str(job.task.model_version)
        self.seeds.setdefault(version, {})[str(job.device_index)] = int(job.task.seed or 0)
        return self.inner.submit(job)

    def close(self) -> None:
        self.inner.close()


def prepare(task: Path, *, devices: int, rounds: int, seed: int) -> None:
    """Write the shared task: every device's windows, the held-out set, the warm start."""
    scenario = side_by_side_scenario(devices=devices, rounds=rounds, seed=seed)
    run = StrategyRun.FEDAVG
    data = load_study_data(scenario.data_config())
    pool = make_executor(
        ExecutorKind.SERIAL, scenario.data_config(), scenario.study_spec(run).model_settings()
    )
    try:
        study = Study(scenario, run, executor=pool)  # set up only: its held-out set and start
    finally:
        pool.close()
    model = study.model_config
    names = list(study.shapes)
    meta = {
        "devices": devices,
        "rounds": rounds,
        "cpus": CPUS,
        "param_names": names,
        "model": {
            "kind": model.kind.value,
            "in_channels": model.in_channels,
            "window": model.window,
            "num_classes": model.num_classes,
            "width": model.width,
            "hidden": list(model.hidden),
        },
        "train": {
            "epochs": study.train.epochs,
            "batch_size": study.train.batch_size,
            "lr": study.train.lr,
            "momentum": study.train.momentum,
            "weight_decay": study.train.weight_decay,
            "prefix_micro_batch": study.train.prefix_micro_batch,
        },
        "schedule": None,  # filled from fedward's first run (``add_schedule``)
    }
    task.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "meta": np.array(json.dumps(meta)),
        "x": np.concatenate(data.device_x),
        "y": np.concatenate(data.device_y),
        "counts": np.array([len(y) for y in data.device_y]),
        "test_x": study.test_x,
        "test_y": study.test_y,
        **{f"start/{n}": study.engine.params[n] for n in names},
    }
    np.savez(task, **arrays)


def add_schedule(task: Path, schedule: dict[str, dict[str, int]]) -> None:
    with np.load(task) as f:
        arrays: dict[str, Any] = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    meta["schedule"] = schedule
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(task, **arrays)


def run_ours(out: Path, *, devices: int, rounds: int, seed: int) -> None:
    """fedward's side (its own process): the study with the process executor, 2 workers."""
    started = time.perf_counter()
    scenario = side_by_side_scenario(devices=devices, rounds=rounds, seed=seed)
    run = StrategyRun.FEDAVG
    pool = RecordingExecutor(
        make_executor(
            ExecutorKind.PROCESS,
            scenario.data_config(),
            scenario.study_spec(run).model_settings(),
            workers=CPUS,
        )
    )
    merges: list[float] = []

    def merged(event: EngineEvent) -> None:
        if event.kind is EventKind.MODEL_MERGED:
            merges.append(time.perf_counter() - started)

    try:
        study = Study(scenario, run, executor=pool, listeners=(merged,))
        set_up = time.perf_counter()
        result = study.run()
    finally:
        pool.close()
    finished = time.perf_counter()
    out.write_text(
        json.dumps(
            {
                "side": "fedward",
                "series": [
                    {"round": int(p["version"]), "accuracy": p["accuracy"], "loss": p["loss"]}
                    for p in result.series
                ],
                "merge_wall_s": merges,
                "schedule": pool.seeds,
                "wall_s": {
                    "setup": set_up - started,
                    "simulation": result.wall_s,
                    "in_process": finished - started,
                },
            },
            indent=2,
        )
    )


def load_average() -> float:
    return os.getloadavg()[0]


def _one(side: str, index: int, args: argparse.Namespace, task: Path) -> dict[str, Any]:
    out = args.out / f"{side}-{index}.json"
    if side == "fedward":
        command = [sys.executable, "-m", "fedward.bench.flower_side_by_side.run", "ours"]
        command += ["--out", str(out), "--devices", str(args.devices), "--rounds", str(args.rounds)]
        command += ["--seed", str(args.seed)]
        env = dict(os.environ)
    elif side == "bare":
        command = [sys.executable, str(HERE / "bare_loop.py"), "--task", str(task)]
        command += ["--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
    else:
        command = [args.flower_python, str(HERE / "flower_app.py"), "--task", str(task)]
        command += ["--out", str(out)]
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}",
            "RAY_DEDUP_LOGS": "0",
            # a loopback-only Ray needs no token; without this, Ray writes ~/.ray/auth_token,
            # which then switches token authentication on for every later Ray on the machine
            "RAY_AUTH_MODE": "disabled",
        }
    load = load_average()
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    (args.out / f"{side}-{index}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{side} run {index} failed ({done.returncode}): see {side}-{index}.log")
    report = json.loads(out.read_text())
    phases = report.pop("wall_s")
    return {
        **report,
        "side": side,
        "index": index,
        "wall_s": wall,
        "phases_s": phases,
        "load_before": load,
    }


def _curve(series: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """What a run computed, per round (not when: Flower's points carry their wall time)."""
    return [(int(p["round"]), float(p["accuracy"]), float(p["loss"])) for p in series]


def curves_agree(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-round accuracy of two runs: the largest difference and the final ones."""
    by_round_a = {p["round"]: p["accuracy"] for p in a}
    by_round_b = {p["round"]: p["accuracy"] for p in b}
    common = sorted(set(by_round_a) & set(by_round_b))
    diffs = [abs(by_round_a[r] - by_round_b[r]) for r in common]
    return {
        "rounds_compared": len(common),
        "max_abs_accuracy_difference": max(diffs) if diffs else None,
        "mean_abs_accuracy_difference": float(np.mean(diffs)) if diffs else None,
    }


def compare(args: argparse.Namespace) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    task = args.out / "task.npz"
    prepare(task, devices=args.devices, rounds=args.rounds, seed=args.seed)
    # A B, B A, A B, ...: fedward first (its first run records the seeds Flower uses)
    sides: tuple[str, ...]
    if args.bare:  # rotated, so each side runs first, second and third once in 3 rounds
        sides = ("fedward", "flower", "bare")
        order = [s for k in range(args.pairs) for s in sides[k % 3 :] + sides[: k % 3]]
    else:
        sides = ("fedward", "flower")
        order = [s for k in range(args.pairs) for s in (sides, sides[::-1])[k % 2]]
    runs: list[dict[str, Any]] = []
    for index, side in enumerate(order):
        report = _one(side, index, args, task)
        runs.append(report)
        if side == "fedward" and index == 0:
            add_schedule(task, report["schedule"])
        print(
            f"run {index} {side}: wall {report['wall_s']:.1f} s (load {report['load_before']:.1f}); "
            f"final accuracy {report['series'][-1]['accuracy']:.4f}",
            flush=True,
        )
    ours = [r for r in runs if r["side"] == "fedward"]
    theirs = [r for r in runs if r["side"] == "flower"]
    bare = [r for r in runs if r["side"] == "bare"]
    same_schedule = all(r["schedule"] == ours[0]["schedule"] for r in ours)
    ours_wall = statistics.median(r["wall_s"] for r in ours)
    flower_wall = statistics.median(r["wall_s"] for r in theirs)
    summary = {
        "devices": args.devices,
        "rounds": args.rounds,
        "pairs": args.pairs,
        "order": order,
        "wall_s": {
            "fedward": [r["wall_s"] for r in ours],
            "flower": [r["wall_s"] for r in theirs],
            "fedward_median": ours_wall,
            "flower_median": flower_wall,
            "ratio_fedward_to_flower": ours_wall / flower_wall,
            **(
                {
                    "bare": [r["wall_s"] for r in bare],
                    "bare_median": statistics.median(r["wall_s"] for r in bare),
                    "ratio_bare_to_flower": statistics.median(r["wall_s"] for r in bare)
                    / flower_wall,
                }
                if bare
                else {}
            ),
        },
        "load_average_before_each": [r["load_before"] for r in runs],
        "accuracy_by_round": {
            "fedward": [p["accuracy"] for p in ours[0]["series"]],
            "flower": [p["accuracy"] for p in theirs[0]["series"]],
            **({"bare": [p["accuracy"] for p in bare[0]["series"]]} if bare else {}),
        },
        "curves": curves_agree(ours[0]["series"], theirs[0]["series"]),
        **({"curves_bare": curves_agree(ours[0]["series"], bare[0]["series"])} if bare else {}),
        "fedward_runs_identical": all(
            _curve(r["series"]) == _curve(ours[0]["series"]) for r in ours
        )
        and same_schedule,
        "flower_runs_identical": all(
            _curve(r["series"]) == _curve(theirs[0]["series"]) for r in theirs
        ),
        "max_abs_loss_difference": max(
            abs(a[2] - b[2])
            for a, b in zip(_curve(ours[0]["series"]), _curve(theirs[0]["series"]), strict=False)
        ),
        "flwr": theirs[0].get("flwr"),
        "runs": runs,
    }
    (args.out / "side-by-side.json").write_text(json.dumps(summary, indent=2))
    (args.out / "side-by-side.md").write_text(markdown(summary))
    return summary


def round_times(run: dict[str, Any]) -> tuple[float, float]:
    """Seconds from the side's own start to its first merged round, and per later round."""
    if run["side"] == "fedward":
        marks = list(run["merge_wall_s"])  # bare and Flower: their evaluations' wall times
    else:
        marks = [p["wall_s"] for p in run["series"][1:]]
    later = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else float("nan")
    return marks[0], later


def markdown(summary: dict[str, Any]) -> str:
    wall = summary["wall_s"]
    acc = summary["accuracy_by_round"]
    lines = [
        f"{summary['devices']} devices, {summary['rounds']} rounds of synchronous FedAvg, "
        f"every device every round; runs in order {' '.join(summary['order'])}; "
        f"flwr {summary['flwr']}.",
        "",
        "| | wall per run (s) | median (s) |",
        "|---|---|---:|",
        f"| fedward | {' / '.join(f'{w:.1f}' for w in wall['fedward'])} "
        f"| {wall['fedward_median']:.1f} |",
        f"| Flower | {' / '.join(f'{w:.1f}' for w in wall['flower'])} "
        f"| {wall['flower_median']:.1f} |",
        *(
            [
                f"| bare loop (the floor) | {' / '.join(f'{w:.1f}' for w in wall['bare'])} "
                f"| {wall['bare_median']:.1f} |",
                "",
                f"bare loop / Flower wall time (medians): {wall['ratio_bare_to_flower']:.2f} "
                "(no simulator running this local work with this training code on these "
                "cores can go below it)",
            ]
            if "bare" in wall
            else []
        ),
        "",
        f"fedward / Flower wall time (medians): **{wall['ratio_fedward_to_flower']:.2f}**; "
        f"load average before each run: "
        f"{', '.join(f'{x:.1f}' for x in summary['load_average_before_each'])}.",
        "",
        "| run | side | wall (s) | load before | to first round (s) | per later round (s) |",
        "|---:|---|---:|---:|---:|---:|",
        *(
            f"| {r['index']} | {r['side']} | {r['wall_s']:.1f} | {r['load_before']:.1f} "
            f"| {round_times(r)[0]:.1f} | {round_times(r)[1]:.2f} |"
            for r in summary["runs"]
        ),
        "",
        "| round | " + " | ".join(str(r) for r in range(len(acc["fedward"]))) + " |",
        "|---|" + "---:|" * len(acc["fedward"]),
        "| fedward | " + " | ".join(f"{a:.4f}" for a in acc["fedward"]) + " |",
        "| Flower | " + " | ".join(f"{a:.4f}" for a in acc["flower"]) + " |",
        *(
            ["| bare | " + " | ".join(f"{a:.4f}" for a in acc["bare"]) + " |"]
            if "bare" in acc
            else []
        ),
        "",
        f"Largest per-round accuracy difference: "
        f"{summary['curves']['max_abs_accuracy_difference']:.4f}; every fedward run identical: "
        f"{summary['fedward_runs_identical']}; every Flower run identical: "
        f"{summary['flower_runs_identical']}.",
        *(
            [
                f"Largest per-round accuracy difference, bare loop vs fedward: "
                f"{summary['curves_bare']['max_abs_accuracy_difference']:.4f}."
            ]
            if "curves_bare" in summary
            else []
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("command", nargs="?", default="compare", choices=["compare", "ours"])
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=3, help="A/B alternations")
    parser.add_argument("--flower-python", default="/tmp/flwr-venv/bin/python")
    parser.add_argument(
        "--no-bare",
        dest="bare",
        action="store_false",
        help="leave out the bare loop (the floor: the same rounds with no framework)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "flower-sbs")
    args = parser.parse_args(argv)
    if args.command == "ours":
        run_ours(args.out, devices=args.devices, rounds=args.rounds, seed=args.seed)
        return
    summary = compare(args)
    print(markdown(summary), flush=True)


if __name__ == "__main__":
    main()
