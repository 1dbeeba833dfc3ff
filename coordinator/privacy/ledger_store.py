"""Where a study's privacy ledger lives between runs, and the report built from it.

The live service persists the guard's ``state_dict`` inside its engine snapshot
(``fedward.coordinator.store.snapshot`` saves every guard that has one), so budgets
survive a restart with no extra call. For runs without the store (simulator,
tests, an offline copy for auditors) the same state is a JSON file
``privacy-ledger-<study>.json`` in a data directory, written atomically.

Loading always goes through ``PrivacyLedger.load_state_dict``, which checks the
checksum and recomputes every device's epsilon from its mechanism history, so
a report never shows a figure the ledger cannot re-derive.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedward.compliance.reports import BudgetReport, build_budget_report
from fedward.privacy.budget import PrivacyUnit

from ..engine import DeviceState, Engine
from ..errors import GuardStateError
from .guard import STATE_FORMAT, STATE_KIND, PrivacyGuard, privacy_guard_of
from .settings import settings_of_unit


def ledger_file(data_dir: Path, study_id: str) -> Path:
    """``<data_dir>/privacy-ledger-<study_id>.json``."""
    if not study_id or "/" in study_id or study_id.startswith("."):
        raise ValueError(f"bad study id {study_id!r}")
    return Path(data_dir) / f"privacy-ledger-{study_id}.json"


def save_guard_state(guard: PrivacyGuard, path: Path) -> Path:
    """Write the guard's state atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(guard.state_dict(), handle, sort_keys=True, allow_nan=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_guard_state(path: Path) -> dict[str, Any]:
    state = json.loads(Path(path).read_text())
    if not _is_guard_state(state):
        raise GuardStateError(
            f"{path} is not a privacy guard state of format {STATE_FORMAT} "
            "(a file written by an older fedward cannot be read: export it again)"
        )
    return dict(state)


def _is_guard_state(state: object) -> bool:
    return (
        isinstance(state, Mapping)
        and state.get("kind") == STATE_KIND
        and state.get("format_version") == STATE_FORMAT
    )


def snapshot_device_classes(snapshot: Mapping[str, Any]) -> dict[str, str]:
    """device id -> class of every device enrolled in an engine snapshot.

    A budget report lists every enrolled device, including those the privacy
    guard never saw (enrolled, never dispatched): they have spent nothing.
    """
    payload = snapshot.get("payload")
    devices = payload.get("devices") if isinstance(payload, Mapping) else None
    return {
        str(d["device_id"]): str(d["device_class"])
        for d in devices or []
        if isinstance(d, Mapping) and "device_id" in d and "device_class" in d
    }


def guard_state_from_snapshot(snapshot: Mapping[str, Any]) -> dict[str, Any] | None:
    """The privacy guard's state inside an engine snapshot (``None`` if not a DP study)."""
    payload = snapshot.get("payload")
    guards = payload.get("guards") if isinstance(payload, Mapping) else None
    for state in guards or []:
        if _is_guard_state(state):
            return dict(state)
    return None


def report_from_guard_state(
    state: Mapping[str, Any],
    *,
    study_id: str,
    device_classes: Mapping[str, str] | None = None,
    exhausted: set[str] | None = None,
) -> BudgetReport:
    """A budget report from a persisted guard state (verified and recomputed on load).

    ``device_classes`` adds devices the guard never saw (e.g. every enrolled
    device from the engine snapshot); the guard's own classes win otherwise.
    """
    if not _is_guard_state(state):
        raise GuardStateError(f"not a privacy guard state of kind {STATE_KIND!r}")
    model = settings_of_unit(state["payload"].get("unit", PrivacyUnit.WINDOW.value))
    settings = model.model_validate_json(json.dumps(state["payload"]["settings"]))
    guard = PrivacyGuard(settings)
    guard.load_state_dict(state)
    classes = {**(device_classes or {}), **guard.device_classes()}
    return build_budget_report(
        guard.ledger,
        study_id=study_id,
        device_classes=classes,
        exhausted=guard.exhausted_devices() | (exhausted or set()),
        next_step=guard.task_step,
        unit=guard.unit,
    )


def privacy_report(engine: Engine, *, study_id: str) -> BudgetReport | None:
    """The body of REST ``GET /studies/{id}/privacy`` (``None``: the study has no DP)."""
    guard = privacy_guard_of(engine)
    if guard is None:
        return None
    return build_budget_report(
        guard.ledger,
        study_id=study_id,
        device_classes={d.device_id: d.device_class for d in engine.devices.values()},
        exhausted=guard.exhausted_devices()
        | {d.device_id for d in engine.devices.values() if d.state is DeviceState.EXHAUSTED},
        next_step=guard.task_step,
        unit=guard.unit,
    )
