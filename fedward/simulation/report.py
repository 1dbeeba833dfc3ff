"""Tables and plots of study and benchmark results (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy(
    series_by_run: dict[str, list[dict[str, float]]],
    path: Path,
    *,
    title: str,
    target: float | None = None,
) -> Path:
    """Held-out accuracy against virtual time, one step line per run.

    Step-wise (``where="post"``): the model's accuracy holds from one evaluation
    to the next, so the drawn crossing of the target is the time the table
    reports. The axis is linear from 0 to 10 s and logarithmic beyond
    (``symlog``), so the start is drawn at t = 0, not at a made-up 1 s.
    """
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    for run, series in series_by_run.items():
        ax.step(
            [p["t"] for p in series],
            [p["accuracy"] for p in series],
            where="post",
            label=run,
            linewidth=1.4,
        )
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_xlabel("virtual time (s; linear to 10 s, log beyond)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(report: dict[str, Any]) -> str:
    """The benchmark as a markdown table with ratios against FedAvg."""
    strategies = report["strategies"]
    base = strategies.get("fedavg")
    rows = [
        "| strategy | time to target (s) | vs FedAvg | final acc | peak train mem (B) | vs FedAvg "
        "| upload B/update | vs FedAvg | updates | wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in strategies.items():
        ratio_t = (
            s["time_to_target_s"] / base["time_to_target_s"]
            if base and s["time_to_target_s"] is not None and base["time_to_target_s"]
            else None
        )
        ratio_m = s["peak_train_memory_bytes"] / base["peak_train_memory_bytes"] if base else None
        ratio_u = s["upload_bytes_per_update"] / base["upload_bytes_per_update"] if base else None
        rows.append(
            f"| {name} | {_fmt(s['time_to_target_s'], '.0f')} | {_fmt(ratio_t, '.3f')} "
            f"| {s['final_accuracy']:.4f} | {s['peak_train_memory_bytes']:,} | {_fmt(ratio_m, '.3f')} "
            f"| {s['upload_bytes_per_update']:,.0f} | {_fmt(ratio_u, '.3f')} | {s['updates']} | {s['wall_s']:.1f} |"
        )
    sc = report["scenario"]
    head = (
        f"Scenario `{sc['name']}`: {sc['devices']} devices, {sc['straggler_fraction']:.0%} stragglers, "
        f"target accuracy {sc['target_accuracy']:g}.\n\n"
    )
    return head + "\n".join(rows) + "\n"


def levels_table(report: dict[str, Any]) -> str:
    """Virtual seconds to each accuracy level, per strategy (``-``: not reached)."""
    strategies = report["strategies"]
    levels = list(next(iter(strategies.values())).get("time_to_accuracy_s", {}))
    if not levels:
        return ""
    rows = [
        "| strategy | " + " | ".join(f"to {lv}" for lv in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    for name, s in strategies.items():
        cells = [_fmt(s["time_to_accuracy_s"].get(lv), ".0f") for lv in levels]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
