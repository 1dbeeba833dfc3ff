"""A real coordinator process to kill, and the check that its audit log agrees with its database.

Why a fork server (``python -m tests.coordinator.audit_crash_worker``): importing
fedward (SQLAlchemy, torch, pydantic) costs seconds, a kill test needs dozens
of processes. The server imports once, runs no torch and opens no database, then
forks one child per command read from stdin; each child is a separate process
that opens the real ``StudyService`` on the real database and audit log, works,
and is killed (``SIGKILL``) by its parent test at a random moment or by itself
at a chosen point of a commit (see :func:`_arm`). The server prints one JSON line
``{"pid": n}`` when a child starts and ``{"pid": n, "signal": s, "code": c}``
when it ends.

What a child does: open the service (which repairs a torn log tail and appends
committed records a crash kept from the log), write :func:`agreement` of log and
database to ``check_path``, then work on study ``s1`` (create, enrol, start,
dispatch, answer every task in flight with a deterministic frame, so an answer
lost in a crash is re-delivered with the same bytes, and send junk now and
then) for ``steps`` rounds, and close.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fedward.compliance import public_key_raw, verify_log
from fedward.compliance.store import JsonlAuditStore
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.store.models import TaskStatus
from fedward.coordinator.store.repository import Repository
from fedward.coordinator.study_spec import StudySpec, build_planner
from fedward.protocol.messages import DeviceClass, Enrol, Update, encode_frame, update_energy

TOKEN = "t0k3n-For-Tests-9f8e7d6c5b4a"
SPEC = StudySpec(width=4, window=64, concurrency=2, buffer_size=2)
STUDY = "s1"
DEVICES = 3
MEMORY = 20_000
CRASH_POINTS = ("before_commit", "after_commit", "mid_publish", "torn_write")
"""Where a child may kill itself: before a transaction, right after its commit,
between two appends of its records, or halfway through writing one."""


def settings_for(url: str, data_dir: Path) -> CoordinatorSettings:
    return CoordinatorSettings(
        database_url=url, data_dir=data_dir, operator_token=TOKEN, audit_sign_interval_s=0
    )


# -- the agreement of log and database ------------------------------------------
def agreement(settings: CoordinatorSettings, repository: Repository, public_key: bytes) -> dict:
    """What an auditor would compare: every decision in the database is in the log
    exactly once, and the log holds no decision the database does not."""
    problems: list[str] = []
    report = verify_log(settings.audit_log_path, public_key)
    if not report.ok:
        problems += [p.message for p in report.problems]
    entries = [
        json.loads(r)
        for r in JsonlAuditStore(settings.audit_log_path, read_only=True).read_entry_records()
    ]
    mine = [e for e in entries if e.get("study_id") == STUDY]
    if repository.study(STUDY) is None:
        if mine:
            problems.append(f"{len(mine)} entries for a study the database does not hold")
        return {"ok": not problems, "problems": problems, "entries": len(entries)}

    def by_task(action: str) -> Counter[str]:
        return Counter(e["details"]["task_id"] for e in mine if e["action"] == action)

    enrolled = Counter(
        e["details"]["device_id"]
        for e in mine
        if e["action"] == "device_enrolled" and e["outcome"] == "success"
    )
    devices = {d.device_id for d in repository.devices(STUDY)}
    if enrolled != Counter(devices):
        problems.append(f"enrolment entries {dict(enrolled)} vs devices {sorted(devices)}")
    tasks = {t.task_id: t for t in repository.tasks(STUDY)}
    dispatched = by_task("task_dispatched")
    if dispatched != Counter(set(tasks)):
        extra = sorted(set(dispatched) - set(tasks))[:3]
        twice = sorted(t for t, n in dispatched.items() if n > 1)[:3]
        missing = sorted(set(tasks) - set(dispatched))[:3]
        problems.append(f"dispatch entries: phantom {extra}, twice {twice}, missing {missing}")
    accepted = by_task("update_accepted")
    in_db = {t for t, row in tasks.items() if row.status is TaskStatus.ACCEPTED}
    if accepted != Counter(in_db):
        twice = sorted(t for t, n in accepted.items() if n > 1)[:3]
        phantom = sorted(set(accepted) - in_db)[:3]
        missing = sorted(in_db - set(accepted))[:3]
        problems.append(f"accept entries: twice {twice}, phantom {phantom}, missing {missing}")
    receipts = {r.task_id: r.frame_sha256 for r in repository.receipts(STUDY)}
    for e in mine:
        if e["action"] == "update_accepted":
            task_id = e["details"]["task_id"]
            if receipts.get(task_id) != e["details"]["update_sha256"]:
                problems.append(f"accept entry of {task_id} names another frame than its receipt")
    merged = Counter(
        (e["details"]["model_version"], e["details"]["content_hash"])
        for e in mine
        if e["action"] == "model_merged"
    )
    versions = Counter(
        (v.version, v.blob_sha256) for v in repository.model_versions(STUDY) if v.version > 0
    )
    if merged != versions:
        problems.append(
            f"merge entries {sorted(merged.items())[-3:]} vs model versions {sorted(versions.items())[-3:]}"
        )
    rejected = Counter(e["details"]["reason"] for e in mine if e["action"] == "update_rejected")
    counted = Counter({r.value: n for r, n in repository.rejection_counts(STUDY).items() if n})
    if rejected != counted:
        problems.append(f"rejection entries {dict(rejected)} vs counters {dict(counted)}")
    return {
        "ok": not problems,
        "problems": problems,
        "entries": len(entries),
        "tasks": len(tasks),
        "accepted": len(in_db),
        "merges": sum(versions.values()),
        "rejected": sum(counted.values()),
    }


# -- the workload --------------------------------------------------------------
def frame_for(service: StudyService, out: Any) -> bytes:
    """A deterministic update for a task: a re-delivery after a crash is byte-identical."""
    params = service._studies[STUDY].engine.params  # white-box: the model's shapes
    seed = int.from_bytes(hashlib.sha256(out.task.task_id.encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)  # test data, not a key: numpy is fine here
    delta = {
        name: (rng.standard_normal(params[name].shape) * 0.01).astype(np.float32)
        for name in out.task.subset_names
    }
    header = Update(
        task_id=out.task.task_id,
        device_id=out.device_id,
        base_model_version=out.task.model_version,
        subset_id=out.task.subset_id,
        num_samples=12,
        update_energy=update_energy(delta),
        train_loss=1.0,
    )
    return encode_frame(header, delta, max_bytes=16 * 2**20)


def work(service: StudyService, *, steps: int) -> None:
    if service.repository.study(STUDY) is None:
        service.create_study(SPEC, study_id=STUDY)
    for i in range(DEVICES):
        enrol = Enrol(
            device_id=f"dev-{i:03d}",
            study_id=STUDY,
            device_class=DeviceClass.PHONE,
            memory_bytes=MEMORY,
            public_key=hashlib.sha256(bytes([i])).digest(),
        )
        service.enrol(STUDY, enrol)
    if service.study(STUDY).state.value == "draft":
        service.start(STUDY)
    for step in range(steps):
        service.dispatch(STUDY)
        for out in service.pending_tasks(STUDY):
            service.submit_update(STUDY, frame_for(service, out))
        if step % 2 == 0:  # junk early in every life, so refusals are counted too
            service.submit_update(STUDY, b"junk %d" % step)


# -- crash points ----------------------------------------------------------------
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str | None, after: int) -> None:
    """Make this process kill itself at the ``after``-th occurrence of ``point``."""
    if point is None:
        return
    seen = [0]

    def due() -> bool:
        seen[0] += 1
        return seen[0] >= after

    if point in ("before_commit", "after_commit"):
        real_apply = Repository.apply

        def apply(self: Repository, changes: Any) -> list[int]:
            if point == "before_commit" and (changes.audit or not changes.is_empty()) and due():
                _die()
            ids = real_apply(self, changes)
            if point == "after_commit" and changes.audit and due():
                _die()
            return ids

        Repository.apply = apply  # type: ignore[method-assign]
        return
    real_write = JsonlAuditStore.append_entry_record

    def append(self: JsonlAuditStore, record: bytes) -> None:
        if b'"outbox_ref"' in record and due():
            if point == "torn_write":
                os.write(self._entry_fd, record[: len(record) // 2])  # type: ignore[arg-type]
            _die()
        real_write(self, record)

    JsonlAuditStore.append_entry_record = append  # type: ignore[method-assign]


def _write_ahead() -> None:
    """The old order, for the test that shows the check can fail: every record
    appended to the log at once, before its decision's commit."""
    from fedward.coordinator.service.core import ServiceCore
    from fedward.coordinator.store.recorder import EventRecorder

    def direct(self: Any, entry: Any, *, study_id: str | None) -> None:
        self._trail.write(entry, study_id=study_id)

    def direct_recorder(self: Any, study: Any, entry: Any) -> None:
        if entry is not None:
            self._trail.write(entry, study_id=study.id)

    ServiceCore._audit = direct  # type: ignore[method-assign]
    EventRecorder._write = direct_recorder  # type: ignore[method-assign]


def child(command: dict) -> None:
    if command.get("write_ahead"):
        _write_ahead()
    settings = settings_for(command["url"], Path(command["data_dir"]))
    service = StudyService.open(settings, clock=time.time, seed=7)
    check = agreement(settings, service.repository, public_key_raw(service.audit_public_key))
    Path(command["check_path"]).write_text(json.dumps(check))
    _arm(command.get("point"), int(command.get("after", 1)))
    work(service, steps=int(command["steps"]))
    service.close()


def serve() -> None:
    """The fork server: one child per stdin line, its pid and its end on stdout.

    It measures the study's subset footprints once (a real training step per
    tier, the slow part of building an engine; cached), on one torch thread so
    that no thread pool is forked; every child inherits the cache.
    """
    import torch

    torch.set_num_threads(1)
    build_planner(SPEC)
    for line in sys.stdin:
        command = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(command)
            except BaseException:  # report, never fall back into the server loop
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(
            json.dumps(
                {
                    "pid": pid,
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    serve()
