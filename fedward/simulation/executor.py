"""Where simulated devices' training jobs run: serially, in local processes, or on Ray.

The simulator submits a job when it dispatches a task (virtual time) and asks
for its result when the update arrives, so jobs of devices that are busy at the
same virtual time run in parallel. Results depend only on the job's inputs and
seed, and every job runs with one intra-op thread (``fixed_threads``), so
every executor gives the same study on any machine.

Workers load the study's data once (from the on-disk cache) in an initializer;
each worker process holds its own copy in ``_WORKER`` (per process, set once).
"""

from __future__ import annotations

import enum
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from fedward.edge.local import LocalOutcome, LocalTask, run_local_task
from fedward.tinytrain.models import ModelConfig, Params, build_model
from fedward.tinytrain.runtime import (
    DETERMINISTIC_THREADS,
    fixed_threads,
    limit_threads,
    torch_threads,
)

from .sensordata import DataConfig, load_study_data


@dataclass(frozen=True)
class TrainJob:
    device_index: int
    base: Params
    task: LocalTask
    accountant_state: dict[str, Any] | None = None


class ExecutorKind(enum.StrEnum):
    SERIAL = "serial"
    PROCESS = "process"
    RAY = "ray"


class JobHandle(Protocol):
    def result(self) -> LocalOutcome: ...


class Executor(Protocol):
    def submit(self, job: TrainJob) -> JobHandle: ...
    def close(self) -> None: ...


_WORKER: dict[str, Any] = {}


def _init_worker(data_config: DataConfig, model_config: ModelConfig, threads: int) -> None:
    limit_threads(threads)
    data = load_study_data(data_config)
    _WORKER.update(x=data.device_x, y=data.device_y, model=build_model(model_config, seed=0))


def _run(job: TrainJob) -> LocalOutcome:
    i = job.device_index
    with fixed_threads():  # also in the caller's process (serial executor)
        return run_local_task(
            _WORKER["model"],
            job.base,
            _WORKER["x"][i],
            _WORKER["y"][i],
            job.task,
            accountant_state=job.accountant_state,
        )


class _Deferred:
    """A job run on first ``result()`` (serial executor)."""

    def __init__(self, job: TrainJob) -> None:
        self._job = job
        self._outcome: LocalOutcome | None = None

    def result(self) -> LocalOutcome:
        if self._outcome is None:
            self._outcome = _run(self._job)
        return self._outcome


class SerialExecutor:
    def __init__(self, data_config: DataConfig, model_config: ModelConfig) -> None:
        # the caller's thread count is left alone: each job pins its own (``_run``)
        _init_worker(data_config, model_config, threads=torch_threads())

    def submit(self, job: TrainJob) -> JobHandle:
        return _Deferred(job)

    def close(self) -> None:
        return None


class ProcessExecutor:
    def __init__(
        self, data_config: DataConfig, model_config: ModelConfig, *, workers: int | None = None
    ) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=workers or os.cpu_count() or 1,
            initializer=_init_worker,
            initargs=(data_config, model_config, DETERMINISTIC_THREADS),
        )

    def submit(self, job: TrainJob) -> Future[LocalOutcome]:
        return self._pool.submit(_run, job)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayExecutor:
    """Runs jobs as Ray tasks (``pip install fedward[ray]``), on one machine or a cluster."""

    def __init__(
        self, data_config: DataConfig, model_config: ModelConfig, *, address: str | None = None
    ) -> None:
        import ray  # optional dependency

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self._ray = ray

        class _Worker:
            def __init__(self) -> None:
                _init_worker(data_config, model_config, threads=DETERMINISTIC_THREADS)

            def run(self, job: TrainJob) -> LocalOutcome:
                return _run(job)

        # ray.remote(cls), not @ray.remote: the decorator's actor class is what
        # has .remote(), and mypy keeps a decorated class's own type.
        worker_actor = ray.remote(_Worker)
        count = max(1, int(ray.available_resources().get("CPU", 1)))
        # typed Any: Ray's actor handles are typed per method, which mypy cannot follow here
        self._workers: list[Any] = [worker_actor.remote() for _ in range(count)]
        self._next = 0

    def submit(self, job: TrainJob) -> JobHandle:
        worker = self._workers[self._next % len(self._workers)]
        self._next += 1
        ref = worker.run.remote(job)
        ray = self._ray

        class _Handle:
            def result(self) -> LocalOutcome:
                return ray.get(ref)

        return _Handle()

    def close(self) -> None:
        self._workers = []


def make_executor(
    kind: ExecutorKind | str,
    data_config: DataConfig,
    model_config: ModelConfig,
    *,
    workers: int | None = None,
) -> Executor:
    """The executor of ``kind`` (an ``ExecutorKind`` or its value, e.g. ``"serial"``)."""
    kind = ExecutorKind(kind)  # a plain string must not fall through to Ray
    if kind is ExecutorKind.SERIAL:
        return SerialExecutor(data_config, model_config)
    if kind is ExecutorKind.PROCESS:
        return ProcessExecutor(data_config, model_config, workers=workers)
    if kind is ExecutorKind.RAY:
        return RayExecutor(data_config, model_config)
    raise ValueError(f"no executor for {kind!r}")
