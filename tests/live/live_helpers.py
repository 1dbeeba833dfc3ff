"""Helpers of the live tests: a tiny study spec and agents on any transport."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from fedward.coordinator.study_spec import StudySpec
from fedward.edge.agent import EdgeAgent
from fedward.edge.dataset import LocalDataset
from fedward.edge.identity import load_or_create_identity
from fedward.edge.settings import AgentSettings
from fedward.protocol.messages import DeviceClass
from fedward.protocol.transport import Transport

TINY_SPEC = StudySpec(
    name="live-unit",
    window=128,
    width=4,
    epochs=1,
    batch_size=8,
    concurrency=3,
    buffer_size=2,
    task_deadline_s=30.0,
)


def wait_until(predicate, timeout: float = 20.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def random_dataset(spec: StudySpec, *, seed: int, n: int = 16) -> LocalDataset:
    rng = np.random.default_rng(seed)
    return LocalDataset(
        x=rng.standard_normal((n, spec.in_channels, spec.window)).astype(np.float32),
        y=rng.integers(0, spec.num_classes, n).astype(np.int64),
    )


def make_agent(
    *,
    transport: Transport,
    study_id: str,
    device_id: str,
    state_dir: Path,
    spec: StudySpec,
    dataset: LocalDataset,
    seed: int,
    **overrides,
) -> EdgeAgent:
    values = dict(
        device_id=device_id,
        study_id=study_id,
        device_class=DeviceClass.WEARABLE,
        memory_bytes=64 << 20,
        data_path=state_dir / "data.npz",
        state_dir=state_dir,
        model_kind=spec.model_kind,
        in_channels=spec.in_channels,
        window=spec.window,
        num_classes=spec.num_classes,
        width=spec.width,
        momentum=spec.momentum,
        heartbeat_interval_s=1.0,
        poll_interval_s=0.05,
        resend_after_s=5.0,
        model_wait_s=10.0,
    )
    settings = AgentSettings(**(values | overrides))
    return EdgeAgent(
        settings,
        transport=transport,
        identity=load_or_create_identity(state_dir, device_id=device_id),
        dataset=dataset,
        rng=random.Random(seed),
    )


def audit_entries(path: Path, action: str) -> list[dict]:
    """The ``details`` of every audit-log entry with ``action`` (JSONL entries)."""
    import json

    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("action") == action:
            out.append(record["details"])
    return out


def assert_merged_exactly_once(audit_log: Path) -> int:
    """Every accepted task id and update hash appears once, and in at most one merge.

    Returns the number of accepted updates.
    """
    accepted = audit_entries(audit_log, "update_accepted")
    task_ids = [d["task_id"] for d in accepted]
    hashes = [d["update_sha256"] for d in accepted]
    if len(task_ids) != len(set(task_ids)) or len(hashes) != len(set(hashes)):
        raise AssertionError(f"an update was accepted twice: {sorted(task_ids)}")
    merged = [
        h for d in audit_entries(audit_log, "model_merged") for h in d.get("update_hashes", [])
    ]
    if len(merged) != len(set(merged)):
        raise AssertionError("an update was merged twice")
    if not set(merged) <= set(hashes):
        raise AssertionError("a merged update was never accepted")
    return len(accepted)
