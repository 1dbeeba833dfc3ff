"""The Flower side: synchronous FedAvg in Flower's Simulation Engine on the shared task.

Runs in its OWN virtual environment (``setup_venv.sh``; Flower pins older
FastAPI and Ray than fedward), never in fedward's, with the repository on
``PYTHONPATH`` for ``fedward.tinytrain`` only (torch and numpy): the model and
the local training step are the very code fedward's devices run.

Flower 1.x's Message API: a ``ServerApp`` whose main runs Flower's own
``flwr.serverapp.strategy.FedAvg`` (``strategy.start`` with a central
``evaluate_fn``), a ``ClientApp`` with a ``@app.train()`` handler, and
``flwr.simulation.run_simulation`` with the Ray backend, one CPU per client
(two clients train at a time on two cores, as fedward's two worker
processes do). Every node trains every round (``fraction_train=1.0``), on
the partition the task file gives its ``partition-id``, from the round's
global model, with the task seed fedward's coordinator gave that device in
that round (``schedule`` in the task file): the same local work, shuffles
included. Flower averages parameters weighted by ``num-examples``, which is
FedAvg's sample-weighted mean.

flwr is imported by name inside ``main``: it exists only in this side's own
environment, and fedward's packages (and their dependency check) never import it.

Usage (``run.py`` does this)::

    PYTHONPATH=.:bench/flower_side_by_side /tmp/flwr-venv/bin/python \
        bench/flower_side_by_side/flower_app.py \
        --task build/flower-sbs/task.npz --out build/flower-sbs/flower-1.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedward.tinytrain.models import ModelConfig, ModelKind, build_model
from fedward.tinytrain.runtime import limit_threads
from fedward.tinytrain.training import LocalTrainConfig, evaluate, train_subset

STARTED = time.perf_counter()

_CACHE: dict[str, Any] = {}  # per process (each Ray actor loads the task once)


def load_task(path: str) -> dict[str, Any]:
    if "task" not in _CACHE:
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            bounds = np.concatenate([[0], np.cumsum(f["counts"])])
            x, y = f["x"], f["y"]
            _CACHE["task"] = {
                "meta": meta,
                "device_x": [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
                "device_y": [y[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
                "test_x": f["test_x"],
                "test_y": f["test_y"],
                "start": {n: f[f"start/{n}"] for n in meta["param_names"]},
            }
            model = meta["model"]
            _CACHE["model"] = build_model(
                ModelConfig(
                    kind=ModelKind(model["kind"]),
                    in_channels=model["in_channels"],
                    window=model["window"],
                    num_classes=model["num_classes"],
                    width=model["width"],
                    hidden=tuple(model["hidden"]),
                ),
                seed=0,
            )
    return _CACHE["task"]


def _flwr(module: str) -> Any:
    return importlib.import_module(module)


def train_handler(msg: Any, context: Any) -> Any:
    """The ClientApp's train handler: one device's local work from the round's model.

    A module-level function, so Ray ships it by reference and each actor keeps
    its loaded task in ``_CACHE`` across messages (as a Flower app does).
    """
    app = _flwr("flwr.app")
    limit_threads(1)  # as fedward's workers (fixed_threads)
    config = msg.content["config"]
    local = load_task(str(config["task"]))
    names: list[str] = local["meta"]["param_names"]
    device = int(context.node_config["partition-id"])
    server_round = int(config["server-round"])
    base = {n: msg.content["arrays"][n].numpy() for n in names}
    seed = local["meta"]["schedule"][str(server_round - 1)][str(device)]
    result = train_subset(
        _CACHE["model"],
        base,
        names,
        local["device_x"][device],
        local["device_y"][device],
        config=LocalTrainConfig(**local["meta"]["train"]),
        seed=int(seed),
    )
    new = {n: (base[n] + result.delta[n]).astype(np.float32) for n in names}
    content = app.RecordDict(
        {
            "arrays": app.ArrayRecord({n: app.Array(v) for n, v in new.items()}),
            "metrics": app.MetricRecord(
                {"num-examples": result.num_samples, "train-loss": result.mean_loss}
            ),
        }
    )
    return app.Message(content=content, reply_to=msg)


def main() -> None:
    parser = argparse.ArgumentParser(description="Flower's side of the side-by-side")
    parser.add_argument("--task", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    task_path = str(args.task.resolve())
    app = _flwr("flwr.app")
    clientapp = _flwr("flwr.clientapp")
    serverapp = _flwr("flwr.serverapp")
    strategies = _flwr("flwr.serverapp.strategy")
    simulation = _flwr("flwr.simulation")
    imported = time.perf_counter()

    task = load_task(task_path)
    meta = task["meta"]
    names: list[str] = meta["param_names"]
    devices, rounds = meta["devices"], meta["rounds"]
    series: list[dict[str, float]] = []

    client = clientapp.ClientApp()
    client.train()(train_handler)

    def central_evaluate(server_round: int, arrays: Any) -> Any:
        params = {n: arrays[n].numpy() for n in names}
        limit_threads(1)
        accuracy, loss = evaluate(_CACHE["model"], params, task["test_x"], task["test_y"])
        series.append(
            {
                "round": server_round,
                "accuracy": accuracy,
                "loss": loss,
                "wall_s": time.perf_counter() - STARTED,
            }
        )
        return app.MetricRecord({"accuracy": accuracy, "loss": loss})

    server = serverapp.ServerApp()

    @server.main()
    def server_main(grid: Any, context: Any) -> None:
        strategy = strategies.FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=devices,
            min_available_nodes=devices,
        )
        start = app.ArrayRecord({n: app.Array(task["start"][n]) for n in names})
        strategy.start(
            grid=grid,
            initial_arrays=start,
            num_rounds=rounds,
            train_config=app.ConfigRecord({"task": task_path}),
            evaluate_fn=central_evaluate,
        )

    simulation_started = time.perf_counter()
    simulation.run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=devices,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": meta["cpus"], "include_dashboard": False},
        },
    )
    finished = time.perf_counter()
    args.out.write_text(
        json.dumps(
            {
                "side": "flower",
                "flwr": importlib.import_module("flwr").__version__,
                "series": series,
                "wall_s": {
                    "imports": imported - STARTED,
                    "simulation": finished - simulation_started,
                    "in_process": finished - STARTED,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    # run as the importable module ``flower_app`` (its folder is on PYTHONPATH), not
    # ``__main__``: Ray then ships train_handler by reference, not by value
    _flwr("flower_app").main()
