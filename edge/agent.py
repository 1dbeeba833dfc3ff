"""The live edge agent: enrol, take tasks, train, deliver updates exactly once.

Data path of one task::

    task topic ──► Task ─┐
    model topic ─► ModelDownload (tensors the device lacks) ─► held model ⊕ frame = base
                         └► worker thread: run_local_task(base) ─► update frame
                             ─► outbox (fsync) ─► publish QoS 1 ─► … ─► Ack ─► outbox.remove

Why each piece:

* Training runs on the agent's own worker thread, never in the transport's
  callback thread: a paho callback that trains for seconds would stall
  keep-alives, acks and every other message of the connection.
* The frame is durable in the :class:`~fedward.edge.outbox.Outbox` before it is
  published and is deleted only when the coordinator's Ack for its task id
  arrives. Entries are published again after a reconnect and whenever they
  stay unacknowledged for ``resend_after_s``; the coordinator de-duplicates by
  task id, so an update survives an outage and is still merged once.
* Model frames are broadcast per (version, subset) (:mod:`fedward.protocol.topics`),
  so the agent sees frames meant for other devices too. Every frame of
  version V carries V's values, so the agent overlays every frame of V on the
  last full model it holds. The bridge publishes a device's model frame
  before its task, so the device's own frame (exactly what it lacks) is in
  by the time its task is taken. ``ModelDownload`` does not say which version
  a partial frame is relative to; a ``base_version`` field would make that
  checkable (see the report on the protocol).
* Every incoming message is decoded strictly, its topic parsed and the route
  checked; anything else is counted in :attr:`AgentStats.rejected` and
  dropped. A bad message never raises into the transport.
* Trust (:mod:`fedward.edge.trust`): with an operator-issued enrolment secret
  (or a coordinator key pinned by an earlier run) every message the agent sends
  is signed with its key and a counter, and it acts only on messages signed by
  the coordinator key it pinned at enrolment: a forged Task, model frame or Ack
  is counted in :attr:`AgentStats.rejected` and dropped. An enrolment the
  coordinator refuses (revoked, unknown, no valid secret) stops the agent with
  the coordinator's reason (:attr:`EdgeAgent.refused`), instead of retrying.
* Heartbeats list the tasks the agent holds (queued, training, in the outbox,
  or in a secure-aggregation fill), so the coordinator frees a task this agent
  lost (a restart) at once.
* Secure aggregation (:mod:`fedward.edge.secagg`): a task with ``secagg`` makes
  the device one member of one fill. It advertises at once (in the transport
  thread, before training: the coordinator closes ADVERTISE on a timer) and
  trains in parallel on the worker; ROSTER, DELIVERY, UNMASK_REQUEST and ABORT
  arrive on its ``fill`` topic and are answered on its ``secagg`` topic; the
  trained update leaves only as masked words, once trained and delivered. The
  plain Update of a secagg task is never published, and a DP task's
  accountant is charged and saved before the masked input leaves. Every step
  is durable before it is published (:mod:`fedward.edge.secagg_store`); after
  a restart the agent restores its fills from disk and re-sends the exact
  bytes of each one's last step (a fill whose task was lost in the restart
  cannot train again and is dropped by the coordinator's phase timer).
* Peer keys (:mod:`fedward.edge.peer_evidence`): with ``audit_public_key`` set,
  a ROSTER is answered only if the signed audit log's enrolment records (the
  roster's evidence) prove every peer's identity key and that key signed the
  peer's advertisement; otherwise the device leaves the fill
  (:attr:`AgentStats.rosters_refused`) and the coordinator drops it at its phase
  timer. Without the key the agent logs at start and for every roster that peer
  keys are unchecked (:attr:`AgentStats.rosters_unchecked`).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedward.errors import EdgeError
from fedward.privacy.secagg import (
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    SecAggError,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from fedward.privacy.secagg import wire as secagg_wire
from fedward.protocol.errors import ProtocolError
from fedward.protocol.messages import (
    MAX_HELD_TASKS,
    Ack,
    DeviceStatus,
    Enrol,
    EnrolAck,
    ErrorCode,
    ErrorMessage,
    Heartbeat,
    ModelDownload,
    SecAggMessage,
    SecAggPhase,
    Task,
    decode_frame,
    encode_frame,
    secagg_body,
    secagg_frame_tensors,
    secagg_words_tensor,
)
from fedward.protocol.quantised import ROUNDING_KEY_BYTES
from fedward.protocol.topics import TopicKind, check_route, device_topic, model_filter, parse_topic
from fedward.protocol.transport import Transport
from fedward.tinytrain.models import Params, build_model, param_shapes
from fedward.tinytrain.training import LocalTrainConfig

from .budget import DeviceBudget, TaskRefused, check_plain_task, run_dp_task
from .dataset import LocalDataset
from .identity import DeviceIdentity
from .local import LocalOutcome, LocalTask, run_local_task
from .outbox import Outbox
from .peer_evidence import PeerCheck, PeerEvidenceRefused, PeerEvidenceVerifier, audit_key_from_hex
from .secagg import SecAggFloors, SecAggParticipant, SecAggRefused
from .secagg_store import SecAggStore
from .settings import AgentSettings
from .trust import AgentTrust
from .updates import encode_update, update_header

log = logging.getLogger(__name__)

MODEL_FILE = "model.npz"
SECAGG_DIR = "secagg"
AUDIT_HEAD_PREFIX = "audit-head-"
"""``state_dir/audit-head-<study>.json``: the largest audit tree head seen and peer pins."""
#: Finished fills kept in memory (and on disk) to answer a repeated request.
KEEP_FINISHED_FILLS = 8
_PHASE_OF: dict[type, SecAggPhase] = {
    KeyAdvertisement: SecAggPhase.ADVERTISE,
    ShareBundle: SecAggPhase.SHARES,
    MaskedInput: SecAggPhase.MASKED_INPUT,
    UnmaskResponse: SecAggPhase.UNMASK_RESPONSE,
}
_VERSION_KEY = "__version__"


class AgentError(EdgeError):
    """The agent cannot go on (enrolment refused, unusable state)."""


class EnrolmentRefused(AgentError):
    pass


@dataclass
class AgentStats:
    tasks_received: int = 0
    tasks_completed: int = 0
    tasks_abandoned: int = 0
    tasks_refused: int = 0
    updates_published: int = 0
    republished: int = 0
    heartbeats: int = 0
    acks: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    errors_received: Counter = field(default_factory=Counter)
    secagg_sent: Counter = field(default_factory=Counter)  # by phase value
    fills_refused: int = 0
    fills_aborted: int = 0
    rosters_refused: int = 0  # peer keys the audit log did not prove: the fill was left
    rosters_unchecked: int = 0  # answered with no audit key pinned (peer keys on trust)


@dataclass
class _FillMember:
    """This device in one fill: the participant and the task it trains (None if restored)."""

    participant: SecAggParticipant
    task: Task | None
    finished: bool = False  # answered the unmask request, or aborted

    @property
    def fill_id(self) -> str:
        return self.participant.fill_id

    @property
    def task_id(self) -> str:
        return self.participant.task_id


class _HeldModel:
    """The last full model the device holds plus frames of newer versions.

    Persisted to ``state_dir/model.npz`` so a restarted agent still holds what
    the coordinator believes it holds (it sends only tensors that changed).
    """

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]], *, keep: int) -> None:
        self.path = path
        self.shapes = shapes
        self.keep = keep
        self.version = -1
        self.params: Params = {}
        self.frames: OrderedDict[int, Params] = OrderedDict()
        self.cond = threading.Condition()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            with np.load(self.path, allow_pickle=False) as f:
                params = {n: f[n] for n in self.shapes}
                version = int(f[_VERSION_KEY])
        except (OSError, KeyError, ValueError) as exc:
            log.warning("ignoring unreadable held model %s: %s", self.path, exc)
            return
        if all(params[n].shape == s for n, s in self.shapes.items()):
            self.params, self.version = params, version

    def add_frame(self, version: int, tensors: Params) -> None:
        with self.cond:
            if version <= self.version and self.params:
                return  # older than what we hold: useless
            merged = self.frames.setdefault(version, {})
            merged.update(tensors)
            while len(self.frames) > self.keep:
                self.frames.popitem(last=False)
            self.cond.notify_all()

    def base_for(self, version: int, *, timeout_s: float, stop: threading.Event) -> Params | None:
        """Full parameters of ``version`` once held ⊕ frames cover every tensor."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not stop.is_set():
                if version == self.version and self.params:
                    return dict(self.params)
                frame = self.frames.get(version)
                if frame is not None:
                    base = {**self.params, **frame}
                    if set(base) == set(self.shapes):
                        return base
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.5))
        return None

    def hold(self, version: int, params: Params) -> None:
        """The device now fully holds ``version`` (what the coordinator assumes)."""
        with self.cond:
            if version < self.version:
                return
            self.version, self.params = version, params
            for v in [v for v in self.frames if v <= version]:
                del self.frames[v]
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **params, **{_VERSION_KEY: np.array(version)})
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)


def _validate_tensors(tensors: Params, shapes: dict[str, tuple[int, ...]]) -> None:
    for name, value in tensors.items():
        if name not in shapes:
            raise ProtocolError(f"unknown tensor {name!r}")
        if value.shape != shapes[name] or value.dtype != np.float32:
            raise ProtocolError(f"tensor {name!r} is {value.dtype}{value.shape}")
        if not np.all(np.isfinite(value)):
            raise ProtocolError(f"tensor {name!r} holds non-finite values")


class EdgeAgent:
    """One device. ``start()`` connects and enrols; ``stop()`` shuts it down.

    ``rng`` seeds local training (one draw per task), so a fleet run is
    reproducible given its seeds; ``clock`` is monotonic seconds. ``pace``
    (for fleet emulation on one machine) returns extra seconds a task takes,
    given the task and its update's size: a slow wearable's compute and
    uplink, emulated by waiting before the update is delivered.
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        transport: Transport,
        identity: DeviceIdentity,
        dataset: LocalDataset,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        pace: Callable[[Task, int], float] | None = None,
        secagg_floors: SecAggFloors | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if identity.device_id != settings.device_id:
            raise AgentError("identity belongs to another device id")
        self.settings = settings
        self.transport = transport
        self.identity = identity
        self.dataset = dataset
        self.rng = rng
        self.clock = clock
        self.pace = pace
        self.stats = AgentStats()
        self.model = build_model(settings.model_settings(), seed=0)
        self.shapes = param_shapes(self.model)
        self.outbox = Outbox(settings.state_dir / "outbox")
        self.held = _HeldModel(
            settings.state_dir / MODEL_FILE, self.shapes, keep=settings.model_cache_versions
        )
        policy = settings.budget_policy()
        self.budget_path = settings.state_dir / f"budget-{settings.study_id}.json"
        self.budget = None if policy is None else DeviceBudget.load(self.budget_path, policy=policy)
        self.status = DeviceStatus.IDLE
        self.enrolled = threading.Event()
        self.refused: str | None = None
        secret = settings.enrolment_secret.get_secret_value() if settings.enrolment_secret else None
        self.trust: AgentTrust | None = None
        if AgentTrust.configured(settings.state_dir, secret):
            self.trust = AgentTrust(
                identity=identity,
                study_id=settings.study_id,
                state_dir=settings.state_dir,
                secret=secret,
                max_message_bytes=settings.max_message_bytes,
            )
        self._held: set[str] = set()  # tasks queued or training (the outbox holds the rest)
        self._tasks: queue.Queue[Task | None] = queue.Queue()
        self._seen: OrderedDict[str, None] = OrderedDict()
        # Entries left by an earlier run are due at once; an entry with no send time
        # was acknowledged meanwhile (the Ack pops it), so the periodic resend skips it.
        self._sent_at: dict[str, float] = dict.fromkeys(self.outbox.task_ids(), -float("inf"))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_enrol = -float("inf")
        self._last_heartbeat = -float("inf")
        self._conn_epoch: tuple[bool, int | None] | None = None
        self._publish_failed = False
        # Secure-aggregation fills: the device's floors, its CSPRNG, its durable store.
        self.secagg_floors = secagg_floors if secagg_floors is not None else SecAggFloors()
        self._random_bytes = random_bytes
        self._secagg_store: SecAggStore | None = None
        self._fills: OrderedDict[str, _FillMember] = OrderedDict()
        self._fill_lock = threading.RLock()
        self.peer_evidence: PeerEvidenceVerifier | None = None
        if settings.audit_public_key is not None:
            self.peer_evidence = PeerEvidenceVerifier(
                audit_key=audit_key_from_hex(settings.audit_public_key),
                study_id=settings.study_id,
                memory_path=settings.state_dir / f"{AUDIT_HEAD_PREFIX}{settings.study_id}.json",
            )
        else:
            log.warning(
                "%s: no audit_public_key: the identity keys of secure-aggregation peers are "
                "UNCHECKED (the coordinator is the only PKI; a Sybil under a member's id "
                "would go unnoticed)",
                settings.device_id,
            )

    @property
    def peer_keys_checked(self) -> bool:
        """True if rosters' peer keys are checked against the signed audit log."""
        return self.peer_evidence is not None

    # -- topics -------------------------------------------------------------

    def _topic(self, kind: TopicKind) -> str:
        return device_topic(kind, self.settings.study_id, self.settings.device_id)

    # -- lifecycle ------------------------------------------------------------

    def start(self, *, wait_enrolled_s: float | None = None) -> None:
        """Subscribe, connect, enrol, start worker and maintenance threads."""
        s = self.settings
        self._restore_fills()
        for kind in (TopicKind.TASK, TopicKind.ACK, TopicKind.ERROR, TopicKind.FILL):
            self.transport.subscribe(self._topic(kind), self._on_message, qos=1)
        self.transport.subscribe(model_filter(s.study_id), self._on_message, qos=1)
        self.transport.connect()
        self._conn_epoch = self._connection_epoch()
        for target, name in ((self._work, "worker"), (self._maintain, "maintenance")):
            thread = threading.Thread(target=target, name=f"{s.device_id}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._enrol()
        self.resend_fills()  # a restarted device re-sends each fill's last step, byte for byte
        if wait_enrolled_s is not None:
            self.wait_enrolled(wait_enrolled_s)

    def wait_enrolled(self, timeout_s: float) -> None:
        if not self.enrolled.wait(timeout_s):
            raise AgentError(f"{self.settings.device_id}: no EnrolAck within {timeout_s}s")
        if self.refused is not None:
            raise EnrolmentRefused(self.refused)

    def stop(self) -> None:
        """Stop threads and close the transport; the outbox stays on disk."""
        self._stop.set()
        self._tasks.put(None)
        with self.held.cond:
            self.held.cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        self.transport.close()

    # -- outgoing -------------------------------------------------------------

    def _publish(self, kind: TopicKind, frame: bytes, *, qos: int = 1) -> bool:
        topic = self._topic(kind)

        def send(payload: bytes) -> bool:
            self.transport.publish(topic, payload, qos=qos)
            return True

        try:
            if self.trust is not None:
                return self.trust.sign_and_send(frame, send)
            return send(frame)
        except ProtocolError as exc:  # TransportError (offline, broker refused, paho's errors)
            self._publish_failed = True  # maintenance resends once connected again
            log.info("%s: publish on %s failed: %s", self.settings.device_id, kind, exc)
            return False

    def _enrol(self) -> None:
        s = self.settings
        self._last_enrol = self.clock()
        message = Enrol(
            device_id=s.device_id,
            study_id=s.study_id,
            device_class=s.device_class,
            memory_bytes=s.memory_bytes,
            public_key=self.identity.public_key,
            ticket=self.trust.ticket() if self.trust is not None else None,
        )
        self._publish(TopicKind.ENROL, encode_frame(message))

    def _heartbeat(self) -> None:
        self._last_heartbeat = self.clock()
        with self._fill_lock:
            in_fills = {m.task_id for m in self._fills.values() if not m.finished}
        with self._lock:
            held = sorted(self._held | set(self.outbox.task_ids()) | in_fills)[:MAX_HELD_TASKS]
        message = Heartbeat(
            device_id=self.settings.device_id, status=self.status, tasks=tuple(held)
        )
        # Signed, heartbeats go at QoS 1 like everything else: the broker keeps one
        # QoS's messages in order, and the coordinator refuses a counter below the last.
        qos = 1 if self.trust is not None else 0
        if self._publish(TopicKind.HEARTBEAT, encode_frame(message), qos=qos):
            self.stats.heartbeats += 1

    def resend_outbox(self, *, only_older_than_s: float | None = None) -> int:
        """Publish unacknowledged updates again; returns how many were sent."""
        now, sent = self.clock(), 0
        for task_id, frame in self.outbox.pending():
            last = self._sent_at.get(task_id)
            if only_older_than_s is not None and (last is None or now - last < only_older_than_s):
                continue
            if self._publish(TopicKind.UPDATE, frame):
                self._sent_at[task_id] = now
                self.stats.republished += 1
                sent += 1
        return sent

    # -- incoming (transport thread: decode, check, hand off; never train) ----

    def _reject(self, reason: str, topic: str, detail: object) -> None:
        self.stats.rejected[reason] += 1
        log.warning(
            "%s: dropped message on %s (%s): %s", self.settings.device_id, topic, reason, detail
        )

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            info = parse_topic(topic)
            if self.trust is not None:
                payload = self.trust.open(payload, device_id=info.device_id).frame
            message, tensors = decode_frame(payload, max_bytes=self.settings.max_message_bytes)
            check_route(info, message)
            if info.study_id != self.settings.study_id or info.device_id not in (
                None,
                self.settings.device_id,
            ):
                raise ProtocolError("message addressed to another study or device")
        except ProtocolError as exc:
            self._reject(type(exc).__name__, topic, exc)
            return
        try:
            self._handle(message, tensors)
        except ProtocolError as exc:
            self._reject(type(exc).__name__, topic, exc)
        except Exception as exc:  # a bug here must not kill the network loop
            self._reject("internal", topic, repr(exc))

    def _handle(self, message: object, tensors: Params) -> None:
        if isinstance(message, ModelDownload):
            _validate_tensors(tensors, self.shapes)
            self.held.add_frame(message.model_version, tensors)
        elif isinstance(message, Task):
            self._on_task(message)
        elif isinstance(message, SecAggMessage):
            self._on_fill_frame(message, tensors)
        elif isinstance(message, Ack):
            self.stats.acks[message.status.value] += 1
            self.outbox.remove(message.task_id)
            self._sent_at.pop(message.task_id, None)
        elif isinstance(message, EnrolAck):
            if not message.accepted:
                # The coordinator's word (signed by the pinned key, or proven by the
                # secret, or, before any key is pinned, at worst what dropping our
                # messages would do): stop instead of retrying forever.
                self.refused = message.reason or "refused"
                log.error(
                    "%s: enrolment refused by the coordinator: %s; the agent stops",
                    self.settings.device_id,
                    self.refused,
                )
            else:
                self._last_heartbeat = -float("inf")  # tell it at once which tasks we hold
            self.enrolled.set()
        elif isinstance(message, ErrorMessage):
            self.stats.errors_received[message.code.value] += 1
            if message.code is ErrorCode.NOT_ENROLLED:
                self.enrolled.clear()
                self._last_enrol = -float("inf")  # maintenance re-enrols now

    def _on_task(self, task: Task) -> None:
        unknown = set(task.subset_names) - set(self.shapes)
        if unknown:
            raise ProtocolError(f"task trains unknown tensors {sorted(unknown)}")
        with self._lock:
            if task.task_id in self._seen:
                return  # QoS-1 duplicate
            self._seen[task.task_id] = None
            while len(self._seen) > self.settings.seen_task_ids:
                self._seen.popitem(last=False)
        if self.trust is not None:
            self.trust.remember_downlink()  # a replayed task is refused after a restart too
        self.stats.tasks_received += 1
        if task.secagg is not None:
            if not self._join_fill(task):
                return
        elif task.task_id in self.outbox:  # trained before a restart: deliver, not retrain
            self.resend_outbox()
            return
        with self._lock:
            self._held.add(task.task_id)
        self._tasks.put(task)

    # -- worker thread ----------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            task = self._tasks.get()
            if task is None:
                return
            try:
                self._run_task(task)
            except Exception:  # keep serving later tasks; the coordinator times this one out
                log.exception("%s: task %s failed", self.settings.device_id, task.task_id)
                self.stats.tasks_abandoned += 1
                if task.secagg is not None:
                    self._leave_fill(task.secagg.fill_id, task_id=task.task_id)
            finally:
                with self._lock:
                    self._held.discard(task.task_id)
                self.status = DeviceStatus.IDLE

    def _run_task(self, task: Task) -> None:
        s = self.settings
        try:  # a coordinator must not bypass the device's DP by leaving dp out
            check_plain_task(
                task, has_budget=self.budget is not None, allow_plain=s.allow_plain_tasks
            )
        except TaskRefused as refusal:
            self._refuse(task, refusal)
            return
        if task.dp is not None and self.budget is None:
            # Training without the noise the task demands would break its promise, and
            # without a budget of its own the device cannot judge what it may spend.
            raise AgentError("a DP task needs the device's own budget (settings.dp_epsilon)")
        if task.dp is not None and self.budget is not None:
            try:  # before waiting for the model: a refusal costs nothing
                self.budget.check(task.dp)
            except TaskRefused as refusal:
                self._refuse(task, refusal)
                return
        base = self.held.base_for(
            task.model_version, timeout_s=min(s.model_wait_s, task.deadline_s), stop=self._stop
        )
        if base is None:
            log.warning("%s: no model for task %s", s.device_id, task.task_id)
            self.stats.tasks_abandoned += 1
            if task.secagg is not None:
                self._leave_fill(task.secagg.fill_id, task_id=task.task_id)
            return
        self.held.hold(task.model_version, base)
        self.status = DeviceStatus.TRAINING
        if task.dp is not None and self.budget is not None:
            try:
                outcome, report = run_dp_task(
                    self.budget,
                    task,
                    self.model,
                    base,
                    self.dataset.x,
                    self.dataset.y,
                    momentum=s.momentum,
                    max_physical_batch_size=s.dp_max_physical_batch_size,
                    seed=None,  # DP noise from OS entropy, never from a reproducible seed
                )
            except TaskRefused as refusal:
                self._refuse(task, refusal)
                return
            self.budget.save(self.budget_path)  # durable before the update can leave
        else:
            outcome, report = self._train(task, base), None
        if task.secagg is not None:  # never the plain Update: only masked words leave
            self._deliver_to_fill(task, outcome)
            return
        header = update_header(
            outcome,
            device_id=s.device_id,
            subset_id=task.subset_id,
            base_version=task.model_version,
            privacy=report,
        )
        frame = encode_update(
            header,
            outcome,
            max_bytes=s.max_message_bytes,
            encoding=task.update_encoding,
            rounding_key=os.urandom(ROUNDING_KEY_BYTES),  # stochastic rounding from the OS CSPRNG
        )
        delay = self.pace(task, len(frame)) if self.pace is not None else 0.0
        if delay > 0 and self._stop.wait(delay):
            return  # stopped while emulating a slow device: the task is simply lost
        self.status = DeviceStatus.UPLOADING
        self._sent_at[task.task_id] = self.clock()  # before put: no resend race with maintenance
        self.outbox.put(task.task_id, frame)  # durable before it leaves the device
        if self._publish(TopicKind.UPDATE, frame):
            self.stats.updates_published += 1
        self.stats.tasks_completed += 1

    def _train(self, task: Task, base: Params) -> LocalOutcome:
        s = self.settings
        local = LocalTask(
            task_id=task.task_id,
            model_version=task.model_version,
            subset_names=task.subset_names,
            train=LocalTrainConfig(
                epochs=task.local_epochs,
                batch_size=task.batch_size,
                lr=task.lr,
                momentum=s.momentum,
            ),
            seed=self.rng.getrandbits(31),
        )
        return run_local_task(self.model, base, self.dataset.x, self.dataset.y, local)

    def _refuse(self, task: Task, refusal: TaskRefused) -> None:
        """Decline ``task`` on the heartbeat topic: nothing trained, nothing spent.

        A fill member that declines also leaves its fill (its secrets forgotten).

        The detail starts with the task id (the coordinator frees that task and
        stops scheduling this device); the reason after it is for humans.
        """
        log.info("%s: refusing task %s: %s", self.settings.device_id, task.task_id, refusal)
        self.stats.tasks_refused += 1
        if task.secagg is not None:
            self._leave_fill(task.secagg.fill_id, task_id=task.task_id)
        message = ErrorMessage(code=refusal.code, detail=f"{task.task_id} {refusal}"[:1000])
        self._publish(TopicKind.HEARTBEAT, encode_frame(message))

    # -- secure-aggregation fills ------------------------------------------------

    def secagg_store(self) -> SecAggStore:
        """The device's durable SecAgg store (created on first use)."""
        with self._fill_lock:
            if self._secagg_store is None:
                self._secagg_store = SecAggStore(
                    self.settings.state_dir / SECAGG_DIR, device_id=self.settings.device_id
                )
            return self._secagg_store

    def fill(self, fill_id: str) -> SecAggParticipant | None:
        """This device's participant in ``fill_id``, if it is (or was recently) a member."""
        with self._fill_lock:
            member = self._fills.get(fill_id)
            return member.participant if member is not None else None

    def _restore_fills(self) -> None:
        """Load every fill left on disk by an earlier run (a state that cannot resume is burnt)."""
        if not (self.settings.state_dir / SECAGG_DIR).exists():
            return
        store = self.secagg_store()
        for session_id in store.session_ids():
            stage = store.stored_stage(session_id)
            if stage == "ABORTED":
                store.discard_state(session_id)
                continue
            try:
                participant = SecAggParticipant.restore(
                    store,
                    session_id,
                    model_shapes=self.shapes,
                    signing_key=self.identity.key,
                    floors=self.secagg_floors,
                    random_bytes=self._random_bytes,
                    peer_evidence=self.peer_evidence,
                )
            except (SecAggError, SecAggRefused) as exc:
                # E.g. killed between the journal and the state write: nothing of that
                # step left the device; the session is burnt, never answered anew.
                log.warning(
                    "%s: fill state %s cannot resume (%s); aborting it",
                    self.settings.device_id,
                    session_id.hex()[:16],
                    exc,
                )
                SecAggParticipant.abort_stored(store, session_id, model_shapes=self.shapes)
                entry = store.journal.get(session_id)
                if entry is not None and entry.stage in ("DONE", "ABORTED"):
                    store.discard_state(session_id)
                continue  # else unreadable: kept for inspection; its id is burnt anyway
            finished = stage == "DONE"
            self._fills[participant.fill_id] = _FillMember(participant, None, finished=finished)

    def resend_fills(self) -> int:
        """Publish each fill's last released step again (the exact bytes); returns how many."""
        sent = 0
        with self._fill_lock:
            members = list(self._fills.values())
        for member in members:
            with self._fill_lock:
                released = member.participant.last_released()
            if released is not None and self._send_fill(member, released):
                sent += 1
        return sent

    def _join_fill(self, task: Task) -> bool:
        """Advertise in ``task``'s fill; True if the task should now be trained."""
        params = task.secagg
        if params is None:
            return False
        with self._fill_lock:
            member = self._fills.get(params.fill_id)
            if member is not None:  # a repeated task, or one restored from disk
                if member.task_id != task.task_id:
                    self.stats.fills_refused += 1
                    log.warning(
                        "%s: fill %s already holds another task",
                        self.settings.device_id,
                        params.fill_id,
                    )
                    return False
                member.task = task
                released = member.participant.last_released()
                if released is not None:
                    self._send_fill(member, released)
                return member.participant.awaiting_update and not self._is_held(task.task_id)
        try:  # the device's own DP rules first: a refusal costs nothing and reveals nothing
            check_plain_task(
                task,
                has_budget=self.budget is not None,
                allow_plain=self.settings.allow_plain_tasks,
            )
            if task.dp is not None and self.budget is not None:
                self.budget.check(task.dp)
        except TaskRefused as refusal:
            self._refuse(task, refusal)
            return False
        try:
            with self._fill_lock:
                participant = SecAggParticipant.for_task(
                    task,
                    model_shapes=self.shapes,
                    store=self.secagg_store(),
                    signing_key=self.identity.key,
                    floors=self.secagg_floors,
                    random_bytes=self._random_bytes,
                    peer_evidence=self.peer_evidence,
                )
                advertisement = participant.advertise()
                member = _FillMember(participant, task)
                self._fills[params.fill_id] = member
                self._forget_finished_fills()
        except (SecAggRefused, SecAggError) as exc:
            # Nothing was released. Say so at once (the fill loses this member now, not
            # at its ADVERTISE timer); the reason after the task id is for humans only.
            self.stats.fills_refused += 1
            log.warning(
                "%s: not joining fill %s (task %s): %s",
                self.settings.device_id,
                params.fill_id,
                task.task_id,
                exc,
            )
            declined = ErrorMessage(
                code=ErrorCode.SECAGG_REFUSED, detail=f"{task.task_id} {exc}"[:1000]
            )
            self._publish(TopicKind.HEARTBEAT, encode_frame(declined))
            return False
        self._send_fill(member, advertisement)
        return True

    def _is_held(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._held

    def _forget_finished_fills(self) -> None:
        finished = [f for f, m in self._fills.items() if m.finished]
        for fill_id in finished[: max(0, len(finished) - KEEP_FINISHED_FILLS)]:
            member = self._fills.pop(fill_id)
            self.secagg_store().discard_state(member.participant.session_id)

    def _deliver_to_fill(self, task: Task, outcome: LocalOutcome) -> None:
        """Hand the trained update to its fill: masked now if delivered, else on DELIVERY."""
        params = task.secagg
        if params is None:
            raise AgentError("not a secure-aggregation task")
        with self._fill_lock:
            member = self._fills.get(params.fill_id)
            if member is None or member.task_id != task.task_id or member.finished:
                log.info(
                    "%s: fill %s ended before task %s trained",
                    self.settings.device_id,
                    params.fill_id,
                    task.task_id,
                )
                self.stats.tasks_abandoned += 1
                return
            config = member.participant.config  # the masked input's packed bytes
            size = config.packed_bytes(member.participant.session.total_words(config))
            delay = self.pace(task, size) if self.pace is not None else 0.0
        if delay > 0 and self._stop.wait(delay):
            return  # stopped while emulating a slow device
        with self._fill_lock:
            if member.finished:
                self.stats.tasks_abandoned += 1
                return
            try:
                masked = member.participant.mask(outcome.delta, energy=outcome.update_energy)
            except SecAggError as exc:  # e.g. DDP's rare OverflowRisk: sit this fill out
                self._leave_fill(params.fill_id, task_id=task.task_id)
                log.warning(
                    "%s: fill %s cannot take the update: %s",
                    self.settings.device_id,
                    params.fill_id,
                    exc,
                )
                self.stats.tasks_abandoned += 1
                return
        self.status = DeviceStatus.UPLOADING
        if masked is not None:
            self._send_fill(member, masked)
        self.stats.tasks_completed += 1

    def _on_fill_frame(self, message: SecAggMessage, tensors: Params) -> None:
        """One downlink step of a fill (transport thread): answer it, durably, then publish."""
        with self._fill_lock:
            member = self._fills.get(message.fill_id)
            if member is None or member.task_id != message.task_id:
                raise ProtocolError(f"no fill {message.fill_id!r} with task {message.task_id!r}")
            participant = member.participant
            answer: object | None
            try:
                if message.phase is SecAggPhase.ABORT:
                    if not member.finished:
                        participant.on_abort()
                        self.stats.fills_aborted += 1
                    member.finished = True
                    return
                raw = secagg_body(tensors)
                if message.phase is SecAggPhase.ROSTER:
                    answer = self._answer_roster(member, secagg_wire.decode_message(raw, KeyRoster))
                elif message.phase is SecAggPhase.DELIVERY:
                    delivery = secagg_wire.decode_message(raw, ShareDelivery)
                    answer = participant.on_delivery(delivery)
                elif message.phase is SecAggPhase.UNMASK_REQUEST:
                    request = secagg_wire.decode_message(raw, UnmaskRequest)
                    answer = participant.on_unmask(request)
                    member.finished = True
                else:
                    raise ProtocolError(f"SecAgg {message.phase.value} is not a downlink step")
            except SecAggError as exc:
                raise ProtocolError(
                    f"fill {message.fill_id}: {type(exc).__name__}: {exc}"
                ) from None
        if answer is not None:
            self._send_fill(member, answer)

    def _answer_roster(self, member: _FillMember, roster: KeyRoster) -> object | None:
        """SHARES for ``roster``, or None when its peer keys fail (the fill is left)."""
        participant = member.participant
        first = participant.peer_check is None
        try:
            answer = participant.on_roster(roster)
        except PeerEvidenceRefused as exc:
            self.stats.rosters_refused += 1
            member.finished = True  # aborted by the participant: secrets gone, id burnt
            log.warning(
                "%s: leaving fill %s: its roster's peer keys are not proven by the audit log: %s",
                self.settings.device_id,
                member.fill_id,
                exc,
            )
            return None
        if first and participant.peer_check is PeerCheck.UNCHECKED:
            self.stats.rosters_unchecked += 1
            log.warning(
                "%s: fill %s: answering a roster whose peer identity keys are UNCHECKED "
                "(no audit_public_key)",
                self.settings.device_id,
                member.fill_id,
            )
        return answer

    def _leave_fill(self, fill_id: str, *, task_id: str) -> None:
        """Drop out of a fill this device cannot finish (secrets forgotten, id burnt)."""
        with self._fill_lock:
            member = self._fills.get(fill_id)
            if member is None or member.task_id != task_id or member.finished:
                return
            try:
                member.participant.on_abort()
            except SecAggError as exc:
                log.warning(
                    "%s: abort of fill %s failed: %s", self.settings.device_id, fill_id, exc
                )
            member.finished = True

    def _send_fill(self, member: _FillMember, msg: object) -> bool:
        """Publish one uplink step of ``member``'s fill on the ``secagg`` topic."""
        phase = _PHASE_OF.get(type(msg))
        if phase is None:
            raise AgentError(f"not an uplink SecAgg message: {type(msg).__name__}")
        s = self.settings
        header = SecAggMessage(
            study_id=s.study_id,
            device_id=s.device_id,
            task_id=member.task_id,
            fill_id=member.fill_id,
            phase=phase,
        )
        if isinstance(msg, MaskedInput):  # binary words, chunked by the transport
            bits = member.participant.config.modulus_bits
            words = secagg_words_tensor(msg.data, modulus_bits=bits)
            tensors = secagg_frame_tensors(phase, words=words)
        else:
            tensors = secagg_frame_tensors(phase, body=secagg_wire.encode_message(msg))
        frame = encode_frame(header, tensors, max_bytes=s.max_message_bytes)
        if self._publish(TopicKind.SECAGG, frame):
            self.stats.secagg_sent[phase.value] += 1
            return True
        return False

    # -- maintenance thread -----------------------------------------------------

    def _connection_epoch(self) -> tuple[bool, int | None]:
        """Changes whenever the transport (re)connects (MQTT: connect_count)."""
        return (
            getattr(self.transport, "connected", True),
            getattr(self.transport, "connect_count", None),
        )

    def _maintain(self) -> None:
        s = self.settings
        while not self._stop.wait(s.poll_interval_s):
            try:
                now = self.clock()
                epoch = self._connection_epoch()
                if epoch != self._conn_epoch:
                    self._conn_epoch = epoch
                    if epoch[0]:  # back online: deliver everything still pending
                        self._publish_failed = False
                        self.resend_outbox()
                        self.resend_fills()
                elif self._publish_failed and epoch[0]:
                    self._publish_failed = False
                    self.resend_outbox()
                    self.resend_fills()
                if self.refused is not None:
                    continue  # refused for good: no more enrolments, heartbeats or resends
                if not self.enrolled.is_set() and now - self._last_enrol >= s.enrol_retry_s:
                    self._enrol()
                if self.enrolled.is_set() and now - self._last_heartbeat >= s.heartbeat_interval_s:
                    self._heartbeat()
                self.resend_outbox(only_older_than_s=s.resend_after_s)
            except Exception:
                log.exception("%s: maintenance step failed", s.device_id)
