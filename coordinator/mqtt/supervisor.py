"""One MQTT connection, one :class:`StudyBridge` per live study: the serve-time wiring.

Why a supervisor: ``fedward coordinator serve`` runs the operator API and the
device side in one process, and studies come and go through the API while it
runs. The supervisor starts a bridge for every study that is RUNNING (or
PAUSED: its devices still heartbeat and get refusals) at start-up, picks up
studies started later by polling the service (``poll_interval_s``: a study
started over REST gets its bridge within that delay, without the API knowing
about MQTT), stops the bridge of a STOPPED study, and stops them all on
shutdown. All bridges share the one caller-owned transport, and one
:class:`~fedward.coordinator.mqtt.security.WireSecurity` (one coordinator key and
counter); the transport's receive-path errors (bad chunks) go to the bridge of
the study their topic names, which counts and audits them.
"""

from __future__ import annotations

import logging
import threading

from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.mqtt.security import WireSecurity
from fedward.coordinator.service import ServiceError, StudyService
from fedward.coordinator.store import StudyState
from fedward.protocol.errors import ProtocolError
from fedward.protocol.messages import DEFAULT_MAX_MESSAGE_BYTES, ErrorCode
from fedward.protocol.topics import parse_topic
from fedward.protocol.transport import Transport

log = logging.getLogger(__name__)

BRIDGED_STATES = frozenset({StudyState.RUNNING, StudyState.PAUSED})


def _refuse(exc: Exception) -> ErrorCode | None:
    """A service refusal (unknown study, revoked device, ...) is the device's fault."""
    return ErrorCode.UNAUTHORIZED if isinstance(exc, ServiceError) else None


class BridgeSupervisor:
    """Keeps one bridge per live study of ``service`` on ``transport``."""

    def __init__(
        self,
        service: StudyService,
        transport: Transport,
        *,
        poll_interval_s: float = 1.0,
        dispatch_interval_s: float = 1.0,
        timeout_interval_s: float = 5.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        security: WireSecurity | None = None,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be > 0")
        self.service = service
        self.transport = transport
        self.poll_interval_s = poll_interval_s
        self.dispatch_interval_s = dispatch_interval_s
        self.timeout_interval_s = timeout_interval_s
        self.max_message_bytes = max_message_bytes
        self.security = security
        self.bridges: dict[str, StudyBridge] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bridge the live studies, connect the transport, then watch for new ones."""
        self.sync()
        self.transport.set_error_hook(self._transport_error)
        self.transport.connect()
        self._thread = threading.Thread(target=self._watch, name="bridge-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and every bridge; the caller closes the transport."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            bridges, self.bridges = list(self.bridges.values()), {}
        for bridge in bridges:
            bridge.stop()

    def sync(self) -> list[str]:
        """Start bridges of newly live studies, stop those of stopped ones; the started ids."""
        started: list[str] = []
        with self._lock:
            if self._stop.is_set():
                return started
            states = {info.id: info.state for info in self.service.list_studies()}
            for study_id, state in states.items():
                if state in BRIDGED_STATES and study_id not in self.bridges:
                    self.bridges[study_id] = self._bridge(study_id)
                    started.append(study_id)
            for study_id in [s for s in self.bridges if states.get(s) not in BRIDGED_STATES]:
                self.bridges.pop(study_id).stop()
        for study_id in started:
            log.info("bridging study %s", study_id)
        return started

    def _bridge(self, study_id: str) -> StudyBridge:
        bridge = StudyBridge(
            self.service,
            self.transport,
            study_id=study_id,
            dispatch_interval_s=self.dispatch_interval_s,
            timeout_interval_s=self.timeout_interval_s,
            max_message_bytes=self.max_message_bytes,
            refuse=_refuse,
            on_reject=self.service.transport_rejected,
            security=self.security,
        )
        bridge.start()
        return bridge

    def _transport_error(self, topic: str, exc: Exception) -> None:
        try:
            study_id = parse_topic(topic).study_id
        except ProtocolError:
            study_id = ""
        with self._lock:
            bridge = self.bridges.get(study_id)
        if bridge is not None:
            bridge.on_transport_error(topic, exc)
        else:
            log.warning("dropped message on %s: %r", topic, exc)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.sync()
            except Exception:  # keep watching: a failed poll is retried on the next one
                log.exception("bridge supervisor: could not sync the studies")


__all__ = ["BRIDGED_STATES", "BridgeSupervisor"]
