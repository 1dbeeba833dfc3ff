"""The benchmark: strategies side by side on one scenario and seed.

Every row runs the same fleet, data split, warm start, model, batch size,
optimizer and local work (``Scenario.study_spec``); only the merge rule and, for
FTTE, the subset differ. Figures per row:

- ``time_to_target_s``: virtual seconds until held-out accuracy first reaches
  the scenario's target (evaluated after every merge);
- ``final_accuracy``: mean held-out accuracy over the last tenth of the run;
- ``peak_train_memory_bytes``: the measured peak of a real training step
  (parameters held, gradients, optimizer state, tensors saved for backward and
  the transient forward buffers, from an allocation-level trace:
  ``fedward.tinytrain.memory``) of the subset the most constrained participating
  device class trains; ``peak_train_memory_micro_batch_bytes``: the same subset
  at the smallest micro-batch (one window) with gradient accumulation, what a
  careful user of a small device would run;
- ``memory_by_class`` / ``memory_fits``: per device class, the measured step
  that class runs in this row and whether it is within the class's budget
  (memory-feasible rows: the micro-batch a class uses, or that it sits out);
  (DP rows: measured with Opacus at the scenario's physical batch, per-sample
  gradients included);
- ``upload_bytes_per_update``: mean encoded update frame size;
- ``updates`` accepted and ``wall_s`` of the run on this machine;
- ``gap_closure_s``: virtual seconds until the row closes 50%, 80% and 95% of
  the gap between the warm start (``scenario.warm_start_accuracy``) and
  FedAvg's final accuracy; ``accuracy_auc``: mean held-out accuracy over the
  common horizon (the longest row's virtual time; a row that finished earlier
  keeps its last accuracy), i.e. the area under the accuracy-time curve over
  the horizon. No single threshold decides the verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedward.coordinator.engine import Device
from fedward.tinytrain.dp_memory import dp_training_footprint
from fedward.tinytrain.memory import Footprint

from .executor import ExecutorKind, make_executor
from .feasibility import fitting_micro_batch, step_footprint
from .profiles import DEFAULT_PROFILES
from .provenance import provenance
from .scenario import Scenario, StrategyRun
from .study import Study, StudyResult

# The required rows, the memory-feasible baselines and the DP row; --quick runs
# the rows without DP. Others (ftte_nested, fedasync) are one ``--run`` away.
QUICK_RUNS = (
    StrategyRun.FEDAVG,
    StrategyRun.FEDBUFF,
    StrategyRun.FEDAVG_FEASIBLE,
    StrategyRun.FEDBUFF_FEASIBLE,
    StrategyRun.FTTE,
)
DEFAULT_RUNS = (*QUICK_RUNS, StrategyRun.FTTE_DP)
# secure aggregation beside its references (issue 11): one ``--run`` each, in one run
SECAGG_RUNS = (
    StrategyRun.FTTE,
    StrategyRun.FTTE_DP,
    StrategyRun.FTTE_SECAGG,
    StrategyRun.FTTE_SECAGG_DDP,
)
# issue 11's targets for the secagg rows
SECAGG_TIME_RATIO = 1.15  # time to target within 15% of ftte
SECAGG_UPLOAD_RATIO = 1.2  # upload per update at most 1.2x ftte's
SECAGG_ACCURACY_POINTS = 0.5  # final accuracy within 0.5 points (ftte; ftte+dp for ddp)
GAP_FRACTIONS = (0.5, 0.8, 0.95)

ProgressFactory = Callable[[str, int], Callable[[int, int, float | None], None]]


def constrained_class(scenario: Scenario) -> str:
    """The device class with the least memory among those the fleet mix uses."""
    used = [c for c, w in scenario.mix.items() if w > 0]
    return min(used, key=lambda c: DEFAULT_PROFILES[c].memory_bytes).value


LEVELS = (0.95, 0.96, 0.97, 0.975, 0.98, 0.985)


def time_to_levels(
    series: list[dict[str, float]], levels: Sequence[float] = LEVELS
) -> dict[str, float | None]:
    """Virtual seconds until held-out accuracy first reaches each level (None: never)."""
    return {
        f"{level:g}": next((p["t"] for p in series if p["accuracy"] >= level), None)
        for level in levels
    }


def gap_closure_times(
    series: list[dict[str, float]],
    *,
    start: float,
    reference: float,
    fractions: Sequence[float] = GAP_FRACTIONS,
) -> dict[str, float | None]:
    """Virtual seconds until accuracy first closes each fraction of ``start -> reference``.

    None: never closed, or there is no gap (``reference <= start``).
    """
    out: dict[str, float | None] = {}
    for f in fractions:
        level = start + f * (reference - start)
        reached = next((p["t"] for p in series if p["accuracy"] >= level), None)
        out[f"{f:.0%}"] = reached if reference > start else None
    return out


def accuracy_auc(series: list[dict[str, float]], *, horizon: float) -> float:
    """Mean accuracy over [0, horizon] of the step curve (each evaluation holds until the next)."""
    if horizon <= 0:
        return float(series[0]["accuracy"])
    area = 0.0
    for here, after in zip(series, [*series[1:], None], strict=True):
        end = horizon if after is None else min(after["t"], horizon)
        area += here["accuracy"] * max(0.0, end - min(here["t"], horizon))
    return area / horizon


def measured_footprint(study: Study, names: tuple[str, ...], *, memory_bytes: int) -> Footprint:
    """What one local step of ``names`` holds on a device of this row.

    DP rows are measured with Opacus at the largest physical batch (down from
    the scenario's, halving) that fits the device's memory: what the device
    would run; the mechanism and result do not depend on the physical batch.
    """
    scenario = study.scenario
    if not study.run_kind.dp:
        size = scenario.batch_size
        if study.run_kind.feasible:  # the micro-batch this device would really run
            size = (
                fitting_micro_batch(
                    study.model_config, names, batch_size=size, memory_bytes=memory_bytes
                )
                or 1
            )
        return step_footprint(study.model_config, names, scenario.batch_size, size)
    physical = scenario.dp_max_physical_batch
    while True:
        footprint = dp_training_footprint(
            study.model_config,
            names,
            batch_size=scenario.batch_size,
            max_physical_batch_size=physical,
            noise_multiplier=scenario.dp_noise_multiplier,
            max_grad_norm=scenario.dp_max_grad_norm,
            momentum=scenario.momentum,
        )
        if footprint.total <= memory_bytes or physical == 1:
            return footprint
        physical = max(1, physical // 2)


def memory_by_class(study: Study) -> dict[str, dict[str, Any]]:
    """Per device class: the measured step it runs in this row and whether it fits."""
    out: dict[str, dict[str, Any]] = {}
    for d in study.fleet:
        cls, profile = d.profile.device_class.value, d.profile
        if cls in out:
            continue
        probe = Device(device_id="probe", device_class=cls, memory_bytes=profile.memory_bytes)
        names = study.engine.subset_for(probe).names
        sits_out = study.run_kind.feasible and study.micro_batch_by_class[cls] is None
        footprint = measured_footprint(study, names, memory_bytes=profile.memory_bytes)
        out[cls] = {
            "budget_bytes": profile.memory_bytes,
            "step_bytes": footprint.total,
            "memory_fits": footprint.total <= profile.memory_bytes and not sits_out,
            "micro_batch": study.micro_batch_by_class.get(cls, study.scenario.batch_size),
            "sits_out": sits_out,
        }
    return out


def row(study: Study, result: StudyResult, *, device_class: str) -> dict[str, Any]:
    by_class = memory_by_class(study)
    taking_part = [c for c, m in by_class.items() if not m["sits_out"]]
    if device_class not in taking_part and taking_part:  # feasible rows: the smallest that trains
        device_class = min(taking_part, key=lambda c: by_class[c]["budget_bytes"])
    profile = next(d for d in study.fleet if d.profile.device_class.value == device_class).profile
    probe = Device(device_id="probe", device_class=device_class, memory_bytes=profile.memory_bytes)
    subset = study.engine.subset_for(probe)
    footprint = measured_footprint(study, subset.names, memory_bytes=profile.memory_bytes)
    micro = step_footprint(study.model_config, subset.names, study.scenario.batch_size, 1)
    return {
        "time_to_target_s": result.time_to_target_s,
        "final_accuracy": result.final_accuracy,
        "peak_train_memory_bytes": footprint.total,
        "peak_train_memory_micro_batch_bytes": micro.total,
        "memory_fits": {c: m["memory_fits"] for c, m in by_class.items()},
        "memory_by_class": by_class,
        "upload_bytes_per_update": result.upload_bytes_per_update,
        "updates": result.updates,
        "wall_s": result.wall_s,
        "time_to_accuracy_s": time_to_levels(result.series),
        "memory_breakdown": footprint.as_dict(),
        "constrained_device_memory_bytes": profile.memory_bytes,
        "constrained_class": device_class,
        "constrained_subset": {
            "tier": subset.tier,
            "subset_id": subset.subset_id,
            "names": list(subset.names),
        },
        "merges": result.merges,
        "failed_tasks": result.failed_tasks,
        "rejected": result.rejected,
        "virtual_time_s": result.virtual_time_s,
        "download_bytes_total": result.download_bytes,
        "updates_by_class": result.updates_by_class,
        "subset_by_class": result.subset_by_class,
        "by_class": result.by_class,  # participation, staleness, memory (fedward report)
        "epsilon_series": result.epsilon_series,
        "series": result.series,
        **(
            {"exhausted_devices": result.exhausted_devices, "privacy": result.privacy}
            if study.run_kind.dp or study.run_kind.distributed_dp
            else {}
        ),
        **({"secagg": result.secagg} if study.run_kind.secagg else {}),
    }


def run_benchmark(
    scenario: Scenario,
    *,
    runs: Sequence[StrategyRun] = DEFAULT_RUNS,
    executor: ExecutorKind = ExecutorKind.PROCESS,
    workers: int | None = None,
    progress: ProgressFactory | None = None,
    ledger_dir: Path | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Every row on ``scenario``; DP rows write their privacy ledger into ``ledger_dir``
    (``fedward budget report --study <row's study> --data-dir <ledger_dir>`` reads it)."""
    started = time.perf_counter()
    # taken before the run: a source file edited while it runs must not be credited with it
    origin = provenance()
    spec = scenario.study_spec(runs[0])
    pool = make_executor(
        executor,
        scenario.data_config(),
        spec.model_settings(),
        workers=workers,
        ray_address=ray_address,
    )
    device_class = constrained_class(scenario)
    strategies: dict[str, Any] = {}
    try:
        for run in runs:
            callback = progress(run.value, scenario.update_budget) if progress else None
            study = Study(scenario, run, executor=pool, progress=callback)
            strategies[run.value] = row(study, study.run(), device_class=device_class)
            ledger = study.save_privacy_ledger(ledger_dir) if ledger_dir is not None else None
            if ledger is not None:
                strategies[run.value]["privacy_ledger"] = {
                    "study": study.spec.name,
                    "file": str(ledger),
                }
    finally:
        pool.close()
    warm = next(iter(strategies.values()))["series"][0]["accuracy"]
    add_gap_metrics(strategies, warm_start=warm)
    return {
        "scenario": {
            "name": scenario.name,
            "devices": scenario.devices,
            "straggler_fraction": scenario.straggler_fraction,
            "target_accuracy": scenario.target_accuracy,
            "warm_start_accuracy": warm,
            "seed": scenario.seed,
            "settings": scenario.model_dump(mode="json"),
        },
        "strategies": strategies,
        "total_wall_s": time.perf_counter() - started,
        "provenance": origin,
    }


def add_gap_metrics(strategies: dict[str, dict[str, Any]], *, warm_start: float) -> None:
    """Gap-closure times (against FedAvg's final accuracy) and the AUC, added to every row."""
    reference = strategies["fedavg"]["final_accuracy"] if "fedavg" in strategies else None
    horizon = max(r["virtual_time_s"] for r in strategies.values())
    for r in strategies.values():
        r["gap_closure_s"] = (
            gap_closure_times(r["series"], start=warm_start, reference=reference)
            if reference is not None
            else None
        )
        r["accuracy_auc"] = accuracy_auc(r["series"], horizon=horizon)
        r["auc_horizon_s"] = horizon


def ratios(
    report: dict[str, Any], *, of: str = "ftte", to: str = "fedavg"
) -> dict[str, float | None]:
    a, b = report["strategies"][of], report["strategies"][to]
    t = (
        a["time_to_target_s"] / b["time_to_target_s"]
        if a["time_to_target_s"] is not None and b["time_to_target_s"]
        else None
    )
    return {
        "time_to_target": t,
        "peak_train_memory": a["peak_train_memory_bytes"] / b["peak_train_memory_bytes"],
        "peak_train_memory_vs_micro_batch": a["peak_train_memory_bytes"]
        / b["peak_train_memory_micro_batch_bytes"],
        "upload_bytes_per_update": a["upload_bytes_per_update"] / b["upload_bytes_per_update"],
        "final_accuracy_points": 100 * (a["final_accuracy"] - b["final_accuracy"]),
    }


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _code_line(found: dict[str, Any] | None) -> str:
    """`` Code: <digest>, git <commit>[ (dirty)].`` for the table's caption ('' if unknown)."""
    if not found:
        return ""
    commit = found.get("git_commit")
    git = (
        ""
        if commit is None
        else f", git {commit[:10]}" + (" (dirty)" if found.get("git_dirty") else "")
    )
    return f" Code: {found['code_digest'][:12]}{git}."


def verdict_table(report: dict[str, Any]) -> str:
    """The benchmark's markdown table: gap closure, AUC, memory (and whether it fits), upload."""
    rows = report["strategies"]
    fedavg, feasible = rows.get("fedavg"), rows.get("fedbuff_feasible")
    fedbuff = rows.get("fedbuff")
    scenario = report["scenario"]
    lines = [
        f"Scenario `{scenario['name']}`, seed {scenario['seed']}: warm start "
        f"{scenario['warm_start_accuracy']:.4f}, target {scenario['target_accuracy']:g}. "
        "Gap = warm start to FedAvg's final accuracy; memory = measured step peak of the "
        "most constrained class that trains; fits = wearable / phone / gateway."
        + _code_line(report.get("provenance")),
        "",
        "| row | final acc | vs FedBuff (pts) | vs feasible FedBuff (pts) | 50% / 80% / 95% of gap (s) "
        "| accuracy AUC | memory (B) | vs FedAvg at 32 / at 1 window | fits W/P/G | upload vs FedAvg |",
        "|---|---:|---:|---:|---|---:|---:|---|---|---:|",
    ]
    for name, r in rows.items():
        gap = r.get("gap_closure_s") or {}
        closes = " / ".join(_cell(gap.get(k), ".0f") for k in ("50%", "80%", "95%"))
        fits = "/".join(
            ("-" if m["sits_out"] else "yes" if m["memory_fits"] else "no")
            for _, m in sorted(r["memory_by_class"].items(), key=lambda kv: kv[1]["budget_bytes"])
        )
        mem = r["peak_train_memory_bytes"]
        lines.append(
            f"| {name} | {r['final_accuracy']:.4f} "
            f"| {_cell(fedbuff and 100 * (r['final_accuracy'] - fedbuff['final_accuracy']), '+.2f')} "
            f"| {_cell(feasible and 100 * (r['final_accuracy'] - feasible['final_accuracy']), '+.2f')} "
            f"| {closes} | {r['accuracy_auc']:.4f} | {mem:,} "
            f"| {_cell(fedavg and mem / fedavg['peak_train_memory_bytes'], '.3f')} / "
            f"{_cell(fedavg and mem / fedavg['peak_train_memory_micro_batch_bytes'], '.3f')} "
            f"| {fits} "
            f"| {_cell(fedavg and r['upload_bytes_per_update'] / fedavg['upload_bytes_per_update'], '.3f')} |"
        )
    return "\n".join(lines) + "\n" + secagg_table(report)


def secagg_verdict(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each secagg row against issue 11's targets (None: the reference row is missing)."""
    rows = report["strategies"]
    ftte, dp = rows.get("ftte"), rows.get("ftte+dp")
    out: dict[str, dict[str, Any]] = {}
    for name in ("ftte+secagg", "ftte+secagg+ddp"):
        r = rows.get(name)
        if r is None or ftte is None:
            continue
        accuracy_ref = dp if name.endswith("+ddp") else ftte
        t, t_ref = r["time_to_target_s"], ftte["time_to_target_s"]
        time_ratio = t / t_ref if t is not None and t_ref else None
        # where neither reaches the target: the time to the accuracy ftte converges to
        level = ftte["final_accuracy"]
        reached = time_to_levels(r["series"], (level,))[f"{level:g}"]
        reached_ref = time_to_levels(ftte["series"], (level,))[f"{level:g}"]
        upload = r["upload_bytes_per_update"] / ftte["upload_bytes_per_update"]
        points = (
            100 * (r["final_accuracy"] - accuracy_ref["final_accuracy"])
            if accuracy_ref is not None
            else None
        )
        out[name] = {
            "time_to_target_ratio": time_ratio,
            "time_met": time_ratio is not None and time_ratio <= SECAGG_TIME_RATIO,
            "target_reached": (t is not None, t_ref is not None),
            "reference_level": level,
            "time_to_reference_level_s": reached,
            "time_to_reference_level_ratio": (
                reached / reached_ref if reached is not None and reached_ref else None
            ),
            "upload_ratio": upload,
            "upload_met": upload <= SECAGG_UPLOAD_RATIO,
            "accuracy_points": points,
            "accuracy_reference": "ftte+dp" if name.endswith("+ddp") else "ftte",
            "accuracy_met": points is not None and points >= -SECAGG_ACCURACY_POINTS,
            "cohort": r.get("secagg", {}).get("cohort"),
            "epsilon_max": r.get("privacy", {}).get("epsilon_max"),
            "reference_epsilon_max": (dp or {}).get("privacy", {}).get("epsilon_max"),
        }
    return out


def _by_class(r: dict[str, Any]) -> str:
    """Updates merged from wearables / phones / gateways (who the fills let in)."""
    counts = r.get("updates_by_class", {})
    return "/".join(str(counts.get(c, 0)) for c in ("wearable", "phone", "gateway"))


def secagg_table(report: dict[str, Any]) -> str:
    """The secagg rows' targets (issue 11) as markdown; empty without secagg rows."""
    verdict = secagg_verdict(report)
    if not verdict:
        return ""
    rows = report["strategies"]
    lines = [
        "",
        "Secure aggregation against issue 11's targets (time to target vs ftte <= "
        f"{SECAGG_TIME_RATIO:g}x, upload per update <= {SECAGG_UPLOAD_RATIO:g}x ftte's, final "
        f"accuracy within {SECAGG_ACCURACY_POINTS:g} points of ftte, of ftte+dp for ddp):",
        "",
        "| row | cohort | time to target (s) | vs ftte | time to ftte's final acc (s) | vs ftte "
        "| upload / update (B) | vs ftte | final acc | vs reference (pts) "
        "| epsilon max (reference) | fills merged / aborted | updates W/P/G (ftte's) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for name, v in verdict.items():
        r = rows[name]
        sa = r.get("secagg", {})

        def mark(ok: bool) -> str:
            return "" if ok else " (miss)"

        eps = v["epsilon_max"]
        ref_eps = v["reference_epsilon_max"]
        time_mark = mark(v["time_met"]) if any(v["target_reached"]) else " (neither reached)"
        lines.append(
            f"| {name} | {v['cohort']} | {_cell(r['time_to_target_s'], '.0f')} "
            f"| {_cell(v['time_to_target_ratio'], '.3f')}{time_mark} "
            f"| {_cell(v['time_to_reference_level_s'], '.0f')} "
            f"| {_cell(v['time_to_reference_level_ratio'], '.3f')} "
            f"| {r['upload_bytes_per_update']:,.0f} | {v['upload_ratio']:.3f}{mark(v['upload_met'])} "
            f"| {r['final_accuracy']:.4f} "
            f"| {_cell(v['accuracy_points'], '+.2f')} vs {v['accuracy_reference']}"
            f"{mark(v['accuracy_met'])} "
            f"| {_cell(eps, '.2f')} ({_cell(ref_eps, '.2f')}) "
            f"| {sa.get('fills_merged', '-')} / {sa.get('fills_aborted', '-')} "
            f"| {_by_class(r)} ({_by_class(rows['ftte'])}) |"
        )
    return "\n".join(lines) + "\n"
