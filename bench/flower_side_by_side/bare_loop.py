"""The floor: the same synchronous FedAvg as a hand-written loop, with no framework at all.

What any simulator doing the same local work must spend at least: the same
task file, model, warm start, training code (``fedward.tinytrain.training.
train_subset``), per-device per-round seeds and held-out evaluation after every
round as both frameworks' sides, run by the least machinery possible: a
``multiprocessing`` pool of two forked workers (one torch thread each) that
train the round's devices, and a sample-weighted mean of their deltas in
the parent. No protocol frames, no engine, no virtual clock, no memory
planner, no Ray, no SuperLink.

Its wall time says how much of either framework's time is framework: if
this loop alone takes more than a third of Flower's wall time, no simulator
running the same local work with the same training code on the same cores can
reach 1/3 of Flower's wall time (only faster local training could).

Runs in either virtual environment (it imports only ``fedward.tinytrain``,
torch and numpy); ``run.py`` runs it in fedward's as the third side.

Usage (``run.py`` does this)::

    .venv/bin/python bench/flower_side_by_side/bare_loop.py \
        --task build/flower-sbs/task.npz --out build/flower-sbs/bare-2.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()

import numpy as np  # noqa: E402  (timed from the interpreter's start, as the other sides)

from fedward.tinytrain.models import ModelConfig, ModelKind, Params, build_model  # noqa: E402
from fedward.tinytrain.runtime import limit_threads  # noqa: E402
from fedward.tinytrain.training import LocalTrainConfig, evaluate, train_subset  # noqa: E402

_TASK: dict[str, Any] = {}  # per process: set once by ``load`` (forked into the workers)


def load(path: Path) -> dict[str, Any]:
    """The task file: each device's windows, the held-out set, the warm start, the seeds."""
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        if meta.get("schedule") is None:
            raise SystemExit(f"{path} has no seed schedule: run fedward's side first (run.py does)")
        bounds = np.concatenate([[0], np.cumsum(f["counts"])])
        x, y = f["x"], f["y"]
        spans = list(zip(bounds[:-1], bounds[1:], strict=True))
        model = meta["model"]
        return {
            "meta": meta,
            "device_x": [x[a:b] for a, b in spans],
            "device_y": [y[a:b] for a, b in spans],
            "test_x": f["test_x"],
            "test_y": f["test_y"],
            "start": {n: f[f"start/{n}"] for n in meta["param_names"]},
            "model": build_model(
                ModelConfig(
                    kind=ModelKind(model["kind"]),
                    in_channels=model["in_channels"],
                    window=model["window"],
                    num_classes=model["num_classes"],
                    width=model["width"],
                    hidden=tuple(model["hidden"]),
                ),
                seed=0,
            ),
        }


def _train(job: tuple[int, int, Params]) -> tuple[int, Params, int]:
    """One device's local work (in a worker): its delta and sample count."""
    device, seed, base = job
    task = _TASK
    names: list[str] = task["meta"]["param_names"]
    result = train_subset(
        task["model"],
        base,
        names,
        task["device_x"][device],
        task["device_y"][device],
        config=LocalTrainConfig(**task["meta"]["train"]),
        seed=seed,
    )
    return device, result.delta, result.num_samples


def _init_worker() -> None:
    limit_threads(1)  # one torch thread per worker, as both frameworks' sides


def run(task_path: Path) -> dict[str, Any]:
    _TASK.update(load(task_path))
    meta = _TASK["meta"]
    names: list[str] = meta["param_names"]
    devices, rounds, cpus = int(meta["devices"]), int(meta["rounds"]), int(meta["cpus"])
    limit_threads(1)
    params: Params = {n: np.array(v, dtype=np.float32) for n, v in _TASK["start"].items()}
    series: list[dict[str, float]] = []

    def evaluated(round_: int) -> None:
        accuracy, loss = evaluate(_TASK["model"], params, _TASK["test_x"], _TASK["test_y"])
        series.append(
            {
                "round": round_,
                "accuracy": accuracy,
                "loss": loss,
                "wall_s": time.perf_counter() - STARTED,
            }
        )

    evaluated(0)
    set_up = time.perf_counter()
    # fork: the workers inherit the loaded task instead of reading it again
    with multiprocessing.get_context("fork").Pool(cpus, initializer=_init_worker) as pool:
        for round_ in range(rounds):
            seeds = meta["schedule"][str(round_)]
            jobs = [(d, int(seeds[str(d)]), params) for d in range(devices)]
            results = sorted(pool.map(_train, jobs, chunksize=1), key=lambda r: r[0])
            total = float(sum(n for _, _, n in results))
            merged: Params = {}
            for name in names:
                step = np.zeros_like(params[name])
                for _, delta, n in results:
                    step += np.float32(n / total) * delta[name]
                merged[name] = params[name] + step
            params = merged
            evaluated(round_ + 1)
    finished = time.perf_counter()
    return {
        "side": "bare",
        "series": series,
        "wall_s": {
            "setup": set_up - STARTED,
            "simulation": finished - set_up,
            "in_process": finished - STARTED,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="The floor: a bare FedAvg loop, no framework")
    parser.add_argument("--task", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.write_text(json.dumps(run(args.task.resolve()), indent=2))


if __name__ == "__main__":
    main()
