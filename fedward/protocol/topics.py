"""MQTT topic layout and a strict topic parser.

Layout (``{study}``, ``{device}``, ``{subset}`` match ``[A-Za-z0-9_.-]{1,64}``,
``{version}`` is a decimal model version)::

    fedward/v1/{study}/enrol/{device}               up    Enrol
    fedward/v1/{study}/update/{device}              up    Update (frame with tensors)
    fedward/v1/{study}/heartbeat/{device}           up    Heartbeat, ErrorMessage (a refusal)
    fedward/v1/{study}/secagg/{device}              up    SecAggMessage (uplink phases)
    fedward/v1/{study}/task/{device}                down  Task
    fedward/v1/{study}/ack/{device}                 down  Ack, EnrolAck
    fedward/v1/{study}/error/{device}               down  ErrorMessage
    fedward/v1/{study}/fill/{device}                down  SecAggMessage (downlink phases)
    fedward/v1/{study}/model/{version}/{subset}     down  ModelDownload (broadcast)

A device that declines a task (its own privacy budget is spent) says so
with an ``ErrorMessage`` (code ``BUDGET_EXHAUSTED``, ``detail`` starting with
the task id) on its heartbeat topic: it is about the device's state, it needs
no topic (nor ACL line) of its own, and the uplink ``error`` kind would clash
with the downlink one the device reads.

Why this shape:

* The device id is the last level of every per-device topic, so a broker
  ACL can bind a client to its own topics, e.g. for Mosquitto with
  client id == device id::

      pattern write fedward/v1/+/enrol/%c
      pattern write fedward/v1/+/update/%c
      pattern write fedward/v1/+/heartbeat/%c
      pattern write fedward/v1/+/secagg/%c
      pattern read  fedward/v1/+/task/%c
      pattern read  fedward/v1/+/ack/%c
      pattern read  fedward/v1/+/error/%c
      pattern read  fedward/v1/+/fill/%c
      pattern read  fedward/v1/+/model/#

  and the coordinator can subscribe to ``fedward/v1/{study}/update/+``.
* Ids cannot contain ``/``, ``+``, ``#`` or ``$``, so no id can inject a
  level or a wildcard; :func:`parse_topic` rejects anything else.
* ``v1`` is the topic-layout version, separate from the message
  ``protocol_version``, so both can evolve.
* Model frames are broadcast per (version, subset) so every device
  training the same subset shares one publish. They are not retained by
  default: a retained slot holds one MQTT message, which breaks for
  chunked frames (see :mod:`fedward.protocol.transport`). Devices with persistent
  sessions still receive them after a short disconnect.

:func:`check_route` ties a decoded message to the topic it arrived on, so
device A cannot publish an update that claims to be from device B, and
that a SecAgg step travels only in its direction (a device cannot post a
roster on its ``secagg`` topic, nor the coordinator a masked input on
``fill``). Secure-aggregation steps are per device in both directions: a
roster or delivery is addressed to one member of the fill, never broadcast,
so the ACL keeps one device from reading another's shares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from fedward.protocol.errors import DecodeError, EncodeError, RouteError
from fedward.protocol.ids import is_valid_id
from fedward.protocol.messages import Message, MessageKind, SecAggMessage

ROOT = "fedward"
LAYOUT_VERSION = "v1"
_VERSION_RE = re.compile(r"0|[1-9][0-9]{0,17}")


class Direction(StrEnum):
    UPLINK = "uplink"  # device -> coordinator
    DOWNLINK = "downlink"  # coordinator -> device(s)


class TopicKind(StrEnum):
    ENROL = "enrol"
    UPDATE = "update"
    HEARTBEAT = "heartbeat"
    TASK = "task"
    ACK = "ack"
    ERROR = "error"
    MODEL = "model"
    SECAGG = "secagg"
    FILL = "fill"

    @property
    def direction(self) -> Direction:
        return _DIRECTIONS[self]


_DIRECTIONS = {
    TopicKind.ENROL: Direction.UPLINK,
    TopicKind.UPDATE: Direction.UPLINK,
    TopicKind.HEARTBEAT: Direction.UPLINK,
    TopicKind.TASK: Direction.DOWNLINK,
    TopicKind.ACK: Direction.DOWNLINK,
    TopicKind.ERROR: Direction.DOWNLINK,
    TopicKind.MODEL: Direction.DOWNLINK,
    TopicKind.SECAGG: Direction.UPLINK,
    TopicKind.FILL: Direction.DOWNLINK,
}

EXPECTED_MESSAGES: dict[TopicKind, frozenset[MessageKind]] = {
    TopicKind.ENROL: frozenset({MessageKind.ENROL}),
    TopicKind.UPDATE: frozenset({MessageKind.UPDATE}),
    TopicKind.HEARTBEAT: frozenset({MessageKind.HEARTBEAT, MessageKind.ERROR}),
    TopicKind.TASK: frozenset({MessageKind.TASK}),
    TopicKind.ACK: frozenset({MessageKind.ACK, MessageKind.ENROL_ACK}),
    TopicKind.ERROR: frozenset({MessageKind.ERROR}),
    TopicKind.MODEL: frozenset({MessageKind.MODEL_DOWNLOAD}),
    TopicKind.SECAGG: frozenset({MessageKind.SECAGG}),
    TopicKind.FILL: frozenset({MessageKind.SECAGG}),
}
"""Which message kinds may travel on which topic kind."""

DEVICE_TOPIC_KINDS = frozenset(k for k in TopicKind if k is not TopicKind.MODEL)


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A parsed topic; ``device_id`` is set for per-device kinds, the
    ``model_version``/``subset_id`` pair for :attr:`TopicKind.MODEL`."""

    kind: TopicKind
    study_id: str
    device_id: str | None = None
    model_version: int | None = None
    subset_id: str | None = None


def _require_id(value: str, what: str) -> str:
    if not is_valid_id(value):
        raise EncodeError(f"invalid {what} {value!r}: must match [A-Za-z0-9_.-]{{1,64}}")
    return value


def _prefix(study_id: str) -> str:
    return f"{ROOT}/{LAYOUT_VERSION}/{_require_id(study_id, 'study id')}"


def device_topic(kind: TopicKind, study_id: str, device_id: str) -> str:
    """Topic of a per-device kind (everything but MODEL)."""
    if kind not in DEVICE_TOPIC_KINDS:
        raise EncodeError(f"{kind} is not a per-device topic kind")
    return f"{_prefix(study_id)}/{kind.value}/{_require_id(device_id, 'device id')}"


def model_topic(study_id: str, model_version: int, subset_id: str) -> str:
    """Broadcast topic of one model version restricted to one subset."""
    if type(model_version) is not int or not 0 <= model_version < 10**18:
        raise EncodeError(f"invalid model version {model_version!r}")
    return f"{_prefix(study_id)}/model/{model_version}/{_require_id(subset_id, 'subset id')}"


def device_filter(kind: TopicKind, study_id: str) -> str:
    """Coordinator-side filter for one per-device kind of every device."""
    if kind not in DEVICE_TOPIC_KINDS:
        raise EncodeError(f"{kind} is not a per-device topic kind")
    return f"{_prefix(study_id)}/{kind.value}/+"


def model_filter(study_id: str, subset_id: str | None = None) -> str:
    """Device-side filter for model broadcasts (all subsets if ``None``)."""
    subset = "+" if subset_id is None else _require_id(subset_id, "subset id")
    return f"{_prefix(study_id)}/model/+/{subset}"


def parse_topic(topic: str) -> TopicInfo:
    """Parse a concrete topic of our layout or raise :class:`DecodeError`."""
    if not isinstance(topic, str):
        raise DecodeError(f"topic must be str, got {type(topic).__name__}")
    levels = topic.split("/")
    if len(levels) < 5 or levels[0] != ROOT or levels[1] != LAYOUT_VERSION:
        raise DecodeError(f"not a {ROOT}/{LAYOUT_VERSION} topic: {topic!r}")
    study, kind_text = levels[2], levels[3]
    if not is_valid_id(study):
        raise DecodeError(f"invalid study id in topic {topic!r}")
    try:
        kind = TopicKind(kind_text)
    except ValueError:
        raise DecodeError(f"unknown topic kind {kind_text!r}") from None
    if kind is TopicKind.MODEL:
        if len(levels) != 6 or not _VERSION_RE.fullmatch(levels[4]) or not is_valid_id(levels[5]):
            raise DecodeError(f"malformed model topic {topic!r}")
        return TopicInfo(kind, study, model_version=int(levels[4]), subset_id=levels[5])
    if len(levels) != 5 or not is_valid_id(levels[4]):
        raise DecodeError(f"malformed device topic {topic!r}")
    return TopicInfo(kind, study, device_id=levels[4])


def check_route(info: TopicInfo, message: Message) -> None:
    """Raise :class:`RouteError` unless ``message`` may travel on ``info``.

    Checks the kind/topic pairing and that every id the message names
    (device, study, model version, subset) equals the one in the topic.
    """
    if message.kind not in EXPECTED_MESSAGES[info.kind]:
        raise RouteError(f"{message.kind} message on a {info.kind} topic")
    pairs = {
        "device_id": info.device_id,
        "study_id": info.study_id,
        "model_version": info.model_version,
        "subset_id": info.subset_id,
    }
    for field, expected in pairs.items():
        claimed = getattr(message, field, None)
        if claimed is not None and expected is not None and claimed != expected:
            raise RouteError(f"{field} {claimed!r} does not match topic value {expected!r}")
    if isinstance(message, SecAggMessage):
        uplink = info.kind.direction is Direction.UPLINK
        if message.phase.uplink != uplink:
            raise RouteError(f"SecAgg {message.phase.value} step on a {info.kind} topic")
