"""Updates: decode, dedupe, judge and persist update frames; never raise for bad input.

Why dedupe by receipt: MQTT QoS 1 and the agents' outboxes re-deliver, so the
same frame may arrive many times. A re-delivery is answered with the status
its first delivery earned and is never merged twice; a *different* frame for
an answered task is a DUPLICATE rejection.

Why batches: each service call is one database transaction with one engine
snapshot (and one fsync), which caps ingest at a few dozen updates per second
on PostgreSQL. :meth:`UpdateCalls.submit_updates` judges a burst of frames one
by one, exactly as a single frame is judged, but commits every row, receipt,
counter and ONE snapshot in one transaction; the acks are returned only after
that commit, so an ack still means "durable". ``submit_update`` is the batch
of one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fedward.coordinator import audit
from fedward.coordinator.engine.ingest import IncomingUpdate, decode_update
from fedward.coordinator.errors import RejectReason, UpdateRejected
from fedward.coordinator.store import StudyChanges, TaskStatus
from fedward.coordinator.store.models import UpdateReceiptRow
from fedward.coordinator.store.runtime import StudyRuntime
from fedward.protocol.messages import Ack, AckStatus

from .core import UNKNOWN_TASK_ID, ServiceCore, digest
from .studies import finish_if_done

log = logging.getLogger(__name__)


class _FrameCrashed(Exception):
    """Judging one frame of a batch raised: a bug or an input we failed to foresee.

    The engine may be half-changed, so the batch's transaction is abandoned
    (the study reloads from the database) and the frames are judged again one
    at a time, where this one is refused on its own.
    """


def _as_bytes(frame: object) -> bytes:
    return bytes(frame) if isinstance(frame, bytes | bytearray | memoryview) else b""


class UpdateCalls(ServiceCore):
    def submit_update(self, study_id: str, frame: bytes) -> Ack:
        """Decode, dedupe, judge and persist one update frame; never raises for bad input.

        A re-delivered frame (same task, device and bytes) is acknowledged with
        the status its first delivery earned and is never merged twice; a
        different frame for an answered task is rejected as DUPLICATE.
        """
        (ack,) = self.submit_updates(study_id, [frame])
        return ack

    def submit_updates(
        self,
        study_id: str,
        frames: Sequence[bytes],
        *,
        senders: Sequence[str | None] | None = None,
    ) -> list[Ack]:
        """Judge ``frames`` in order as ``submit_update`` would; commit them at once.

        One ack per frame, in order, returned only after the batch's single
        commit. A frame repeating an earlier one of the same batch is a
        re-delivery like any other. Raises (and nothing is acked or kept) only
        if the commit itself fails: the devices' outboxes then re-deliver.

        ``senders`` (one per frame, from the transport's signature check) names
        the authenticated device of each frame: a frame that cannot be decoded
        is then refused and audited under that device, not the coordinator.
        """
        raws = [_as_bytes(f) for f in frames]
        if not raws:
            return []
        who: list[str | None] = list(senders) if senders is not None else [None] * len(raws)
        if len(who) != len(raws):
            raise ValueError("one sender per frame")
        with self._lock:
            study = self._studies.get(study_id)
            if study is None:
                return [self._unknown_study(raw) for raw in raws]
            try:
                return self._submit_batch(study, raws, who)
            except _FrameCrashed as crash:
                log.exception("an update of study %s could not be processed", study_id)
                if len(raws) > 1:  # re-judge alone: only the culprit is refused
                    return [
                        ack
                        for raw, sender in zip(raws, who, strict=True)
                        for ack in self.submit_updates(study_id, [raw], senders=[sender])
                    ]
                task_id, device_id = crash.args
                study = self._studies[study_id]  # reloaded by _change
                with self._change(study) as changes:
                    return [
                        self._reject_early(
                            study,
                            changes,
                            UpdateRejected(RejectReason.MALFORMED, "update could not be processed"),
                            task_id=task_id,
                            device_id=device_id,
                            frame_sha=digest(raws[0]),
                        )
                    ]

    def _unknown_study(self, raw: bytes) -> Ack:
        entry = audit.update_refused_early(
            reason="unknown_study", detail=None, update_sha256=digest(raw)
        )
        self._audit(entry, study_id=None)
        return Ack(task_id=UNKNOWN_TASK_ID, status=AckStatus.REJECTED, reason="unknown study")

    def _submit_batch(
        self, study: StudyRuntime, raws: list[bytes], senders: list[str | None]
    ) -> list[Ack]:
        """One transaction for the whole batch; receipts of earlier frames dedupe later ones."""
        decoded: list[IncomingUpdate | UpdateRejected] = []
        for raw in raws:
            try:
                decoded.append(
                    decode_update(
                        raw,
                        max_bytes=self._max_bytes,
                        max_samples=study.spec.max_samples_per_update,
                        encoding=study.spec.update_encoding,
                        max_abs=study.spec.max_delta_abs,
                        max_coordinates=study.model_size,
                    )
                )
            except UpdateRejected as exc:
                decoded.append(exc)
        receipts = self._repo.receipts_for(
            study.id, [d.header.task_id for d in decoded if isinstance(d, IncomingUpdate)]
        )
        with self._change(study) as changes:
            acks = [
                self._judge(study, changes, receipts, raw, item, sender)
                for raw, item, sender in zip(raws, decoded, senders, strict=True)
            ]
            finish_if_done(self, study, changes)  # stop rules and held-out evaluation
            return acks

    def _judge(
        self,
        study: StudyRuntime,
        changes: StudyChanges,
        receipts: dict[str, UpdateReceiptRow],
        raw: bytes,
        incoming: IncomingUpdate | UpdateRejected,
        sender: str | None = None,
    ) -> Ack:
        """Judge one decoded frame; ``receipts`` (committed or of this batch) dedupe it."""
        frame_sha = digest(raw)
        if isinstance(incoming, UpdateRejected):
            return self._reject_early(
                study,
                changes,
                incoming,
                task_id=UNKNOWN_TASK_ID,
                device_id=sender,
                frame_sha=frame_sha,
            )
        header = incoming.header
        receipt = receipts.get(header.task_id)
        if receipt is not None and receipt.device_id == header.device_id:
            if receipt.frame_sha256 == frame_sha:
                study.duplicates += 1
                status = changes.receipt_status.get(header.task_id, receipt.status)
                note = f": {receipt.reason}" if receipt.reason else ""
                return Ack(
                    task_id=header.task_id,
                    status=status,
                    reason=f"duplicate delivery{note}"[:200],
                )
            return self._reject_early(
                study,
                changes,
                UpdateRejected(RejectReason.DUPLICATE, "task already answered"),
                task_id=header.task_id,
                device_id=header.device_id,
                frame_sha=frame_sha,
            )
        if incoming.refusal is not None:  # well formed, out of bounds: its task fails
            order = study.engine.tasks.get(header.task_id)
            if order is not None and order.device_id == header.device_id:
                study.failure_status[header.task_id] = TaskStatus.REJECTED
                try:
                    study.engine.task_failed(
                        header.task_id,
                        now=changes.at,
                        reason=f"rejected:{incoming.refusal.reason.value}",
                    )
                finally:
                    study.failure_status.pop(header.task_id, None)
            return self._reject_early(
                study,
                changes,
                incoming.refusal,
                task_id=header.task_id,
                device_id=header.device_id,
                frame_sha=frame_sha,
            )
        try:
            ack = self._submit(study, changes, incoming, frame_sha=frame_sha)
        except Exception as exc:
            raise _FrameCrashed(header.task_id, header.device_id) from exc
        if changes.new_receipts and changes.new_receipts[-1].task_id == header.task_id:
            receipts[header.task_id] = changes.new_receipts[-1]
        return ack

    def _submit(
        self,
        study: StudyRuntime,
        changes: StudyChanges,
        incoming: IncomingUpdate,
        *,
        frame_sha: str,
    ) -> Ack:
        header = incoming.header
        order = study.engine.tasks.get(header.task_id)
        owned = order is not None and order.device_id == header.device_id
        study.current_update_sha = frame_sha
        study.failure_status[header.task_id] = TaskStatus.REJECTED
        try:
            outcome = study.engine.submit(incoming.update, now=changes.at, context=incoming.privacy)
        finally:
            study.current_update_sha = None
            study.failure_status.pop(header.task_id, None)
        if not outcome.accepted:
            status, reason = AckStatus.REJECTED, outcome.reason.value if outcome.reason else None
        elif outcome.merge is not None and header.task_id in outcome.merge.task_ids:
            status, reason = AckStatus.MERGED, None
        else:
            status, reason = AckStatus.BUFFERED, None
        if owned and order is not None:
            self._task_times.forget(study.id, header.task_id)
            if outcome.accepted:  # how long this class's tasks take sizes later deadlines
                device = study.engine.devices.get(header.device_id)
                if device is not None:
                    self._task_times.observe(
                        study.id, device.device_class, changes.at - order.issued_at
                    )
        if owned:  # only a task's own device can settle it: no receipt for strangers
            changes.new_receipts.append(
                UpdateReceiptRow(
                    study_id=study.id,
                    task_id=header.task_id,
                    device_id=header.device_id,
                    frame_sha256=frame_sha,
                    status=status,
                    reason=reason,
                    received_at=changes.at,
                )
            )
        return Ack(task_id=header.task_id, status=status, reason=reason)

    def _reject_early(
        self,
        study: StudyRuntime,
        changes: StudyChanges,
        exc: UpdateRejected,
        *,
        task_id: str,
        device_id: str | None,
        frame_sha: str,
    ) -> Ack:
        """A rejection decided before the engine saw the update: count, audit, ack."""
        changes.rejections[exc.reason] += 1
        study.rejections[exc.reason] += 1
        entry = audit.update_refused_early(
            reason=exc.reason.value,
            detail=exc.detail,
            update_sha256=frame_sha,
            task_id=task_id,
            device_id=device_id,
        )
        self._audit(entry, study_id=study.id)
        return Ack(task_id=task_id, status=AckStatus.REJECTED, reason=exc.reason.value)
