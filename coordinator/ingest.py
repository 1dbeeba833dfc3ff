"""Decode an update frame into what the engine and strategies consume.

Anything malformed becomes ``UpdateRejected(MALFORMED)`` with the decoder's
reason, so the caller can count and audit it like any other rejection.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import ProtocolError
from protocol.messages import PrivacyReport, Update, decode_frame

from .errors import RejectReason, UpdateRejected
from .strategies import ClientUpdate


@dataclass(frozen=True)
class IncomingUpdate:
    update: ClientUpdate
    header: Update
    privacy: PrivacyReport | None
    wire_bytes: int


def decode_update(frame: bytes, *, max_bytes: int) -> IncomingUpdate:
    try:
        header, tensors = decode_frame(frame, max_bytes=max_bytes)
    except ProtocolError as exc:
        raise UpdateRejected(RejectReason.MALFORMED, str(exc)[:200]) from exc
    if not isinstance(header, Update):
        raise UpdateRejected(RejectReason.MALFORMED, f"expected an update, got {header.kind}")
    numel = sum(t.size for t in tensors.values())
    update = ClientUpdate(
        device_id=header.device_id,
        task_id=header.task_id,
        base_version=header.base_model_version,
        subset_id=header.subset_id,
        delta=tensors,
        num_samples=header.num_samples,
        update_msq=header.update_sq_norm / max(numel, 1),
    )
    return IncomingUpdate(
        update=update, header=header, privacy=header.privacy, wire_bytes=len(frame)
    )
