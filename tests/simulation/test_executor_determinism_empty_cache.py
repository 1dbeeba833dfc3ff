"""Issue 14 item 1: a seed gives the same figures on any executor and thread count.

Each run starts from its own EMPTY cache, so the warm start and the generated
data are rebuilt every time (a shared cache would hide a warm start that
depends on the machine), and the caller's torch thread count differs between
runs. Ray is compared too when it is installed (``pip install fedward[ray]``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from fedward.simulation.bench import run_benchmark
from fedward.simulation.executor import ExecutorKind
from fedward.simulation.scenario import PRESETS, StrategyRun

TINY = PRESETS["tiny"]
ROWS = (StrategyRun.FTTE,)
MACHINE_DEPENDENT = {"wall_s", "total_wall_s", "provenance"}  # provenance: thread count


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what honestly depends on the machine (wall time)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in MACHINE_DEPENDENT}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(report)


def bench_on_empty_cache(
    kind: ExecutorKind, cache: Path, threads: int, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("FEDWARD_CACHE", str(cache))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return figures(run_benchmark(TINY, runs=ROWS, executor=kind, workers=2))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The serial executor's report at 2 threads on its own empty cache, run once for
    both comparisons (the process run and the Ray run each get their own cache)."""
    cache = tmp_path_factory.mktemp("cache-serial")
    with pytest.MonkeyPatch.context() as monkeypatch:
        return cache, bench_on_empty_cache(ExecutorKind.SERIAL, cache, 2, monkeypatch)


def test_serial_and_process_agree_on_empty_caches_with_different_thread_counts(
    serial: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the serial report at 2 threads (fixture); the process run at 1
    serial_cache, serial_report = serial
    # Execute
    process = bench_on_empty_cache(ExecutorKind.PROCESS, tmp_path / "cache-process", 1, monkeypatch)
    reports = [serial_report, process]
    # Assert
    assert not (serial_cache / "warmstart").samefile(tmp_path / "cache-process" / "warmstart")
    assert reports[0] == reports[1]
    assert (
        reports[0]["scenario"]["warm_start_accuracy"]
        == reports[1]["scenario"]["warm_start_accuracy"]
    )
    assert torch.get_num_threads() >= 1  # the caller's count was restored, not pinned


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_agrees_with_serial_on_empty_caches(
    serial: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    # Prepare: the serial report at 2 threads (fixture)
    _serial_cache, serial_report = serial
    monkeypatch.setenv("FEDWARD_CACHE", str(tmp_path / "ray"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # Execute
        on_ray = bench_on_empty_cache(ExecutorKind.RAY, tmp_path / "ray", 1, monkeypatch)
    finally:
        ray.shutdown()
    # Assert
    assert on_ray == serial_report
