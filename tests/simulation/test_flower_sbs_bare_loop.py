"""The side-by-side's floor (bench/flower_side_by_side/bare_loop.py) runs the same rounds.

Its wall time is only a floor for the frameworks' if it does the same local
work: every device's ``train_subset`` with the seed the schedule gives it in
that round, merged as FedAvg (the sample-weighted mean of deltas). A small
task file, two rounds, checked against the same rounds computed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedward.bench.flower_side_by_side import bare_loop
from fedward.tinytrain.models import ModelConfig, ModelKind, Params, build_model, get_params
from fedward.tinytrain.training import LocalTrainConfig, evaluate, train_subset

MODEL = ModelConfig(kind=ModelKind.CNN, in_channels=3, window=64, num_classes=4, width=4)
TRAIN = {
    "epochs": 1,
    "batch_size": 8,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "prefix_micro_batch": 1,
}
COUNTS = (5, 12, 20)  # a partial batch, several batches, different weights
SCHEDULE = {"0": {"0": 11, "1": 22, "2": 33}, "1": {"0": 44, "1": 55, "2": 66}}


def write_task(path: Path, *, schedule: dict[str, dict[str, int]] | None) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 3, 64)).astype(np.float32) for n in COUNTS]
    ys = [rng.integers(0, 4, n) for n in COUNTS]
    test_x = rng.standard_normal((30, 3, 64)).astype(np.float32)
    test_y = rng.integers(0, 4, 30)
    start = get_params(build_model(MODEL, seed=3))
    meta = {
        "devices": len(COUNTS),
        "rounds": 2,
        "cpus": 2,
        "param_names": list(start),
        "model": {
            "kind": MODEL.kind.value,
            "in_channels": MODEL.in_channels,
            "window": MODEL.window,
            "num_classes": MODEL.num_classes,
            "width": MODEL.width,
            "hidden": list(MODEL.hidden),
        },
        "train": TRAIN,
        "schedule": schedule,
    }
    np.savez(
        path,
        meta=np.array(json.dumps(meta)),
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        counts=np.array(COUNTS),
        test_x=test_x,
        test_y=test_y,
        **{f"start/{n}": v for n, v in start.items()},
    )
    return {"xs": xs, "ys": ys, "test_x": test_x, "test_y": test_y, "start": start}


def fedavg_rounds(task: dict[str, Any]) -> list[Params]:
    """The rounds as FedAvg defines them: w + sum_i n_i delta_i / sum_i n_i."""
    model = build_model(MODEL, seed=0)
    params = task["start"]
    out = [params]
    for round_ in ("0", "1"):
        deltas = [
            train_subset(
                model,
                params,
                list(params),
                task["xs"][d],
                task["ys"][d],
                config=LocalTrainConfig(**TRAIN),
                seed=SCHEDULE[round_][str(d)],
            ).delta
            for d in range(len(COUNTS))
        ]
        total = sum(COUNTS)
        params = {
            n: params[n]
            + sum(c / total * delta[n] for c, delta in zip(COUNTS, deltas, strict=True))
            for n in params
        }
        out.append(params)
    return out


def test_bare_loop_trains_every_device_with_its_scheduled_seed_and_merges_fedavg(
    tmp_path: Path,
) -> None:
    # Prepare
    task = write_task(tmp_path / "task.npz", schedule=SCHEDULE)
    expected = [
        evaluate(build_model(MODEL, seed=0), p, task["test_x"], task["test_y"])
        for p in fedavg_rounds(task)
    ]
    # Execute
    report = bare_loop.run(tmp_path / "task.npz")
    # Assert
    assert [p["round"] for p in report["series"]] == [0, 1, 2]
    got = [(p["accuracy"], p["loss"]) for p in report["series"]]
    for (acc, loss), (want_acc, want_loss) in zip(got, expected, strict=True):
        assert acc == want_acc
        assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    assert got[2][1] != pytest.approx(got[0][1], rel=1e-3)  # the rounds did train


def test_bare_loop_refuses_a_task_without_the_seed_schedule(tmp_path: Path) -> None:
    # Prepare
    write_task(tmp_path / "task.npz", schedule=None)
    # Execute / Assert
    with pytest.raises(SystemExit, match="run fedward's side first"):
        bare_loop.run(tmp_path / "task.npz")
