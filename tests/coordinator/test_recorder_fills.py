"""A fill's steps reach the audit log, and its survivors' task rows close at its merge.

The coordinator never sees a fill member's update, so no UPDATE_ACCEPTED event
closes the task: the recorder closes each survivor's row when FILL_MERGED says
its input is in the merge, and writes every step (opened, phases, merged,
aborted) as a SECAGG_ROUND entry holding ids and counts only.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.store import TaskStatus
from fedward.protocol.messages import DeviceClass, Enrol
from tests.live.secagg_helpers import SECAGG_SPEC, Member, decoded, delta_for, model_shapes

TOKEN = "secagg-recorder-tests-9z8y7x"


def test_a_merged_fill_is_audited_step_by_step_and_closes_its_task_rows(tmp_path: Path) -> None:
    # Prepare: one study, four devices, one fill dispatched
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        data_dir=tmp_path / "data",
        operator_token=TOKEN,
    )
    service = StudyService.open(settings, clock=lambda: 1_800_000_000.0, seed=3)
    try:
        service.create_study(SECAGG_SPEC, study_id="sa-rec")
        keys = {
            f"dev-{i}": Ed25519PrivateKey.from_private_bytes(bytes([i + 7]) * 32) for i in range(4)
        }
        for i in range(4):
            key = keys[f"dev-{i}"].public_key()
            enrol = Enrol(
                device_id=f"dev-{i}",
                study_id="sa-rec",
                device_class=DeviceClass.PHONE,
                memory_bytes=64 << 20,
                public_key=key.public_bytes_raw(),
            )
            assert service.enrol("sa-rec", enrol).accepted
        service.start("sa-rec")
        shapes = model_shapes(SECAGG_SPEC)
        tasks = service.dispatch("sa-rec")
        members = {
            t.device_id: Member.for_task(
                t.task,
                root=tmp_path,
                spec=SECAGG_SPEC,
                delta=delta_for(t.task, shapes, seed=i),
                signing_key=keys[t.device_id],  # advertisements are checked against enrolment
            )
            for i, t in enumerate(tasks)
        }
        # Execute: deliver every frame both ways until the fill has merged
        frames = [(d, raw) for d, m in members.items() for raw in m.start()]
        while frames:
            device, raw = frames.pop(0)
            message, tensors = decoded(raw)
            for out in service.secagg_receive("sa-rec", message, tensors, sender=device):
                frames.extend(
                    (out.device_id, r) for r in members[out.device_id].on_frame(out.frame)
                )
        rows = {r.task_id: r for r in service.repository.tasks("sa-rec")}
        status = service.status("sa-rec")
    finally:
        service.close()
    entries = [json.loads(line) for line in settings.audit_log_path.read_text().splitlines()]
    # Assert
    assert status.merges == 1
    rounds = [e for e in entries if e["action"] == "secagg_round"]
    steps = [e["details"]["step"] for e in rounds]
    assert steps[0] == "opened" and steps[-1] == "merged" and "phase" in steps
    merged = rounds[-1]["details"]
    assert set(merged["survivors"]) == {t.device_id for t in tasks}
    assert all(rows[t.task.task_id].status is TaskStatus.ACCEPTED for t in tasks)
    # ids and counts only: no masked word, share, key or sum in any fill entry
    allowed = {"step", "fill_id", "threshold", "phase", "reason", "detail", "version", "parent"}
    allowed |= {"base_version", "staleness", "cohort", "arrived", "missing", "survivors"}
    allowed |= {"dropouts", "task_ids", "cohort_size", "subset_id", "deadline_at", "live"}
    allowed |= {"model_version", "next_phase", "outbox_ref", "timed_out"}
    keys = {k for e in rounds for k in e["details"]}
    assert keys <= allowed, keys - allowed
    assert "words" not in json.dumps(rounds) and "weighted_sum" not in json.dumps(rounds)
