"""Scale: one strategy on a fleet of N simulated devices (90% stragglers), wall time measured.

The study is the ``full`` benchmark scenario (same task, model, local work,
warm start, device classes and straggler slowdowns) with the fleet grown to
``--devices`` and the federation sized with it: ``concurrency`` tasks in flight
(default N/50), a buffer of ``buffer_size`` updates per merge (default
concurrency/5, the full preset's ratio) and an update budget (default N: on
average one update per device). Every device has its own generated data
(24-96 ten-second windows of ECG, PPG and motion), profile and straggler
slowdown, and is enrolled with the coordinator's engine; every update is a
real training job on that device's data, encoded and decoded as a real frame.

Wall time is split into its phases: data generation (once; cached under
``$FEDWARD_CACHE``, reported as ``cached`` when it was already there), the
executor's start (workers load the data), the study's setup (fleet, warm
start, the planner's measured subsets) and the simulation itself. The load
average of the machine before and after is recorded beside the figures: the
wall time of a run on a shared machine says as much about the other jobs as
about the simulator.

Usage::

    python -m fedward.bench.scale --devices 10000 --json runs/scale/scale-10000.json
    python -m fedward.bench.scale --devices 1000 --profile runs/scale/profile-1000.txt
    python -m fedward.bench.scale --devices 10000 --executor ray                  # local Ray
    python -m fedward.bench.scale --devices 10000 --executor ray --ray-address ray://head:10001
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import time
from pathlib import Path
from typing import Any

from fedward.simulation.executor import ExecutorKind, make_executor, mapped_study_data
from fedward.simulation.scenario import PRESETS, Scenario, StrategyRun
from fedward.simulation.sensordata import StudyDataConfig, cache_dir
from fedward.simulation.study import Study


def scale_scenario(
    *,
    devices: int,
    updates: int | None = None,
    concurrency: int | None = None,
    buffer_size: int | None = None,
    straggler_fraction: float = 0.9,
    seed: int = 0,
) -> Scenario:
    """The ``full`` scenario with ``devices`` devices and a federation sized to match."""
    in_flight = concurrency or max(10, devices // 50)
    return PRESETS["full"].model_copy(
        update={
            "name": f"ecg-rhythm-scale-{devices}",
            "devices": devices,
            "straggler_fraction": straggler_fraction,
            "concurrency": in_flight,
            "buffer_size": buffer_size or max(2, in_flight // 5),
            "update_budget": updates or devices,
            "seed": seed,
        }
    )


def load_average() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": one, "5min": five, "15min": fifteen}


def _data_cached(scenario: Scenario) -> bool:
    config = scenario.data_config()
    if not isinstance(config, StudyDataConfig):
        return True
    return (cache_dir() / "datasets" / f"ecg-rhythm-{config.key()}.npz").exists()


def _peak_rss_bytes() -> dict[str, int]:
    """Peak resident memory of this process and of its largest finished child (Linux: KiB)."""
    return {
        "main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "largest_child": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


def run_scale(
    scenario: Scenario,
    *,
    run: StrategyRun = StrategyRun.FTTE,
    executor: ExecutorKind = ExecutorKind.PROCESS,
    workers: int | None = None,
    ray_address: str | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One row on ``scenario``; wall seconds per phase, the load average and the study's figures."""
    load_before = load_average()
    started = time.perf_counter()
    cached = _data_cached(scenario)
    # generated once here, so that the workers below map it from the cache
    # instead of each generating it
    data = mapped_study_data(scenario.data_config())
    windows = sum(len(y) for y in data.device_y)
    del data
    generated = time.perf_counter()
    pool = make_executor(
        executor,
        scenario.data_config(),
        scenario.study_spec(run).model_settings(),
        workers=workers,
        ray_address=ray_address,
    )
    profiler = cProfile.Profile() if profile is not None else None
    try:
        pool_ready = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        study = Study(scenario, run, executor=pool)
        set_up = time.perf_counter()
        result = study.run()
        if profiler is not None:
            profiler.disable()
    finally:
        pool.close()
    finished = time.perf_counter()
    if profiler is not None and profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(30)
        profile.write_text(text.getvalue())
    stragglers = sum(d.straggler for d in study.fleet)
    return {
        "kind": "scale",
        "run": run.value,
        "executor": ExecutorKind(executor).value,
        "workers": workers or (os.cpu_count() if executor is ExecutorKind.PROCESS else None),
        "ray_address": ray_address,
        "cpu_count": os.cpu_count(),
        "devices": scenario.devices,
        "stragglers": stragglers,
        "windows": windows,
        "concurrency": scenario.concurrency,
        "buffer_size": scenario.buffer_size,
        "update_budget": scenario.update_budget,
        "data_was_cached": cached,
        "wall_s": {
            "data": generated - started,
            "executor_start": pool_ready - generated,
            "study_setup": set_up - pool_ready,
            "simulation": result.wall_s,
            "total": finished - started,
        },
        "jobs_per_wall_s": (result.updates + result.failed_tasks) / max(result.wall_s, 1e-9),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "peak_rss_bytes": _peak_rss_bytes(),
        "result": {
            "final_accuracy": result.final_accuracy,
            "warm_start_accuracy": result.series[0]["accuracy"],
            "updates": result.updates,
            "merges": result.merges,
            "failed_tasks": result.failed_tasks,
            "virtual_time_s": result.virtual_time_s,
            "participating_devices": sum(
                c["participating_devices"] for c in result.by_class.values()
            ),
            "updates_by_class": result.updates_by_class,
            "upload_bytes_per_update": result.upload_bytes_per_update,
            "series": result.series,
        },
        "scenario": scenario.model_dump(mode="json"),
    }


def summary_line(report: dict[str, Any]) -> str:
    wall, res, load = report["wall_s"], report["result"], report["load_average_after"]
    return (
        f"{report['devices']:,} devices ({report['stragglers']:,} stragglers), "
        f"{report['run']} on {report['executor']}: {res['updates']:,} updates "
        f"({res['participating_devices']:,} devices took part), final accuracy "
        f"{res['final_accuracy']:.4f} (warm start {res['warm_start_accuracy']:.4f}); wall "
        f"{wall['total'] / 60:.1f} min = data {wall['data']:.0f} s"
        f"{' (cached)' if report['data_was_cached'] else ''} + executor "
        f"{wall['executor_start']:.0f} s + setup {wall['study_setup']:.0f} s + simulation "
        f"{wall['simulation']:.0f} s ({report['jobs_per_wall_s']:.1f} jobs/s); load average "
        f"{report['load_average_before']['1min']:.1f} before, {load['1min']:.1f} / "
        f"{load['5min']:.1f} / {load['15min']:.1f} after (1/5/15 min) on "
        f"{report['cpu_count']} CPUs"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--devices", type=int, action="append", help="repeat for several points")
    parser.add_argument("--updates", type=int, help="update budget (default: devices)")
    parser.add_argument("--concurrency", type=int, help="tasks in flight (default: devices/50)")
    parser.add_argument("--buffer-size", type=int, help="updates per merge (concurrency/5)")
    parser.add_argument("--stragglers", type=float, default=0.9, help="straggler fraction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--run", type=StrategyRun, default=StrategyRun.FTTE, choices=list(StrategyRun)
    )
    parser.add_argument(
        "--executor", type=ExecutorKind, default=ExecutorKind.PROCESS, choices=list(ExecutorKind)
    )
    parser.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    parser.add_argument("--ray-address", help="Ray cluster to join (ray.init(address=...))")
    parser.add_argument("--profile", type=Path, help="cProfile the main process, write the top")
    parser.add_argument("--json", type=Path, help="write the report(s) here")
    args = parser.parse_args(argv)
    if args.ray_address and args.executor is not ExecutorKind.RAY:
        parser.error("--ray-address needs --executor ray")
    reports = []
    for devices in args.devices or [10_000]:
        scenario = scale_scenario(
            devices=devices,
            updates=args.updates,
            concurrency=args.concurrency,
            buffer_size=args.buffer_size,
            straggler_fraction=args.stragglers,
            seed=args.seed,
        )
        report = run_scale(
            scenario,
            run=args.run,
            executor=args.executor,
            workers=args.workers,
            ray_address=args.ray_address,
            profile=args.profile,
        )
        print(summary_line(report), flush=True)
        reports.append(report)
        if args.json is not None:  # after every point: a long run keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"points": reports}, indent=2))


if __name__ == "__main__":
    main()
