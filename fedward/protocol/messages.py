"""Versioned wire contract between coordinator and devices.

Why pydantic in strict mode: the coordinator's decisions (privacy budget,
staleness weights, audit records) are computed from these fields, so a
value that is merely "coercible" is a bug or an attack. Strict mode
rejects ``true`` where a number is expected, ``"3"`` where an int is,
and ``allow_inf_nan=False`` rejects NaN/Infinity, which JSON parsers
otherwise let through. ``extra="forbid"`` makes a typo or a field from a
newer protocol a loud error instead of silently dropped data; ``frozen``
means a validated message cannot be mutated afterwards.

Every message carries ``protocol_version`` (only :data:`PROTOCOL_VERSION`
is accepted; others raise :class:`~fedward.protocol.errors.UnsupportedVersion`
from :func:`decode_frame`) and a ``kind`` discriminator so any header can
be parsed with :data:`MESSAGE_ADAPTER` without knowing its type first.

In Python code, enum fields take enum members and sequence fields take
tuples (strict mode); on the wire they are JSON strings and arrays. numpy
scalars other than ``np.float64`` are refused too: pass ``int(x)`` /
``float(x)`` (a ``np.float32`` loss would otherwise be a silent lax coercion).
``bytes`` fields are base64 in JSON (URL-safe alphabet on output, both
alphabets accepted on input).

Frames put a JSON header and an optional tensor payload
(:mod:`fedward.protocol.codec`) in one binary message::

    magic       4 bytes  b"FWFR"
    version     u8       FRAME_VERSION
    flags       u8       must be 0 (reserved)
    header_len  u32      1..MAX_HEADER_BYTES
    payload_len u32      0, or the length of the tensor payload
    header      header_len bytes of UTF-8 JSON (one message)
    crc         u32      zlib.crc32 of everything above (prefix + header)
    payload     payload_len bytes: a tensor payload with its own CRC

``payload_len`` makes a frame cut exactly after its header a DecodeError
rather than a valid message that silently lost its tensors.

The prefix layout and the CRC position are frozen across frame versions,
so the CRC is checked before the version: a corrupted version byte is a
:class:`~fedward.protocol.errors.DecodeError`, only an intact frame of another
version is :class:`~fedward.protocol.errors.UnsupportedVersion`.

Only :data:`TENSOR_KINDS` may carry tensors, and a ``ModelDownload``'s
``names`` must list the payload's tensors in order, so a header can never
describe different tensors than the ones it travels with.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)

from fedward.protocol.codec import (
    MAX_NAME_BYTES,
    MAX_TENSORS,
    decode_tensors,
    encode_tensors,
    tensor_bytes,
)
from fedward.protocol.errors import DecodeError, EncodeError, MessageTooLarge, UnsupportedVersion
from fedward.protocol.ids import Id
from fedward.vocabulary import Accountant as Accountant  # re-exported with DpParams

PROTOCOL_VERSION = 5
# 2: Update.update_energy (mean square) replaced update_sq_norm (sum)
# 3: Enrol.ticket, EnrolAck.coordinator_key/proof, Heartbeat.tasks; live frames travel
#    in signed envelopes (fedward.protocol.signing)
# 4: secure aggregation: Task.secagg (SecAggParams) and SecAggMessage replace the unused
#    Task/Update.secagg_cohort_id
# 5: Task.update_encoding and Update.scales (int8 deltas, fedward.protocol.quantised)
FRAME_VERSION = 1
FRAME_MAGIC = b"FWFR"
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_BYTES = 2**32 - 1  # payload_len is a u32
MAX_TEXT_CHARS = 1024


class MessageKind(StrEnum):
    """Discriminator of every wire message."""

    ENROL = "enrol"
    ENROL_ACK = "enrol_ack"
    TASK = "task"
    MODEL_DOWNLOAD = "model_download"
    UPDATE = "update"
    ACK = "ack"
    HEARTBEAT = "heartbeat"
    ERROR = "error"
    SECAGG = "secagg"


class DeviceClass(StrEnum):
    WEARABLE = "wearable"
    PHONE = "phone"
    GATEWAY = "gateway"


class AckStatus(StrEnum):
    MERGED = "merged"
    BUFFERED = "buffered"
    REJECTED = "rejected"


class DeviceStatus(StrEnum):
    IDLE = "idle"
    TRAINING = "training"
    UPLOADING = "uploading"
    BUSY = "busy"
    SHUTTING_DOWN = "shutting_down"


class ErrorCode(StrEnum):
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    NOT_ENROLLED = "not_enrolled"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_TASK = "unknown_task"
    STALE = "stale"
    BUDGET_EXHAUSTED = "budget_exhausted"
    DP_REQUIRED = "dp_required"  # a device with a DP budget declines a task without DP
    # a device will not join the study's fills: its own floors (cohort size, threshold,
    # colluders) or the fill's parameters refuse them; sent before it advertises
    SECAGG_REFUSED = "secagg_refused"
    INTERNAL = "internal"


def _name_fits_codec(name: str) -> str:
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:  # surrogates raise ValueError too
        raise ValueError(f"tensor name longer than {MAX_NAME_BYTES} UTF-8 bytes")
    return name


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(names)) != len(names):
        raise ValueError("tensor names must be unique")
    return names


TensorName = Annotated[str, Field(min_length=1), AfterValidator(_name_fits_codec)]
TensorNames = Annotated[tuple[TensorName, ...], AfterValidator(_unique)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]
SampleRate = Annotated[float, Field(gt=0.0, le=1.0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]
PosFloat = Annotated[float, Field(gt=0.0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(gt=0)]
PublicKey = Annotated[bytes, Field(min_length=32, max_length=32)]
Mac = Annotated[bytes, Field(min_length=32, max_length=32)]
Nonce = Annotated[bytes, Field(min_length=16, max_length=16)]
MAX_HELD_TASKS = 64


class WireModel(BaseModel):
    """Common strict configuration of everything that goes on the wire."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        ser_json_bytes="base64",
        val_json_bytes="base64",
    )


class WireMessage(WireModel):
    """Base of top-level messages: versioned and self-describing."""

    # A strict int, not Literal[1]: Literal would accept True and 1.0.
    protocol_version: Annotated[int, Field(ge=PROTOCOL_VERSION, le=PROTOCOL_VERSION)] = (
        PROTOCOL_VERSION
    )


class DpParams(WireModel):
    """DP-SGD parameters a task imposes on the device (sample-level DP)."""

    noise_multiplier: NonNegFloat
    max_grad_norm: PosFloat
    sample_rate: SampleRate
    delta: Probability
    accountant: Accountant = Accountant.RDP
    max_steps: PosInt | None = None


class PrivacyReport(WireModel):
    """What the device says it spent; the coordinator re-derives epsilon."""

    noise_multiplier: NonNegFloat
    sample_rate: SampleRate
    steps: NonNegInt
    max_grad_norm: PosFloat
    accountant: Accountant
    claimed_epsilon: NonNegFloat
    delta: Probability


class EnrolTicket(WireModel):
    """Proof that the device holds an operator-issued enrolment secret.

    ``expires_at`` and ``nonce`` are the secret's public part; ``proof`` is an
    HMAC keyed by the secret's private part (:mod:`fedward.protocol.enrolment`).
    The secret itself never travels.
    """

    expires_at: NonNegInt
    nonce: Nonce
    proof: Mac


class Enrol(WireMessage):
    kind: Literal[MessageKind.ENROL] = MessageKind.ENROL
    device_id: Id
    study_id: Id
    device_class: DeviceClass
    memory_bytes: PosInt
    public_key: PublicKey
    """Ed25519 raw public key (32 bytes); base64 in JSON."""
    ticket: EnrolTicket | None = None
    """Required by a coordinator that authenticates devices (every shipped entry point)."""


class EnrolAck(WireMessage):
    kind: Literal[MessageKind.ENROL_ACK] = MessageKind.ENROL_ACK
    accepted: bool
    reason: Text | None = None
    coordinator_key: PublicKey | None = None
    """The coordinator's wire key: the device pins it when ``proof`` checks out."""
    proof: Mac | None = None
    """HMAC under the device's enrolment secret over the enrolment and ``coordinator_key``."""


class SecAggPhase(StrEnum):
    """Step of one secure-aggregation fill a :class:`SecAggMessage` belongs to.

    Uplink (device -> coordinator): ADVERTISE, SHARES, MASKED_INPUT,
    UNMASK_RESPONSE. Downlink (coordinator -> device): ROSTER, DELIVERY,
    UNMASK_REQUEST, ABORT.
    """

    ADVERTISE = "advertise"
    ROSTER = "roster"
    SHARES = "shares"
    DELIVERY = "delivery"
    MASKED_INPUT = "masked_input"
    UNMASK_REQUEST = "unmask_request"
    UNMASK_RESPONSE = "unmask_response"
    ABORT = "abort"

    @property
    def uplink(self) -> bool:
        """True for the phases a device sends."""
        return self in _UPLINK_PHASES


_UPLINK_PHASES = frozenset(
    {
        SecAggPhase.ADVERTISE,
        SecAggPhase.SHARES,
        SecAggPhase.MASKED_INPUT,
        SecAggPhase.UNMASK_RESPONSE,
    }
)
MAX_ENERGY_BINS = 64
MAX_SECAGG_BODY_BYTES = 8 << 20
"""Largest ``body`` tensor (mirrors ``fedward.privacy.secagg.wire.MAX_BODY_BYTES``)."""
MAX_SECAGG_WORDS = 1 << 23
"""Most masked words one ``MASKED_INPUT`` may carry (the frame size limit applies too)."""
MAX_SECAGG_WORD_BYTES = 8 * MAX_SECAGG_WORDS
"""Most bytes of packed masked words (MAX_SECAGG_WORDS words of up to 64 bits)."""
SECAGG_BODY = "body"
SECAGG_WORDS = "words"
_PACKED = np.dtype("u1")
_WIDE_WORDS: dict[int, np.dtype[Any]] = {32: np.dtype("<u4"), 64: np.dtype("<u8")}
_WORD_DTYPES = frozenset({_PACKED, *_WIDE_WORDS.values()})


class SecAggWeighting(WireModel):
    """Public numbers a fill member derives its own weight from, on the device.

    FTTE's energy damping ``g = 1/(1 + beta*max(0, q/ref - tol))`` (weight 1
    when ``energy_reference`` is None), the member's staleness weight and
    ``NormBounded``'s L2 bound, so no per-device statistic leaves the device in
    the clear.
    """

    energy_reference: NonNegFloat | None
    energy_tolerance: PosFloat
    energy_beta: NonNegFloat
    norm_bound: PosFloat | None
    staleness_weight: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    """This member's public ``(1 + tau)^-a`` (cohorts formed at arrival: members trained
    from different versions); it multiplies the device's own weight."""


def _increasing(edges: tuple[float, ...]) -> tuple[float, ...]:
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError("energy_bins must be strictly increasing")
    return edges


class SecAggParams(WireModel):
    """What a task of a secure-aggregation fill tells its device.

    ``config``/``session`` are ``SecAggConfig.to_plain()`` / ``SecAggSession.to_plain()``
    and ``ddp`` the ``DistributedDp`` plain form: ``fedward.protocol`` imports
    nothing of the privacy package, the receiving side rebuilds (and validates)
    them with ``from_plain``. ``energy_bins`` are the log-energy histogram edges
    of the masked count words (empty: no histogram).
    """

    fill_id: Id
    config: dict[str, Any]
    session: dict[str, Any]
    phase_timeout_s: PosFloat
    weighting: SecAggWeighting
    energy_bins: Annotated[
        tuple[float, ...], Field(max_length=MAX_ENERGY_BINS), AfterValidator(_increasing)
    ] = ()
    ddp: dict[str, Any] | None = None


class UpdateEncoding(StrEnum):
    """How a device puts its delta on the wire (the study fixes it; the Task says it)."""

    FLOAT32 = "float32"  # the tensors as trained
    INT8 = "int8"  # int8 words and one float32 scale per tensor (fedward.protocol.quantised)


class Task(WireMessage):
    kind: Literal[MessageKind.TASK] = MessageKind.TASK
    task_id: Id
    study_id: Id
    device_id: Id
    model_version: NonNegInt
    subset_id: Id
    subset_names: TensorNames
    local_epochs: PosInt
    batch_size: PosInt
    lr: PosFloat
    deadline_s: PosFloat
    dp: DpParams | None = None
    secagg: SecAggParams | None = None
    """Set when the task is one member of a secure-aggregation fill (one SecAgg instance)."""
    update_encoding: UpdateEncoding = UpdateEncoding.FLOAT32
    """How the device sends its delta (the study's ``update_encoding``)."""


class ModelDownload(WireMessage):
    """Header of a model frame; ``names`` lists the tensors in frame order."""

    kind: Literal[MessageKind.MODEL_DOWNLOAD] = MessageKind.MODEL_DOWNLOAD
    model_version: NonNegInt
    subset_id: Id
    names: TensorNames


def update_energy(tensors: Mapping[str, np.ndarray]) -> float:
    """``Update.update_energy`` of these tensors: the mean squared value per coordinate.

    The sum of squares in float64 divided by the number of coordinates (an
    update carries only the tensors its device trained, so these are the
    trained coordinates; 0.0 for no tensors). FTTE's energy term and
    ``NormBounded`` judge an update by this number, and the coordinator checks
    a reported one against the tensors it came with. One definition for the
    device that reports it, the coordinator that checks it and the strategies
    that use it, so all of them sum the same values the same way.
    """
    total = float(sum(np.square(t, dtype=np.float64).sum() for t in tensors.values()))
    return total / max(sum(t.size for t in tensors.values()), 1)


class Update(WireMessage):
    """Header of an update frame; the tensors carry the (sparse) delta."""

    kind: Literal[MessageKind.UPDATE] = MessageKind.UPDATE
    task_id: Id
    device_id: Id
    base_model_version: NonNegInt
    subset_id: Id
    num_samples: PosInt | None = None
    update_energy: NonNegFloat | None = None
    train_loss: float | None = None
    privacy: PrivacyReport | None = None
    # int8 deltas: one float32 scale per tensor, in the payload's order (None: float32
    # tensors). A function of the (noised, under DP) delta, like the words themselves.
    scales: Annotated[dict[TensorName, PosFloat], Field(max_length=MAX_TENSORS)] | None = None

    @model_serializer(mode="wrap")
    def _no_null_scales(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # a float32 update's header is byte for byte what it was before int8 existed, so
        # its frame size (which the simulator charges as transfer time) did not move
        data: dict[str, Any] = handler(self)
        if data.get("scales") is None:
            data.pop("scales", None)
        return data

    @model_validator(mode="after")
    def _dp_side_channels(self) -> Update:
        # Under DP nothing leaves the device that the accountant does not cover: the
        # loss and the exact sample count are data-dependent releases outside the
        # DP-SGD analysis (the loss alone told AF-dominant patients apart, AUC 0.94).
        # The energy is a function of the noised tensors, which the receiver measures
        # itself; a DP header carries nothing computed from the data.
        if self.privacy is not None and (
            self.num_samples is not None
            or self.train_loss is not None
            or self.update_energy is not None
        ):
            raise ValueError(
                "a DP update carries no train_loss and no num_samples (and no update_energy)"
            )
        return self


class Ack(WireMessage):
    kind: Literal[MessageKind.ACK] = MessageKind.ACK
    task_id: Id
    status: AckStatus
    reason: Text | None = None


class Heartbeat(WireMessage):
    kind: Literal[MessageKind.HEARTBEAT] = MessageKind.HEARTBEAT
    device_id: Id
    status: DeviceStatus
    battery: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    tasks: Annotated[tuple[Id, ...], Field(max_length=MAX_HELD_TASKS)] = ()
    """Every task the device still holds (queued, training, or awaiting its Ack).

    A task of this device in flight at the coordinator and missing here was
    lost (the agent restarted, or dropped it): the coordinator frees it now
    instead of at its deadline.
    """


class ErrorMessage(WireMessage):
    kind: Literal[MessageKind.ERROR] = MessageKind.ERROR
    code: ErrorCode
    detail: Text = ""


class SecAggMessage(WireMessage):
    """Header of one secure-aggregation step of a fill; the content is in the tensors.

    Frame tensors: exactly one ``"body"`` (1-D uint8: the
    ``fedward.privacy.secagg.wire.encode_message`` bytes) for every phase but
    MASKED_INPUT and ABORT; exactly one ``"words"`` for MASKED_INPUT: the masked
    words in binary, as :func:`secagg_words_tensor` lays them out (1-D ``<u4`` /
    ``<u8`` for 32- / 64-bit words, else uint8: the b-bit words packed
    little-endian); none for ABORT.
    The receiver rebuilds the privacy message (a ``MaskedInput`` from the fill's
    session and the sender's id) and judges its content; this layer only bounds
    the shape. Signed in its envelope like every live frame.
    """

    kind: Literal[MessageKind.SECAGG] = MessageKind.SECAGG
    study_id: Id
    device_id: Id
    task_id: Id
    fill_id: Id
    phase: SecAggPhase


Message = Annotated[
    Enrol
    | EnrolAck
    | Task
    | ModelDownload
    | Update
    | Ack
    | Heartbeat
    | ErrorMessage
    | SecAggMessage,
    Field(discriminator="kind"),
]
"""Any wire message, discriminated by ``kind``."""

MESSAGE_TYPES: tuple[type[WireMessage], ...] = (
    Enrol,
    EnrolAck,
    Task,
    ModelDownload,
    Update,
    Ack,
    Heartbeat,
    ErrorMessage,
    SecAggMessage,
)
TENSOR_KINDS = frozenset({MessageKind.MODEL_DOWNLOAD, MessageKind.UPDATE, MessageKind.SECAGG})
"""The only kinds whose frames may carry tensors."""

MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
"""Parses any message: ``MESSAGE_ADAPTER.validate_json(raw)`` (stateless)."""


_FRAME_PREFIX = struct.Struct("<4sBBII")
_CRC = struct.Struct("<I")
_FRAME_OVERHEAD = _FRAME_PREFIX.size + _CRC.size


def _header_json(header: BaseModel) -> bytes:
    if not isinstance(header, MESSAGE_TYPES):
        raise EncodeError(f"{type(header).__name__} is not a wire message")
    raw = header.model_dump_json().encode("utf-8")
    if len(raw) > MAX_HEADER_BYTES:
        raise EncodeError(f"header of {len(raw)} bytes > {MAX_HEADER_BYTES}")
    return raw


def _check_tensors_allowed(
    header: Any, tensors: Mapping[str, np.ndarray], error: type[Exception]
) -> None:
    names = tuple(tensors)
    if names and header.kind not in TENSOR_KINDS:
        raise error(f"{header.kind} frames cannot carry tensors")
    if isinstance(header, ModelDownload) and header.names != names:
        raise error("ModelDownload.names does not match the frame's tensors")
    if isinstance(header, SecAggMessage):
        _check_secagg_tensors(header.phase, tensors, error)
    if isinstance(header, Update) and header.scales is not None:
        # an int8 update's header names every tensor it scales, in payload order
        if tuple(header.scales) != names:
            raise error("Update.scales must name the frame's tensors, in their order")
        if any(np.asarray(t).dtype != np.int8 for t in tensors.values()):
            raise error("an Update with scales carries int8 tensors only")


def _check_secagg_tensors(
    phase: SecAggPhase, tensors: Mapping[str, np.ndarray], error: type[Exception]
) -> None:
    # One shape per phase, so a header can never travel with content of another kind.
    names = tuple(tensors)
    if phase is SecAggPhase.ABORT:
        if names:
            raise error("a SecAgg ABORT carries no tensors")
        return
    wanted = SECAGG_WORDS if phase is SecAggPhase.MASKED_INPUT else SECAGG_BODY
    if names != (wanted,):
        raise error(f"a SecAgg {phase.value} frame carries exactly one {wanted!r} tensor")
    array = np.asarray(tensors[wanted])
    if array.ndim != 1 or array.size == 0:
        raise error(f"SecAgg {wanted!r} must be a non-empty 1-D tensor")
    if wanted == SECAGG_BODY:
        if array.dtype != np.dtype("u1"):
            raise error("SecAgg 'body' must be uint8")
        if array.size > MAX_SECAGG_BODY_BYTES:
            raise error(f"SecAgg body of {array.size} bytes > {MAX_SECAGG_BODY_BYTES}")
    else:
        if array.dtype.newbyteorder("<") not in _WORD_DTYPES:
            raise error("SecAgg 'words' must be uint8 (packed), uint32 or uint64")
        if array.dtype == _PACKED and array.size > MAX_SECAGG_WORD_BYTES:
            raise error(f"SecAgg packed words: {array.size} bytes > {MAX_SECAGG_WORD_BYTES}")
        if array.dtype != _PACKED and array.size > MAX_SECAGG_WORDS:
            raise error(f"SecAgg words: {array.size} > {MAX_SECAGG_WORDS}")


def _words_dtype(modulus_bits: object) -> np.dtype[Any]:
    if isinstance(modulus_bits, bool) or not isinstance(modulus_bits, int):
        raise ValueError(f"modulus_bits must be an int in [8, 64], got {modulus_bits!r}")
    if not 8 <= modulus_bits <= 64:
        raise ValueError(f"modulus_bits must be an int in [8, 64], got {modulus_bits!r}")
    return _WIDE_WORDS.get(modulus_bits, _PACKED)


def secagg_words_tensor(data: bytes, *, modulus_bits: int) -> np.ndarray:
    """The ``"words"`` tensor of a masked input's wire bytes (``MaskedInput.data``: b-bit
    words packed little-endian, ``fedward.privacy.secagg.quantize.words_to_bytes``).

    ``<u4`` / ``<u8`` words for b = 32 / 64 (the same bytes, and the frames these
    widths always had), the bytes themselves (uint8) for any other b. EncodeError
    if the bytes do not split into those words.
    """
    dtype = _words_dtype(modulus_bits)
    if not isinstance(data, bytes) or len(data) % dtype.itemsize:
        raise EncodeError(f"masked words of {modulus_bits} bits cannot be {dtype} words")
    return np.frombuffer(data, dtype=dtype)


def secagg_words_data(tensors: Mapping[str, np.ndarray], *, modulus_bits: int) -> bytes:
    """The masked input's wire bytes from a decoded MASKED_INPUT frame's tensors.

    DecodeError unless the ``"words"`` tensor has the dtype :func:`secagg_words_tensor`
    gives for ``modulus_bits`` (the fill's, never the sender's say); the privacy
    layer then checks the length and the padding bits.
    """
    words = tensors.get(SECAGG_WORDS)
    dtype = _words_dtype(modulus_bits)
    if words is None or words.ndim != 1 or words.dtype.newbyteorder("<") != dtype:
        raise DecodeError(f"masked words of {modulus_bits} bits must be a 1-D {dtype} tensor")
    return np.ascontiguousarray(words, dtype=dtype).tobytes()


def secagg_frame_tensors(
    phase: SecAggPhase, *, body: bytes | None = None, words: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The tensors of a :class:`SecAggMessage` frame: ``body`` bytes or masked ``words``.

    Raises :class:`EncodeError` unless the pair fits ``phase`` (see the class).
    """
    if body is not None and words is not None:
        raise EncodeError("a SecAgg frame carries a body or words, not both")
    tensors: dict[str, np.ndarray] = {}
    if body is not None:
        tensors[SECAGG_BODY] = np.frombuffer(bytes(body), dtype=np.uint8)
    elif words is not None:
        tensors[SECAGG_WORDS] = np.asarray(words)
    _check_secagg_tensors(phase, tensors, EncodeError)
    return tensors


def secagg_body(tensors: Mapping[str, np.ndarray]) -> bytes:
    """The ``body`` bytes of a decoded SecAgg frame (checked by :func:`decode_frame`)."""
    if SECAGG_BODY not in tensors:
        raise DecodeError("SecAgg frame has no body")
    return np.ascontiguousarray(tensors[SECAGG_BODY], dtype=np.uint8).tobytes()


def frame_size(header: BaseModel, tensors: Mapping[str, np.ndarray] | None = None) -> int:
    """Exact ``len(encode_frame(header, tensors))``, without building the payload."""
    payload = tensor_bytes(tensors) if tensors else 0
    return _FRAME_OVERHEAD + len(_header_json(header)) + payload


def encode_frame(
    header: BaseModel,
    tensors: Mapping[str, np.ndarray] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> bytes:
    """Encode one message header plus optional tensors into a frame.

    Raises :class:`EncodeError` for a non-message header, tensors on a kind
    that cannot carry them or a ``ModelDownload`` whose names disagree with
    its tensors; :class:`MessageTooLarge` above ``max_bytes``.
    """
    raw_header = _header_json(header)
    _check_tensors_allowed(header, tensors or {}, EncodeError)
    size = _FRAME_OVERHEAD + len(raw_header) + (tensor_bytes(tensors) if tensors else 0)
    if size > min(max_bytes, MAX_FRAME_BYTES):
        raise MessageTooLarge(f"frame of {size} bytes > limit {max_bytes}")
    payload = encode_tensors(tensors) if tensors else b""
    prefix = _FRAME_PREFIX.pack(FRAME_MAGIC, FRAME_VERSION, 0, len(raw_header), len(payload))
    head = prefix + raw_header
    return head + _CRC.pack(zlib.crc32(head)) + payload


def _reject_constant(token: str) -> None:
    raise DecodeError(f"non-finite number {token} in header")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DecodeError("duplicate key in header")
    return obj


def parse_header(raw: bytes) -> Message:
    """Validate one JSON header; version is checked before the schema.

    Duplicate keys are rejected so that no two parsers (ours, an auditor's)
    can disagree about what a header says.
    """
    try:
        text = raw.decode("utf-8")  # json.loads(bytes) would also sniff UTF-16/32
        obj = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_reject_duplicates
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError(f"header is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise DecodeError("header is not a JSON object")
    version = obj.get("protocol_version")
    if type(version) is not int:  # bool is a subclass of int; `type is` excludes it
        raise DecodeError("header lacks an integer protocol_version")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {version} (supported: {PROTOCOL_VERSION})")
    try:
        return MESSAGE_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise DecodeError(f"invalid header: {exc}") from exc


def decode_frame(
    data: bytes | bytearray | memoryview, *, max_bytes: int
) -> tuple[Message, dict[str, np.ndarray]]:
    """Decode :func:`encode_frame` output into ``(message, tensors)``.

    Every malformed input raises :class:`DecodeError`; an intact frame of
    another frame or protocol version raises :class:`UnsupportedVersion`;
    more than ``max_bytes`` raises :class:`MessageTooLarge` before parsing.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) > max_bytes:
        raise MessageTooLarge(f"frame of {len(view)} bytes > limit {max_bytes}")
    if len(view) < _FRAME_OVERHEAD:
        raise DecodeError("frame too short")
    magic, version, flags, header_len, payload_len = _FRAME_PREFIX.unpack(
        view[: _FRAME_PREFIX.size]
    )
    if magic != FRAME_MAGIC:
        raise DecodeError("bad frame magic")
    head_end = _FRAME_PREFIX.size + header_len
    if not 1 <= header_len <= MAX_HEADER_BYTES or head_end + _CRC.size > len(view):
        raise DecodeError(f"bad header length {header_len}")
    if head_end + _CRC.size + payload_len != len(view):
        raise DecodeError(f"frame length differs from announced payload of {payload_len} bytes")
    (crc,) = _CRC.unpack(view[head_end : head_end + _CRC.size])
    if zlib.crc32(view[:head_end]) != crc:
        raise DecodeError("frame header CRC mismatch")
    if version != FRAME_VERSION:
        raise UnsupportedVersion(f"frame version {version} (supported: {FRAME_VERSION})")
    if flags != 0:
        raise DecodeError(f"unknown frame flags {flags:#x}")
    message = parse_header(bytes(view[_FRAME_PREFIX.size : head_end]))
    rest = view[head_end + _CRC.size :]
    tensors = decode_tensors(rest, max_bytes=max_bytes) if len(rest) else {}
    _check_tensors_allowed(message, tensors, DecodeError)
    return message, tensors
