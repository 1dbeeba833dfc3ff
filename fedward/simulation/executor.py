"""Where simulated devices' training jobs run: serially, in local processes, or on Ray.

The simulator submits a job when it dispatches a task (virtual time) and asks
for its result when the update arrives, so jobs of devices that are busy at the
same virtual time run in parallel. Results depend only on the job's inputs and
seed, and every job runs with one intra-op thread (``fixed_threads``), so
every executor gives the same study on any machine.

Workers load the study's data once (from the on-disk cache) in an initializer
and keep it in ``_WORKER`` (per process, set once). The built-in task's device
windows are memory-mapped from the cache file instead of read into each
worker (``mapped_study_data``): every worker then shares one copy through the
page cache and touches only the windows of the devices it trains (10,000
devices are 3.6 GB of windows; read, each worker held its own copy).

Ray: ``RayExecutor(address=...)`` (``make_executor(..., ray_address=...)``)
joins a running cluster (``ray://head:10001`` through Ray Client, ``auto`` or
``host:6379`` on a cluster node); without an address ``ray.init`` reads
``RAY_ADDRESS`` and otherwise starts a local Ray. One actor per CPU the
cluster offers loads the study's data from its node's cache (generated there
from the same seed for the built-in task; a data file must be on every node).
"""

from __future__ import annotations

import enum
import os
import struct
import zipfile
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from fedward.edge.local import LocalOutcome, LocalTask, run_local_task
from fedward.tinytrain.models import ModelConfig, Params, build_model
from fedward.tinytrain.runtime import (
    DETERMINISTIC_THREADS,
    fixed_threads,
    limit_threads,
    torch_threads,
)

from .sensordata import (
    DataConfig,
    StudyData,
    StudyDataConfig,
    cache_dir,
    load_study_data,
    mislabel_devices,
)


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


def _stored_member(path: Path, member: str) -> np.memmap | None:
    """An uncompressed ``.npy`` member of an ``.npz``, memory-mapped in place (None: cannot)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with path.open("rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject:
        return None
    order: Literal["C", "F"] = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order=order, offset=offset)


def mapped_study_data(config: DataConfig) -> StudyData:
    """``load_study_data(config)`` with the built-in task's windows memory-mapped.

    The same arrays (``tests/simulation/test_ray_tiny_study.py`` checks it),
    read-only; any other data source, or a cache file that cannot be mapped,
    is loaded as usual. The held-out set stays empty: workers only train.
    """
    if not isinstance(config, StudyDataConfig):
        return load_study_data(config)
    path = cache_dir() / "datasets" / f"ecg-rhythm-{config.key()}.npz"
    if not path.exists():
        load_study_data(config)  # generate and cache it once
    x = _stored_member(path, "x.npy") if path.exists() else None
    if x is None:
        return load_study_data(config)
    with np.load(path) as f:
        counts, y = f["counts"], f["y"]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    clean = StudyData(
        [x[a:b] for a, b in spans],
        [y[a:b] for a, b in spans],
        np.empty((0, *x.shape[1:]), dtype=x.dtype),
        np.empty(0, dtype=y.dtype),
    )
    return mislabel_devices(clean, config)


def _init_worker(data_config: DataConfig, model_config: ModelConfig, threads: int) -> None:
    limit_threads(threads)
    data = mapped_study_data(data_config)
    _WORKER.update(x=data.device_x, y=data.device_y, model=build_model(model_config, seed=0))


def _run(job: TrainJob) -> LocalOutcome:
    i = job.device_index
    with fixed_threads():  # also in the caller's process (serial executor)
        return run_local_task(
            _WORKER["model"],
            job.base,
            np.array(_WORKER["x"][i]),  # this device's windows, copied out of the mapping
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

        address = address or os.environ.get("RAY_ADDRESS") or None
        if ray.is_initialized() and address is not None:
            # Why: the session this process already holds may be a local Ray, not the
            # cluster asked for; running there silently would report the wrong machine.
            raise ValueError(
                f"Ray is already initialised in this process; cannot join {address!r}: "
                "call ray.shutdown() first or give no address"
            )
        if not ray.is_initialized():
            if address is None:  # a local Ray on this machine
                ray.init(include_dashboard=False, log_to_driver=False)
            else:  # joining a cluster: Ray refuses local-only options such as the dashboard's
                ray.init(address=address, log_to_driver=False)
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
    ray_address: str | None = None,
) -> Executor:
    """The executor of ``kind`` (an ``ExecutorKind`` or its value, e.g. ``"serial"``).

    ``ray_address``: the Ray cluster to join (``ray.init(address=...)``); only
    for ``ExecutorKind.RAY``.
    """
    kind = ExecutorKind(kind)  # a plain string must not fall through to Ray
    if ray_address is not None and kind is not ExecutorKind.RAY:
        raise ValueError(f"ray_address is for the ray executor, not {kind.value}")
    if kind is ExecutorKind.SERIAL:
        return SerialExecutor(data_config, model_config)
    if kind is ExecutorKind.PROCESS:
        return ProcessExecutor(data_config, model_config, workers=workers)
    if kind is ExecutorKind.RAY:
        return RayExecutor(data_config, model_config, address=ray_address)
    raise ValueError(f"no executor for {kind!r}")
