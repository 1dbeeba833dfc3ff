"""MQTT <-> StudyService: the coordinator's side of the live federation.

The bridge only knows the :class:`fedward.protocol.transport.Transport` seam, so the
same code runs over Mosquitto, the embedded amqtt broker and the in-memory
broker of the tests. Per study it subscribes to the uplink filters::

    fedward/v1/{study}/enrol/+      Enrol      -> service.enrol        -> EnrolAck on ack/{device}
    fedward/v1/{study}/update/+     Update     -> service.submit_updates -> Ack on ack/{device}
    fedward/v1/{study}/heartbeat/+  Heartbeat  -> service.heartbeat
                                    ErrorMessage -> service.device_error (a device
                                    declines a task: its own budget is spent)
    fedward/v1/{study}/secagg/+     SecAggMessage -> service.secagg_receive
                                    -> SecAggMessage on fill/{device} for each member

and publishes every task the service hands out as its model frame on
``model/{version}/{subset}`` followed by the Task on ``task/{device}``
(model first: the agent then holds the tensors it lacks when the task comes).

Why updates go in batches: the worker takes a burst of queued messages at once
(up to ``update_batch``) and hands its consecutive update frames to
``service.submit_updates``, one database transaction for all of them; each Ack
is published after that commit. If the commit fails nothing is acked and the
devices' outboxes re-deliver.

Why a single worker thread: transport callbacks run on the network thread
(paho's), which must stay free for keep-alives and acks, and the service's
calls are then serialised without the bridge needing locks of its own. The
worker also runs ``service.dispatch`` after enrolments and updates (once per
burst of queued messages, at most ``dispatch_batch`` apart: each dispatch is a
service transaction) and on a timer, and ``service.task_timeouts`` on a slower
timer. A secure-aggregation study's phase timers (``service.secagg_tick``) run on
the dispatch timer; whatever a fill sends (roster, deliveries, unmask requests,
aborts) goes to each member's own ``fill/{device}`` topic, signed like every
downlink message.

Trust: with ``security`` (a :class:`~fedward.coordinator.mqtt.security.WireSecurity`;
every shipped entry point passes one) every uplink message must come in a
signed envelope (:mod:`fedward.protocol.signing`) that verifies under the key
its device enrolled with, for this study and the topic's device id, with a
counter above the last one accepted from that device; an Enrol is signed by
the key it carries and needs the proof of an operator-issued enrolment secret
(``service.enrol_authenticated``), and enrolment attempts are rate-limited.
Every downlink message (tasks, model frames, acks, errors) is signed with the
coordinator's wire key, which devices pin at enrolment. A message that fails
any of this is refused before it is decoded, counted (``BridgeStats.rejected``
and the service's wire refusals, hence ``/metrics``) and audited as
``anonymous`` (the id its topic claims is a detail, never the actor), with no
reply to the claimed device. Without ``security`` (in-process tests only) the
topic is the identity, as a broker ACL would make it.

Every uplink message is also route-checked: the ids it names must equal the
topic's. Anything malformed, misrouted or refused is counted in
:attr:`BridgeStats.rejected`, audited (a malformed update through
``service.submit_updates``, which refuses and audits it, under the
authenticated device; anything else through the ``on_reject`` hook), answered
with an ``ErrorMessage`` when a device is authenticated (or, without
``security``, named), and dropped; nothing a device sends can stop the loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from fedward.protocol.enrolment import ack_proof
from fedward.protocol.errors import (
    AuthError,
    BadSignature,
    ChunkError,
    MessageTooLarge,
    NotEnrolled,
    ProtocolError,
    Replayed,
    RouteError,
    Unsigned,
    UnsupportedVersion,
)
from fedward.protocol.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Ack,
    Enrol,
    EnrolAck,
    ErrorCode,
    ErrorMessage,
    Heartbeat,
    SecAggMessage,
    Task,
    Update,
    decode_frame,
    encode_frame,
)
from fedward.protocol.signing import Role, SealContext, open_seal, verify
from fedward.protocol.topics import (
    TopicInfo,
    TopicKind,
    check_route,
    device_filter,
    device_topic,
    model_topic,
    parse_topic,
)
from fedward.protocol.transport import Transport

from .security import WireSecurity

log = logging.getLogger(__name__)

UPLINK_KINDS = (TopicKind.ENROL, TopicKind.UPDATE, TopicKind.HEARTBEAT, TopicKind.SECAGG)


class FillOutboundLike(Protocol):
    # service.secagg.OutboundSecAgg: one framed SecAgg step for one member
    @property
    def device_id(self) -> str: ...
    @property
    def frame(self) -> bytes: ...


class OutboundLike(Protocol):
    # read-only members: a frozen dataclass (service.views.OutboundTask) matches
    @property
    def device_id(self) -> str: ...
    @property
    def task(self) -> Task: ...
    @property
    def model_frame(self) -> bytes: ...


class StudyServiceLike(Protocol):
    """The part of :class:`fedward.coordinator.service.StudyService` the bridge uses."""

    def enrol(self, study_id: str, msg: Enrol) -> EnrolAck: ...
    def submit_updates(
        self,
        study_id: str,
        frames: Sequence[bytes],
        *,
        senders: Sequence[str | None] | None = None,
    ) -> list[Ack]: ...
    def heartbeat(self, study_id: str, msg: Heartbeat) -> bool: ...
    def device_error(self, study_id: str, device_id: str, message: ErrorMessage) -> bool: ...
    def dispatch(self, study_id: str) -> Sequence[OutboundLike]: ...
    def task_timeouts(self) -> Any: ...
    # a service without secure aggregation (a test's fake) may lack these two:
    # def secagg_receive(study_id, message, tensors, *, sender, size) -> Sequence[FillOutboundLike]
    # def secagg_tick(study_id) -> Sequence[FillOutboundLike]
    # used only with WireSecurity:
    def enrol_authenticated(self, study_id: str, msg: Enrol) -> tuple[EnrolAck, bytes | None]: ...
    def device_public_key(self, study_id: str, device_id: str) -> bytes: ...
    def wire_refused(
        self,
        study_id: str,
        *,
        sender: str | None,
        reason: str,
        detail: str,
        claimed_device_id: str | None,
        topic_kind: str | None,
        count: int = 1,
    ) -> None: ...


RejectHook = Callable[[str, str | None, str, str], None]
"""``(study_id, device_id or None, reason, detail)``: audit a dropped message."""


class RejectKind(StrEnum):
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    ROUTE = "route"
    WRONG_TOPIC = "wrong_topic"
    REFUSED = "refused"
    INTERNAL = "internal"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    REPLAYED = "replayed"
    NOT_ENROLLED = "not_enrolled"
    ENROL_RATE_LIMITED = "enrol_rate_limited"
    HEARTBEAT_REFUSED = "heartbeat_refused"
    CHUNK = "chunk"


_ERROR_CODES = {
    RejectKind.MALFORMED: ErrorCode.MALFORMED,
    RejectKind.UNSUPPORTED_VERSION: ErrorCode.UNSUPPORTED_VERSION,
    RejectKind.TOO_LARGE: ErrorCode.TOO_LARGE,
    RejectKind.ROUTE: ErrorCode.UNAUTHORIZED,
    RejectKind.WRONG_TOPIC: ErrorCode.MALFORMED,
    RejectKind.INTERNAL: ErrorCode.INTERNAL,
}


def _reject_kind(exc: ProtocolError) -> RejectKind:
    if isinstance(exc, Unsigned):
        return RejectKind.UNSIGNED
    if isinstance(exc, Replayed):
        return RejectKind.REPLAYED
    if isinstance(exc, AuthError):
        return RejectKind.BAD_SIGNATURE
    if isinstance(exc, ChunkError):
        return RejectKind.CHUNK
    if isinstance(exc, RouteError):
        return RejectKind.ROUTE
    if isinstance(exc, MessageTooLarge):
        return RejectKind.TOO_LARGE
    if isinstance(exc, UnsupportedVersion):
        return RejectKind.UNSUPPORTED_VERSION
    return RejectKind.MALFORMED


@dataclass
class BridgeStats:
    received: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    acks: Counter = field(default_factory=Counter)
    tasks_sent: int = 0
    model_bytes_sent: int = 0
    timeouts_checked: int = 0
    publish_failures: int = 0
    secagg_frames_sent: int = 0
    secagg_bytes_sent: int = 0


class _Tick(StrEnum):
    DISPATCH = "dispatch"
    TIMEOUTS = "timeouts"
    SECAGG = "secagg"


_Item = tuple[str, bytes] | _Tick


@dataclass(frozen=True)
class _PendingUpdate:
    """An update frame waiting for its burst's batch (``rejected``: why it is malformed)."""

    info: TopicInfo
    payload: bytes
    rejected: RejectKind | None
    sender: str | None = None  # the authenticated device (with WireSecurity)


class StudyBridge:
    """Connects one study of a service to a transport. ``start()``/``stop()``.

    The transport is connected by the caller (it may carry several studies);
    subscriptions made in ``start()`` become active on connect. ``refuse`` maps
    a service exception to a device-facing ``ErrorCode`` (or ``None`` to treat
    it as an internal error); ``on_reject`` audits dropped messages.
    """

    def __init__(
        self,
        service: StudyServiceLike,
        transport: Transport,
        *,
        study_id: str,
        dispatch_interval_s: float = 1.0,
        timeout_interval_s: float = 5.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        dispatch_batch: int = 64,
        update_batch: int = 64,
        refuse: Callable[[Exception], ErrorCode | None] = lambda exc: None,
        on_reject: RejectHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        security: WireSecurity | None = None,
    ) -> None:
        if dispatch_interval_s <= 0 or timeout_interval_s <= 0:
            raise ValueError("intervals must be > 0")
        if dispatch_batch < 1 or update_batch < 1:
            raise ValueError("dispatch_batch and update_batch must be >= 1")
        self.update_batch = update_batch
        self.dispatch_batch = dispatch_batch
        self._dispatch_due = 0
        self.service = service
        self.transport = transport
        self.study_id = study_id
        self.dispatch_interval_s = dispatch_interval_s
        self.timeout_interval_s = timeout_interval_s
        self.max_message_bytes = max_message_bytes
        self.refuse = refuse
        self.on_reject = on_reject
        self.clock = clock
        self.stats = BridgeStats()
        self.security = security
        self._keys: dict[str, bytes] = {}  # device -> enrolled key (never changes for an id)
        self._inbox: queue.Queue[_Item | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Condition()
        self._busy = 0
        self._secagg_receive = getattr(service, "secagg_receive", None)
        self._secagg_tick = getattr(service, "secagg_tick", None)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        for kind in UPLINK_KINDS:
            self.transport.subscribe(device_filter(kind, self.study_id), self._enqueue, qos=1)
        for target, name in ((self._work, "worker"), (self._tick, "timer")):
            thread = threading.Thread(
                target=target, name=f"bridge-{self.study_id}-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self.request_dispatch()

    def stop(self) -> None:
        """Stop the threads; does not close the caller's transport."""
        self._stop.set()
        self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        if self.security is not None:
            self.security.save()
        for kind in UPLINK_KINDS:
            try:
                self.transport.unsubscribe(device_filter(kind, self.study_id))
            except ProtocolError:
                pass

    def request_dispatch(self) -> None:
        self._inbox.put(_Tick.DISPATCH)

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is processed (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            return self._idle.wait_for(
                lambda: self._inbox.empty() and self._busy == 0,
                max(0.0, deadline - time.monotonic()),
            )

    # -- threads ----------------------------------------------------------------

    def _enqueue(self, topic: str, payload: bytes) -> None:
        """Transport callback: hand off, never process on the network thread."""
        self._inbox.put((topic, payload))

    def _tick(self) -> None:
        last_timeouts = self.clock()
        while not self._stop.wait(self.dispatch_interval_s):
            if self._secagg_tick is not None:
                self._inbox.put(_Tick.SECAGG)
            self._inbox.put(_Tick.DISPATCH)
            if self.clock() - last_timeouts >= self.timeout_interval_s:
                last_timeouts = self.clock()
                self._inbox.put(_Tick.TIMEOUTS)

    def _work(self) -> None:
        while True:
            item = self._inbox.get()
            with self._idle:
                self._busy += 1
            burst = self._take_burst(item)
            stopping = burst[-1] is None
            try:
                self._process_burst([i for i in burst if i is not None])
            except Exception:  # the loop outlives any bug in one message
                log.exception("bridge %s: unexpected failure", self.study_id)
                self.stats.rejected[RejectKind.INTERNAL.value] += 1
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
            if stopping:
                return

    def _take_burst(self, first: _Item | None) -> list[_Item | None]:
        """``first`` plus whatever is already queued (up to ``update_batch``), in order."""
        burst: list[_Item | None] = [first]
        while first is not None and len(burst) < self.update_batch:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            burst.append(item)
            if item is None:
                break
        return burst

    def _process_burst(self, burst: list[_Item]) -> None:
        """Process a burst in order; consecutive updates go to the service as one batch."""
        updates: list[_PendingUpdate] = []
        for item in burst:
            if isinstance(item, tuple):
                pending = self._handle(*item)
                if isinstance(pending, _PendingUpdate):
                    updates.append(pending)
                    continue
                self._flush_updates(updates)
                if pending:
                    self._dispatch_due += 1
            else:
                self._flush_updates(updates)
                self._tick_item(item)
            self._maybe_dispatch()
        self._flush_updates(updates)
        self._maybe_dispatch()

    def _tick_item(self, item: _Tick) -> None:
        if item is _Tick.SECAGG:
            if self._secagg_tick is not None:
                self._send_fill(self._secagg_tick(self.study_id))
            self._dispatch_due += 1  # an aborted or merged fill frees its members
            return
        if item is _Tick.TIMEOUTS:
            self.stats.timeouts_checked += 1
            self.service.task_timeouts()
            if self.security is not None:
                self.security.save()
        self._dispatch_due += 1

    def _maybe_dispatch(self) -> None:
        # Coalesce: under load, one dispatch per burst of queued uplink messages (each
        # dispatch is a service transaction); when idle, right after the message.
        if self._dispatch_due and (
            self._inbox.empty() or self._dispatch_due >= self.dispatch_batch
        ):
            self._dispatch_due = 0
            self._dispatch()

    def _flush_updates(self, updates: list[_PendingUpdate]) -> None:
        """Submit the collected update frames as one batch; ack each after its commit.

        If the batch's commit fails nothing is acked: the devices' outboxes
        re-deliver, and the service's receipts dedupe what did commit.
        """
        if not updates:
            return
        batch = list(updates)
        updates.clear()
        try:
            frames = [u.payload for u in batch]
            if self.security is not None:
                acks = self.service.submit_updates(
                    self.study_id, frames, senders=[u.sender for u in batch]
                )
            else:
                acks = self.service.submit_updates(self.study_id, frames)
        except Exception:
            log.exception("bridge %s: a batch of %d updates failed", self.study_id, len(batch))
            self.stats.rejected[RejectKind.INTERNAL.value] += len(batch)
            return
        for pending, ack in zip(batch, acks, strict=True):
            if pending.rejected is None:
                self.stats.acks[ack.status.value] += 1
                self._dispatch_due += 1
            else:
                self.stats.rejected[pending.rejected.value] += 1
            self._reply(pending.info, ack)

    # -- authentication -------------------------------------------------------------

    def on_transport_error(self, topic: str, exc: Exception) -> None:
        """The transport's receive-path error hook (bad chunks): counted and audited.

        Runs on the network thread; the sender is not authenticated (nothing of the
        message verified), so the audit entry is anonymous.
        """
        kind = _reject_kind(exc) if isinstance(exc, ProtocolError) else RejectKind.INTERNAL
        try:
            info: TopicInfo | None = parse_topic(topic)
        except ProtocolError:
            info = None
        self._wire_refuse(info, kind, f"{type(exc).__name__}: {exc}", sender=None)

    def _sender_key(self, device_id: str) -> str:
        """Replay state is per study and device: one id may be enrolled in two studies."""
        return f"{self.study_id}/{device_id}"

    def _device_key(self, device_id: str) -> bytes:
        key = self._keys.get(device_id)
        if key is None:
            try:
                key = self.service.device_public_key(self.study_id, device_id)
            except Exception as exc:  # DeviceNotFound, unknown study
                raise NotEnrolled(f"no enrolled device {device_id}") from exc
            self._keys[device_id] = key
        return key

    def _authenticate(self, info: TopicInfo, payload: bytes) -> tuple[bytes, str | None, int]:
        """The verified inner frame, its sender (None for an Enrol not yet admitted), its counter.

        Raises AuthError (or DecodeError) for anything not proven.
        """
        if self.security is None or info.device_id is None:
            raise Unsigned("no security configured")  # never reached: callers check
        sealed = open_seal(payload)
        device = info.device_id
        context = SealContext(Role.DEVICE, self.study_id, device)
        if info.kind is TopicKind.ENROL:
            # Signed by the key it carries (proof of possession); who the device is
            # comes from the enrolment secret, checked by the service.
            message, _ = decode_frame(sealed.frame, max_bytes=self.max_message_bytes)
            if not isinstance(message, Enrol):
                raise BadSignature(f"{message.kind} on an enrol topic")
            verify(sealed, public_key=bytes(message.public_key), context=context)
            known = self._keys.get(device)
            if known is None:
                try:
                    known = self._device_key(device)
                except NotEnrolled:
                    known = None
            if known is not None and known == bytes(message.public_key):
                self.security.replay.check(self._sender_key(device), sealed.counter)
                return sealed.frame, device, sealed.counter
            return sealed.frame, None, sealed.counter
        frame = verify(sealed, public_key=self._device_key(device), context=context)
        self.security.replay.check(self._sender_key(device), sealed.counter)
        return frame, device, sealed.counter

    def _wire_refuse(
        self, info: TopicInfo | None, kind: RejectKind, detail: str, *, sender: str | None
    ) -> None:
        """Count and (throttled) audit a message refused on the wire; no reply."""
        self.stats.rejected[kind.value] += 1
        log.info("bridge %s: refused %s (%s): %s", self.study_id, info, kind, detail)
        security = self.security
        count = security.throttle.admit(kind.value) if security is not None else 1
        if count == 0:
            return
        try:
            self.service.wire_refused(
                self.study_id,
                sender=sender,
                reason=kind.value,
                detail=detail[:500],
                claimed_device_id=info.device_id if info is not None else None,
                topic_kind=info.kind.value if info is not None else None,
                count=count,
            )
        except Exception:
            log.exception("bridge %s: could not audit a wire refusal", self.study_id)

    # -- uplink -------------------------------------------------------------------

    def _handle(self, topic: str, payload: bytes) -> bool | _PendingUpdate:
        """Process one uplink message; True if the study's schedule may have changed.

        An update frame (well-formed, or malformed but on its own update topic) is
        not submitted here but returned, to be submitted with its burst's batch.
        """
        info: TopicInfo | None = None
        sender: str | None = None
        counter = 0
        try:
            info = parse_topic(topic)
            if info.kind not in UPLINK_KINDS or info.study_id != self.study_id:
                self._reject(info, RejectKind.WRONG_TOPIC, f"{info.kind} on {topic}")
                return False
        except ProtocolError as exc:
            self._reject(info, _reject_kind(exc), str(exc))
            return False
        if self.security is not None:
            if info.kind is TopicKind.ENROL and not self.security.limits.allow_enrol(
                info.device_id or ""
            ):
                self._wire_refuse(info, RejectKind.ENROL_RATE_LIMITED, "too many", sender=None)
                return False
            try:
                payload, sender, counter = self._authenticate(info, payload)
            except NotEnrolled as exc:
                self._wire_refuse(info, RejectKind.NOT_ENROLLED, str(exc), sender=None)
                if info.kind is TopicKind.HEARTBEAT and info.device_id is not None:
                    self._send_error(info.device_id, ErrorCode.NOT_ENROLLED, "not enrolled")
                return False
            except ProtocolError as exc:  # unsigned, forged, replayed, or no envelope at all
                self._wire_refuse(info, _reject_kind(exc), str(exc), sender=None)
                return False
        try:
            message, tensors = decode_frame(payload, max_bytes=self.max_message_bytes)
            check_route(info, message)
        except ProtocolError as exc:
            kind = _reject_kind(exc)
            if info.kind is TopicKind.UPDATE and kind is not RejectKind.ROUTE:
                # The service decodes again, refuses, counts and audits it (with the
                # frame's hash, under the authenticated sender); its REJECTED ack
                # tells the device.
                return _PendingUpdate(info=info, payload=payload, rejected=kind, sender=sender)
            if self.security is not None and sender is None:  # an Enrol not admitted yet
                self._wire_refuse(info, kind, str(exc), sender=None)
                return False
            self._reject(info, kind, str(exc))
            return False
        self.stats.received[info.kind.value] += 1
        try:
            if isinstance(message, Enrol):
                self._enrol(info, message, sender, counter)
                return True
            if isinstance(message, Update):
                return _PendingUpdate(info=info, payload=payload, rejected=None, sender=sender)
            if isinstance(message, SecAggMessage):
                return self._secagg(info, message, tensors, sender, size=len(payload))
            if isinstance(message, Heartbeat):
                if self.service.heartbeat(self.study_id, message) is False:
                    # Unknown (or revoked) here: tell the device, which re-enrols (and
                    # a revoked one is then refused for good, and stops).
                    if self.security is not None and info.device_id is not None:
                        self._wire_refuse(  # counted and audited once, under the device
                            info, RejectKind.HEARTBEAT_REFUSED, "not enrolled", sender=sender
                        )
                        self._send_error(info.device_id, ErrorCode.NOT_ENROLLED, "not enrolled")
                        return False
                    self.stats.rejected[RejectKind.HEARTBEAT_REFUSED.value] += 1
                    self._reject(
                        info, RejectKind.REFUSED, "not enrolled", code=ErrorCode.NOT_ENROLLED
                    )
                return False
            if isinstance(message, ErrorMessage) and info.device_id is not None:
                # A refusal frees the task's slot at once: dispatch may fill it.
                return self.service.device_error(self.study_id, info.device_id, message)
        except Exception as exc:  # a refusal by the service, or its bug
            code = self.refuse(exc)
            kind = RejectKind.INTERNAL if code is None else RejectKind.REFUSED
            if code is None:
                log.exception("bridge %s: service failed on %s", self.study_id, topic)
            self._reject(info, kind, f"{type(exc).__name__}: {exc}", code=code)
            return False
        self._reject(info, RejectKind.WRONG_TOPIC, f"unexpected {message.kind}")  # unreachable
        return False

    def _reject(
        self,
        info: TopicInfo | None,
        kind: RejectKind,
        detail: str,
        *,
        code: ErrorCode | None = None,
    ) -> None:
        self.stats.rejected[kind.value] += 1
        device = info.device_id if info is not None else None
        log.warning(
            "bridge %s: dropped message from %s (%s): %s", self.study_id, device, kind, detail
        )
        if self.on_reject is not None:
            try:
                self.on_reject(self.study_id, device, kind.value, detail[:500])
            except Exception:
                log.exception("bridge %s: audit hook failed", self.study_id)
        code = code or _ERROR_CODES.get(kind)
        if (
            info is not None
            and device is not None
            and code is not None
            and info.study_id == self.study_id
        ):
            self._send_error(device, code, detail)

    def _enrol(self, info: TopicInfo, message: Enrol, sender: str | None, counter: int) -> None:
        security = self.security
        if security is None:
            self._reply(info, self.service.enrol(self.study_id, message))
            return
        if sender is not None:
            # Signed by the key this id enrolled with (a restart, or a re-enrolment the
            # coordinator asked for): no secret needed; the device has pinned our key.
            self._reply(info, self.service.enrol(self.study_id, message))
            return
        ack, mac = self.service.enrol_authenticated(self.study_id, message)
        if mac is None:  # no valid secret: audited as anonymous by the service
            self.stats.rejected[RejectKind.REFUSED.value] += 1
            # Signed but unproven: a device that pinned no key yet takes it as a stop
            # (a forger could only do what dropping the device's messages does).
            self._reply(info, ack.model_copy(update={"coordinator_key": security.public_key}))
            return
        if ack.accepted and sender is None:
            try:
                security.replay.check(self._sender_key(message.device_id), counter)
            except Replayed:
                pass  # an older enrolment replayed after a newer message: answer anyway
        self._keys.pop(message.device_id, None)
        proof = ack_proof(
            mac,
            study_id=self.study_id,
            device_id=message.device_id,
            public_key=bytes(message.public_key),
            coordinator_key=security.public_key,
            accepted=ack.accepted,
        )
        ack = ack.model_copy(update={"coordinator_key": security.public_key, "proof": proof})
        self._reply(info, ack)

    def _secagg(
        self,
        info: TopicInfo,
        message: SecAggMessage,
        tensors: dict[str, Any],
        sender: str | None,
        *,
        size: int,
    ) -> bool:
        """One step of a fill: the service judges it (refusals audited there); answers out."""
        if self._secagg_receive is None:
            self._reject(
                info, RejectKind.WRONG_TOPIC, "this coordinator runs no secure aggregation"
            )
            return False
        # Without WireSecurity (in-process tests) the topic is the identity.
        who = sender if self.security is not None else info.device_id
        out = self._secagg_receive(self.study_id, message, tensors, sender=who, size=size)
        self._send_fill(out)
        return True  # a merge or an abort frees members for the next fill

    # -- downlink ---------------------------------------------------------------

    def _send_fill(self, outbound: Sequence[FillOutboundLike]) -> None:
        for out in outbound:
            topic = device_topic(TopicKind.FILL, self.study_id, out.device_id)
            if self._send(topic, out.frame, device_id=out.device_id):
                self.stats.secagg_frames_sent += 1
                self.stats.secagg_bytes_sent += len(out.frame)

    def _send_error(self, device_id: str, code: ErrorCode, detail: str) -> None:
        self._send(
            device_topic(TopicKind.ERROR, self.study_id, device_id),
            encode_frame(ErrorMessage(code=code, detail=detail[:200])),
            device_id=device_id,
        )

    def _send(self, topic: str, frame: bytes, *, device_id: str = "") -> bool:
        try:
            if self.security is not None:
                frame = self.security.seal(frame, study_id=self.study_id, device_id=device_id)
            self.transport.publish(topic, frame, qos=1)
            return True
        except ProtocolError as exc:  # TransportError included: paho's own errors map to it
            self.stats.publish_failures += 1
            log.warning("bridge %s: publish to %s failed: %s", self.study_id, topic, exc)
            return False

    def _reply(self, info: TopicInfo, message: Ack | EnrolAck) -> None:
        if info.device_id is None:
            return
        topic = device_topic(TopicKind.ACK, self.study_id, info.device_id)
        self._send(topic, encode_frame(message), device_id=info.device_id)

    def _dispatch(self) -> None:
        for out in self.service.dispatch(self.study_id):
            task = out.task
            self._send(
                model_topic(self.study_id, task.model_version, task.subset_id), out.model_frame
            )
            self.stats.model_bytes_sent += len(out.model_frame)
            if self._send(
                device_topic(TopicKind.TASK, self.study_id, out.device_id),
                encode_frame(task),
                device_id=out.device_id,
            ):
                self.stats.tasks_sent += 1


__all__ = ["BridgeStats", "RejectKind", "StudyBridge", "StudyServiceLike", "UPLINK_KINDS"]
