"""Benchmark figures over several seeds: one table from several ``fedward bench`` reports.

A single seed fixes one fleet, one data split and one timing draw; time to a
target in particular can jump by a whole plateau between seeds. Run the
benchmark once per seed, then summarise::

    for s in 0 1 2; do fedward bench --seed $s --json runs/bench-s$s/bench.json; done
    python -m fedward.bench.seeds runs/bench-s*/bench.json [--markdown runs/bench-seeds.md]

``fedward bench --seeds N`` does both in one command. For every row it reports
each seed's value and the median, range (min-max) and mean of the ratios to
FedAvg (time, memory at the study's batch and at one window with gradient
accumulation, upload), of the accuracy gaps (in points) to FedAvg, FedBuff and
the memory-feasible FedBuff, of the warm start and of the accuracy AUC.
Headline tables quote medians. Reports must share the scenario apart from its
seed; anything else is refused.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from fedward.errors import SimulationError

Report = dict[str, Any]


class IncomparableReports(SimulationError, ValueError):
    """The reports are not the same benchmark under different seeds."""


def load_reports(paths: list[Path]) -> list[Report]:
    reports = [json.loads(p.read_text()) for p in paths]
    if not reports:
        raise IncomparableReports("no reports given")
    settings = [_settings(path, r) for path, r in zip(paths, reports, strict=True)]
    for path, report, own in zip(paths, reports, settings, strict=True):
        if {k: v for k, v in own.items() if k != "seed"} != {
            k: v for k, v in settings[0].items() if k != "seed"
        }:
            raise IncomparableReports(f"{path}: scenario differs from {paths[0]} beyond its seed")
        if set(report["strategies"]) != set(reports[0]["strategies"]):
            raise IncomparableReports(f"{path}: rows {sorted(report['strategies'])} differ")
    seeds = [own["seed"] for own in settings]
    if len(set(seeds)) != len(seeds):
        raise IncomparableReports(f"each report needs its own seed, got {seeds}")
    return sorted(reports, key=_seed)


def _settings(path: Path, report: Report) -> dict[str, Any]:
    try:
        settings = report["scenario"]["settings"]
        int(settings["seed"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IncomparableReports(
            f"{path}: not a fedward bench report (no scenario settings)"
        ) from exc
    return settings


def _seed(report: Report) -> int:
    return int(report["scenario"]["settings"]["seed"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known and len(known) == len(values) else None


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known and len(known) == len(values) else None


def _range(values: list[float | None]) -> tuple[float, float] | None:
    known = [v for v in values if v is not None]
    return (min(known), max(known)) if known and len(known) == len(values) else None


def _time_mean(per_seed: list[dict[str, Any]]) -> float | None:
    """Mean time ratio over the seeds where it is defined.

    A seed whose warm start already meets the target (FedAvg's time is 0) has
    no ratio and is left out, and said so; a row that never reached the target
    on some seed has no mean at all (averaging only the seeds it reached would
    flatter it).
    """
    counted = [p for p in per_seed if not p["started_at_target"]]
    return _mean([p["time_vs_fedavg"] for p in counted])


def summarise(reports: list[Report]) -> dict[str, dict[str, Any]]:
    """row -> per-seed figures and their means (ratios and gaps against FedAvg/FedBuff)."""
    summary: dict[str, dict[str, Any]] = {}
    for row in reports[0]["strategies"]:
        per_seed = []
        for report in reports:
            s, rows = report["strategies"][row], report["strategies"]
            fedavg, fedbuff = rows.get("fedavg"), rows.get("fedbuff")
            feasible = rows.get("fedbuff_feasible")
            per_seed.append(
                {
                    "seed": _seed(report),
                    "time_to_target_s": s["time_to_target_s"],
                    "final_accuracy": s["final_accuracy"],
                    "time_vs_fedavg": _ratio(
                        s["time_to_target_s"], fedavg and fedavg["time_to_target_s"]
                    ),
                    "started_at_target": bool(fedavg) and fedavg["time_to_target_s"] == 0,
                    "memory_vs_fedavg": _ratio(
                        s["peak_train_memory_bytes"], fedavg and fedavg["peak_train_memory_bytes"]
                    ),
                    "upload_vs_fedavg": _ratio(
                        s["upload_bytes_per_update"], fedavg and fedavg["upload_bytes_per_update"]
                    ),
                    "points_vs_fedavg": fedavg
                    and 100 * (s["final_accuracy"] - fedavg["final_accuracy"]),
                    "points_vs_fedbuff": fedbuff
                    and 100 * (s["final_accuracy"] - fedbuff["final_accuracy"]),
                    "points_vs_fedbuff_feasible": feasible
                    and 100 * (s["final_accuracy"] - feasible["final_accuracy"]),
                    "memory_vs_fedavg_micro_batch": _ratio(
                        s["peak_train_memory_bytes"],
                        fedavg and fedavg.get("peak_train_memory_micro_batch_bytes"),
                    ),
                    "warm_start_accuracy": report["scenario"].get("warm_start_accuracy"),
                    "accuracy_auc": s.get("accuracy_auc"),
                }
            )
        keys = [k for k in per_seed[0] if k not in ("seed", "started_at_target")]
        mean = {k: _mean([p[k] for p in per_seed]) for k in keys}
        mean["time_vs_fedavg"] = _time_mean(per_seed)
        counted = [p for p in per_seed if not p["started_at_target"]]
        median = {k: _median([p[k] for p in per_seed]) for k in keys}
        median["time_vs_fedavg"] = _median([p["time_vs_fedavg"] for p in counted])
        spread = {k: _range([p[k] for p in per_seed]) for k in keys}
        spread["time_vs_fedavg"] = _range([p["time_vs_fedavg"] for p in counted])
        summary[row] = {"seeds": per_seed, "mean": mean, "median": median, "range": spread}
    return summary


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    first = next(iter(summary.values()))["seeds"]
    seeds = [p["seed"] for p in first]
    at_start = [p["seed"] for p in first if p["started_at_target"]]
    note = (
        f" On seed {', '.join(map(str, at_start))} the warm start already meets the target:"
        " no time ratio there, and the time median leaves it out."
        if at_start
        else ""
    )
    warm = [p["warm_start_accuracy"] for p in first]
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; each cell lists the seeds' values, then their"
        " median and range (min-max)." + note,
        "",
        "Warm start accuracy: " + " / ".join(_fmt(w, ".4f") for w in warm) + ".",
        "",
        "| row | time vs FedAvg | final acc | points vs FedAvg | points vs FedBuff "
        "| points vs feasible FedBuff | accuracy AUC "
        "| memory vs FedAvg (batch / 1 window) | upload vs FedAvg |",
        "|---|---|---|---|---|---|---|---:|---:|",
    ]
    for row, s in summary.items():

        def cell(key: str, spec: str, s: dict[str, Any] = s) -> str:
            values = " / ".join(_fmt(p[key], spec) for p in s["seeds"])
            spread = s["range"][key]
            span = "-" if spread is None else f"{spread[0]:{spec}}..{spread[1]:{spec}}"
            return f"{values} (median {_fmt(s['median'][key], spec)}; {span})"

        lines.append(
            f"| {row} | {cell('time_vs_fedavg', '.3f')} | {cell('final_accuracy', '.4f')} "
            f"| {cell('points_vs_fedavg', '+.2f')} | {cell('points_vs_fedbuff', '+.2f')} "
            f"| {cell('points_vs_fedbuff_feasible', '+.2f')} | {cell('accuracy_auc', '.4f')} "
            f"| {_fmt(s['median']['memory_vs_fedavg'], '.3f')} / "
            f"{_fmt(s['median']['memory_vs_fedavg_micro_batch'], '.3f')} "
            f"| {_fmt(s['median']['upload_vs_fedavg'], '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    try:
        summary = summarise(load_reports(args.reports))
    except IncomparableReports as exc:
        parser.error(str(exc))
    text = markdown(summary)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
