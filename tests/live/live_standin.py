"""A thin StudyService stand-in over the engine, for bridge/agent unit tests.

It implements only the calls the bridge makes, with the semantics the real
``coordinator.service.StudyService`` promises: enrol pins the device's public
key, dispatch returns each task with a model frame of the tensors the device
lacks, and submit_update de-duplicates by task id (a re-sent update gets the
same Ack and is merged once).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from coordinator.engine import Engine
from coordinator.errors import UpdateRejected
from coordinator.ingest import decode_update
from coordinator.study_spec import StudySpec, build_engine
from protocol.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Ack,
    AckStatus,
    DeviceClass,
    Enrol,
    EnrolAck,
    Heartbeat,
    ModelDownload,
    Task,
    encode_frame,
)


@dataclass(frozen=True)
class OutboundTask:
    device_id: str
    task: Task
    model_frame: bytes


@dataclass
class _Study:
    spec: StudySpec
    engine: Engine
    keys: dict[str, bytes] = field(default_factory=dict)
    acks: dict[str, Ack] = field(default_factory=dict)
    submissions: int = 0


class EngineService:
    def __init__(self, *, seed: int = 0, clock=time.monotonic) -> None:
        self.clock = clock
        self.seed = seed
        self.studies: dict[str, _Study] = {}

    def create_study(self, study_id: str, spec: StudySpec, *, params=None) -> None:
        engine = build_engine(spec, rng=random.Random(self.seed), params=params)
        self.studies[study_id] = _Study(spec=spec, engine=engine)

    def enrol(self, study_id: str, msg: Enrol) -> EnrolAck:
        study = self.studies[study_id]
        known = study.keys.get(msg.device_id)
        if known is not None:
            return EnrolAck(accepted=known == msg.public_key, reason=None)
        study.keys[msg.device_id] = msg.public_key
        study.engine.enrol(
            msg.device_id,
            device_class=DeviceClass(msg.device_class).value,
            memory_bytes=msg.memory_bytes,
            now=self.clock(),
        )
        return EnrolAck(accepted=True)

    def dispatch(self, study_id: str) -> list[OutboundTask]:
        study = self.studies[study_id]
        engine, spec = study.engine, study.spec
        out = []
        for order in engine.dispatch(now=self.clock()):
            tensors = {n: engine.params[n] for n in order.download}
            header = ModelDownload(
                model_version=order.model_version,
                subset_id=order.subset.subset_id,
                names=order.download,
            )
            task = Task(
                task_id=order.task_id,
                study_id=study_id,
                device_id=order.device_id,
                model_version=order.model_version,
                subset_id=order.subset.subset_id,
                subset_names=order.subset.names,
                local_epochs=spec.epochs,
                batch_size=spec.batch_size,
                lr=spec.lr,
                deadline_s=spec.task_deadline_s,
            )
            out.append(OutboundTask(order.device_id, task, encode_frame(header, tensors or None)))
        return out

    def submit_update(self, study_id: str, frame: bytes) -> Ack:
        study = self.studies[study_id]
        study.submissions += 1
        try:
            incoming = decode_update(frame, max_bytes=DEFAULT_MAX_MESSAGE_BYTES)
        except UpdateRejected as exc:
            return Ack(task_id="unknown", status=AckStatus.REJECTED, reason=exc.reason.value)
        task_id = incoming.update.task_id
        if task_id in study.acks:
            return study.acks[task_id]
        outcome = study.engine.submit(incoming.update, now=self.clock())
        if not outcome.accepted:
            ack = Ack(task_id=task_id, status=AckStatus.REJECTED, reason=outcome.reason.value)
        elif outcome.merge is not None:
            ack = Ack(task_id=task_id, status=AckStatus.MERGED)
        else:
            ack = Ack(task_id=task_id, status=AckStatus.BUFFERED)
        study.acks[task_id] = ack
        return ack

    def heartbeat(self, study_id: str, msg: Heartbeat) -> bool:
        return msg.device_id in self.studies[study_id].engine.devices

    def task_timeouts(self) -> int:
        failed = 0
        for study in self.studies.values():
            now = self.clock()
            for order in list(study.engine.tasks.values()):
                if now - order.issued_at > study.spec.task_deadline_s:
                    study.engine.task_failed(order.task_id, now=now, reason="deadline")
                    failed += 1
        return failed
