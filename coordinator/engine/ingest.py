"""Decode an update frame into what the engine and strategies consume.

Anything malformed becomes ``UpdateRejected(MALFORMED)`` with the decoder's
reason, so the caller can count and audit it like any other rejection.

Bounds an authenticated device still cannot cross: every tensor is float32
(the dtype the task's model has; a float64, float16, integer or bool delta is
refused, never cast; an int8 study's words are decoded first, with no more
coordinates than the model has), no coordinate exceeds the study's public
``max_delta_abs`` (one update of 3e38 per coordinate made the merged model inf),
and ``num_samples`` is at most the study's declared
``max_samples_per_update`` (the count multiplies an update's merge weight, so an
unbounded count let one update outweigh the rest of the buffer).

The header's ``update_energy`` is checked against the tensors it came with:
FTTE's energy term weighs an update by that number, so a device that
under-reports it would slip a divergent update past the damping. (Under secure
aggregation the server cannot make this check; the number is then the
device's word, and the limit is documented.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedward.protocol.errors import ProtocolError
from fedward.protocol.messages import (
    PrivacyReport,
    Update,
    UpdateEncoding,
    decode_frame,
    update_energy,
)
from fedward.protocol.quantised import dequantise_int8

from ..errors import RejectReason, UpdateRejected
from ..strategies import ClientUpdate
from ..strategies.base import UNCOUNTED


@dataclass(frozen=True)
class IncomingUpdate:
    update: ClientUpdate
    header: Update
    privacy: PrivacyReport | None
    wire_bytes: int
    refusal: UpdateRejected | None = None
    """Set when the frame is well formed but out of bounds (dtype, sample count): the
    caller refuses it under its task and device, which the header names."""


TASK_DTYPE = np.dtype(np.float32)
"""The dtype of every model tensor, hence of every delta a task asks for."""


def decode_update(
    frame: bytes,
    *,
    max_bytes: int,
    max_samples: int | None = None,
    encoding: UpdateEncoding = UpdateEncoding.FLOAT32,
    max_abs: float | None = None,
    max_coordinates: int | None = None,
) -> IncomingUpdate:
    """Decode and bound one update frame.

    ``encoding`` is the one the study's tasks ask for; ``max_abs`` the study's public
    bound on any one coordinate (``StudySpec.max_delta_abs``); ``max_coordinates`` the
    model's size, checked before an int8 delta is expanded to float32 (4x its bytes).
    """
    try:
        header, tensors = decode_frame(frame, max_bytes=max_bytes)
    except ProtocolError as exc:
        raise UpdateRejected(RejectReason.MALFORMED, str(exc)[:200]) from exc
    if not isinstance(header, Update):
        raise UpdateRejected(RejectReason.MALFORMED, f"expected an update, got {header.kind}")
    refusal = _wrong_encoding(header, encoding)
    coordinates = sum(int(t.size) for t in tensors.values())
    if refusal is None and max_coordinates is not None and coordinates > max_coordinates:
        refusal = UpdateRejected(
            RejectReason.MALFORMED,
            f"{coordinates} coordinates > the model's {max_coordinates}",
        )
    if refusal is None and header.scales is not None:
        try:  # int8 words times their scales: the float32 delta every check below sees
            tensors = dequantise_int8(tensors, header.scales)
        except ProtocolError as exc:
            refusal = UpdateRejected(RejectReason.MALFORMED, str(exc)[:200])
    if refusal is None:
        refusal = _out_of_bounds(header, tensors, max_samples=max_samples, max_abs=max_abs)
    measured = update_energy(tensors)
    # Same float32 values summed in float64 on both sides: equal up to summation order.
    # A DP header carries no energy (nothing computed from the data): the measured one is used.
    if (
        refusal is None
        and header.update_energy is not None
        and not math.isclose(header.update_energy, measured, rel_tol=1e-6, abs_tol=1e-12)
    ):
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
        # a DP update reports no count (it would be a release outside the accountant)
        num_samples=UNCOUNTED if header.num_samples is None else header.num_samples,
        update_energy=measured,
    )
    return IncomingUpdate(
        update=update,
        header=header,
        privacy=header.privacy,
        wire_bytes=len(frame),
        refusal=refusal,
    )


def _wrong_encoding(header: Update, encoding: UpdateEncoding) -> UpdateRejected | None:
    # Why refuse, not accept either: the study fixed one encoding for its tasks, and a
    # device that answers in another is not running the task it was given.
    sent = UpdateEncoding.FLOAT32 if header.scales is None else UpdateEncoding.INT8
    if sent is encoding:
        return None
    return UpdateRejected(
        RejectReason.MALFORMED,
        f"the study's tasks ask for {encoding.value} deltas, this update sent {sent.value}",
    )


def out_of_range(name: str, tensor: np.ndarray, *, max_abs: float | None) -> UpdateRejected | None:
    """The refusal of a tensor with a coordinate beyond the study's ``max_abs`` (None: in
    bounds). Ingest and ``Engine.submit`` both apply it; a non-finite delta is left to
    the strategy's NON_FINITE check."""
    if (
        max_abs is not None
        and tensor.size
        and np.isfinite(tensor).all()
        and float(np.max(np.abs(tensor))) > max_abs
    ):
        return UpdateRejected(
            RejectReason.OUT_OF_RANGE,
            f"tensor {name[:64]!r} has a coordinate beyond the study's bound {max_abs:g}",
        )
    return None


def _out_of_bounds(
    header: Update,
    tensors: dict[str, np.ndarray],
    *,
    max_samples: int | None,
    max_abs: float | None = None,
) -> UpdateRejected | None:
    for name, tensor in tensors.items():
        if tensor.dtype != TASK_DTYPE:
            return UpdateRejected(
                RejectReason.MALFORMED,
                f"tensor {name[:64]!r} is {tensor.dtype}, the task's model is {TASK_DTYPE}",
            )
        refusal = out_of_range(name, tensor, max_abs=max_abs)
        if refusal is not None:
            return refusal
    count = header.num_samples
    if max_samples is not None and count is not None and count > max_samples:
        return UpdateRejected(
            RejectReason.BAD_SAMPLE_COUNT,
            f"num_samples {count} > the study's cap {max_samples}",
        )
    return None
