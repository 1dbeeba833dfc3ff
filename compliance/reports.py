"""Privacy budget reports: who spent how much of the promised epsilon, and when.

Built from a ``PrivacyLedger`` (restored from its persisted, checksummed state,
so every epsilon in a report was recomputed from the mechanism histories, not
copied from a claim) plus each device's class. A report holds per device the
cumulative epsilon at delta, the budget, what remains, the number of charged
tasks and whether the device is exhausted; per device class a summary; and per
class the epsilon over time (mean and max over the class's devices after each
spend), as JSON and as a PNG.

What a report never holds: health data. Only device ids, device classes, task
counts, times and privacy figures; no sample counts, no labels, no updates.
This module imports only ``fedward.privacy`` (and matplotlib, Agg backend, in
``plot_budget``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedward.privacy.accounting import MechanismStep
from fedward.privacy.budget import PrivacyUnit
from fedward.privacy.ledger import PrivacyLedger, SpendRecord
from fedward.privacy.skellam import SkellamStep

REPORT_FORMAT = "fedward.privacy.budget_report"
REPORT_VERSION = 1
UNKNOWN_CLASS = "unknown"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetPolicyView(_Model):
    epsilon: float
    delta: float
    accountant: str
    fingerprint: str


class DeviceBudgetRow(_Model):
    device_id: str
    device_class: str
    epsilon_spent: float
    epsilon_budget: float
    epsilon_remaining: float
    tasks: int
    exhausted: bool
    last_spend_at: float | None = None


class ClassSummary(_Model):
    device_class: str
    devices: int
    devices_with_spend: int
    exhausted: int
    tasks: int
    epsilon_mean: float
    epsilon_max: float


class SeriesPoint(_Model):
    t: float
    epsilon_mean: float  # over every device of the class (those with no spend count as 0)
    epsilon_max: float
    tasks: int  # cumulative charged tasks of the class


class BudgetReport(_Model):
    """The budget audit of one study (also the body of REST ``/studies/{id}/privacy``)."""

    format: str = REPORT_FORMAT
    version: int = REPORT_VERSION
    study_id: str
    policy: BudgetPolicyView
    unit: PrivacyUnit = Field(
        default=PrivacyUnit.WINDOW,
        description="what each epsilon protects: 'window' (one 10-s window: sample-level "
        "DP-SGD on the device) or 'patient' (a device's whole contribution: client-level DP)",
    )
    ledger_sha256: str = Field(description="checksum of the ledger state the report was built from")
    devices: list[DeviceBudgetRow]
    classes: list[ClassSummary]
    epsilon_over_time: dict[str, list[SeriesPoint]]

    @property
    def exhausted_devices(self) -> list[str]:
        return [row.device_id for row in self.devices if row.exhausted]


def build_budget_report(
    ledger: PrivacyLedger,
    *,
    study_id: str,
    device_classes: Mapping[str, str],
    exhausted: Iterable[str] = (),
    next_step: MechanismStep | SkellamStep | None = None,
    max_points_per_class: int = 500,
    unit: PrivacyUnit = PrivacyUnit.WINDOW,
) -> BudgetReport:
    """Summarise ``ledger`` for every device it or ``device_classes`` knows.

    A device is *exhausted* if it is listed in ``exhausted`` (the coordinator
    stopped scheduling it) or cannot afford ``next_step`` (the study's per-task
    mechanism). Series are thinned to ``max_points_per_class`` points (the last
    point is always kept).
    """
    if max_points_per_class < 2:
        raise ValueError("max_points_per_class must be >= 2")
    policy = ledger.policy
    stopped = set(exhausted)
    classes = {d: device_classes.get(d, UNKNOWN_CLASS) for d in (*device_classes, *ledger)}
    rows = []
    for device in sorted(classes):
        records = ledger.records(device)
        spent = ledger.spent(device)
        rows.append(
            DeviceBudgetRow(
                device_id=device,
                device_class=classes[device],
                epsilon_spent=spent,
                epsilon_budget=policy.epsilon,
                epsilon_remaining=ledger.remaining(device),
                tasks=len(records),
                exhausted=device in stopped
                or ledger.exhausted(device)
                or (next_step is not None and not ledger.can_afford(device, next_step)),
                last_spend_at=records[-1].at if records else None,
            )
        )
    return BudgetReport(
        study_id=study_id,
        policy=BudgetPolicyView(
            epsilon=policy.epsilon,
            delta=policy.delta,
            accountant=policy.accountant.value,
            fingerprint=policy.fingerprint,
        ),
        unit=unit,
        ledger_sha256=ledger.state_sha256(),
        devices=rows,
        classes=_summaries(rows),
        epsilon_over_time=_series(ledger, classes, max_points=max_points_per_class),
    )


def _summaries(rows: list[DeviceBudgetRow]) -> list[ClassSummary]:
    by_class: dict[str, list[DeviceBudgetRow]] = defaultdict(list)
    for row in rows:
        by_class[row.device_class].append(row)
    return [
        ClassSummary(
            device_class=name,
            devices=len(members),
            devices_with_spend=sum(1 for r in members if r.tasks),
            exhausted=sum(1 for r in members if r.exhausted),
            tasks=sum(r.tasks for r in members),
            epsilon_mean=math.fsum(r.epsilon_spent for r in members) / len(members),
            epsilon_max=max(r.epsilon_spent for r in members),
        )
        for name, members in sorted(by_class.items())
    ]


def _series(
    ledger: PrivacyLedger, classes: Mapping[str, str], *, max_points: int
) -> dict[str, list[SeriesPoint]]:
    """Epsilon over time per class, replaying every spend in time order."""
    members: dict[str, int] = defaultdict(int)
    for name in classes.values():
        members[name] += 1
    records: list[SpendRecord] = sorted(
        (r for d in ledger for r in ledger.records(d)), key=lambda r: (r.at, r.device, r.task_id)
    )
    current: dict[str, float] = {}
    total: dict[str, float] = defaultdict(float)
    peak: dict[str, float] = defaultdict(float)
    tasks: dict[str, int] = defaultdict(int)
    series: dict[str, list[SeriesPoint]] = {name: [] for name in sorted(members)}
    for record in records:
        name = classes[record.device]
        total[name] += record.epsilon_after - current.get(record.device, 0.0)
        current[record.device] = record.epsilon_after
        peak[name] = max(peak[name], record.epsilon_after)
        tasks[name] += 1
        series[name].append(
            SeriesPoint(
                t=record.at,
                epsilon_mean=max(0.0, total[name]) / members[name],
                epsilon_max=peak[name],
                tasks=tasks[name],
            )
        )
    return {name: _thin(points, max_points) for name, points in series.items()}


def _thin(points: list[SeriesPoint], limit: int) -> list[SeriesPoint]:
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / (limit - 1))
    return [*points[::stride][: limit - 1], points[-1]]


def write_report_json(report: BudgetReport, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2) + "\n")
    return path


def plot_budget(report: BudgetReport, path: Path) -> Path:
    """Epsilon over time per device class (mean solid, max dashed) against the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    # elapsed seconds since the first charge: live ledgers hold POSIX times,
    # whose raw values make an unreadable axis
    starts = [p.t for points in report.epsilon_over_time.values() for p in points[:1]]
    t0 = min(starts, default=0.0)
    try:
        for index, (name, points) in enumerate(sorted(report.epsilon_over_time.items())):
            if not points:
                continue
            color = f"C{index % 10}"
            times = [p.t - t0 for p in points]
            ax.step(times, [p.epsilon_mean for p in points], where="post", color=color,
                    label=f"{name} mean")  # fmt: skip
            ax.step(times, [p.epsilon_max for p in points], where="post", color=color,
                    linestyle="--", label=f"{name} max")  # fmt: skip
        ax.axhline(report.policy.epsilon, color="grey", linestyle=":", label="budget")
        ax.set_xlabel("elapsed time since the first charge (s)")
        ax.set_ylabel(f"cumulative epsilon at delta={report.policy.delta:g}")
        ax.set_title(f"privacy budget spent per device class: {report.study_id}")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
