"""Decode an update frame into what the engine and strategies consume.

Anything malformed becomes ``UpdateRejected(MALFORMED)`` with the decoder's
reason, so the caller can count and audit it like any other rejection.

The header's ``update_energy`` is checked against the tensors it came with:
FTTE's energy term weighs an update by that number, so a device that
under-reports it would slip a divergent update past the damping. (Under secure
aggregation the server cannot make this check; the number is then the
device's word, and the limit is documented.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedward.protocol.errors import ProtocolError
from fedward.protocol.messages import PrivacyReport, Update, decode_frame, update_energy

from ..errors import RejectReason, UpdateRejected
from ..strategies import ClientUpdate


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
    measured = update_energy(tensors)
    # Same float32 values summed in float64 on both sides: equal up to summation order.
    if not math.isclose(header.update_energy, measured, rel_tol=1e-6, abs_tol=1e-12):
        raise UpdateRejected(
            RejectReason.MALFORMED,
            f"update_energy {header.update_energy:.6g} does not match the tensors' {measured:.6g}",
        )
    update = ClientUpdate(
        device_id=header.device_id,
        task_id=header.task_id,
        base_version=header.base_model_version,
        subset_id=header.subset_id,
        delta=tensors,
        num_samples=header.num_samples,
        update_energy=measured,
    )
    return IncomingUpdate(
        update=update, header=header, privacy=header.privacy, wire_bytes=len(frame)
    )
