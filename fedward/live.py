"""Wiring of ``fedward up``: a broker, the coordinator service and its bridge, N agents.

Everything runs in one process so a user can watch a real federation over
MQTT in one command: an embedded amqtt broker on a free loopback port (or an
existing broker given by URL), the :class:`~fedward.coordinator.service.StudyService`
on SQLite in a data directory, the :class:`~fedward.coordinator.mqtt.bridge.StudyBridge`,
and one :class:`~fedward.edge.agent.EdgeAgent` thread per device, each with its own
MQTT connection, key, outbox and dataset file (device ``i``'s share of the
scenario's simulated data). Only this floor imports both edge and coordinator.

The study is the scenario's (same spec, data split, fleet classes and memory)
so its accuracy is comparable with ``fedward simulate``; differences: devices
run at their real speed unless ``time_scale`` emulates the simulator's device
speeds (no simulated dropouts or availability either). The study starts from
the simulator's warm start (``fedward.simulation.warmstart.scenario_start``, the
same cached pre-trained model), handed to ``StudyService.create_study`` as
version 0, so both runs start from the same model.
Accuracy is measured as in the simulator: every model version is evaluated
on the same held-out windows and the final figure is the mean over the last
``final_tail`` of the updates.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from pydantic import SecretStr

from fedward.compliance.events import AuditAction, AuditEntry
from fedward.compliance.store import JsonlAuditStore
from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.mqtt.security import WireSecurity
from fedward.coordinator.service import NoPrivacyPolicy, ServiceError, StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.study_spec import DistributedDpSettings, StopRule, build_planner
from fedward.edge.agent import EdgeAgent
from fedward.edge.dataset import load_dataset, save_dataset
from fedward.edge.identity import load_or_create_identity
from fedward.edge.settings import AgentSettings
from fedward.errors import FedwardError
from fedward.privacy.accounting import Accountant
from fedward.protocol.codec import decode_tensors
from fedward.protocol.errors import TransportError
from fedward.protocol.messages import DeviceClass, ErrorCode, Task
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttProtocol, MqttSettings, TlsSettings
from fedward.simulation.profiles import SimDevice, draw_fleet
from fedward.simulation.scenario import Scenario, StrategyRun
from fedward.simulation.sensordata import load_study_data
from fedward.simulation.study import Progress, final_accuracy
from fedward.simulation.warmstart import scenario_start
from fedward.tinytrain.costs import task_flops
from fedward.tinytrain.models import build_model
from fedward.tinytrain.runtime import limit_threads
from fedward.tinytrain.training import evaluate

log = logging.getLogger(__name__)


class LiveError(FedwardError):
    """The live study could not be set up or did not finish.

    Not a :class:`~fedward.errors.CliError`: this module is a library (tests and
    ``fedward up`` drive it), and most of these are run-time failures (too few
    updates in time, nothing evaluated), not a command's input. A broker that
    cannot be reached or started is a :class:`~fedward.protocol.errors.TransportError`.
    """


# -- broker ------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    protocol: MqttProtocol = MqttProtocol.MQTT5
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str, *, protocol: MqttProtocol = MqttProtocol.MQTT5) -> BrokerAddress:
    """``mqtt://host[:port]`` (port 1883) or ``mqtts://host[:port]`` (TLS, port 8883).

    With ``mqtts`` the caller gives the TLS files (``TlsSettings``: the study CA,
    and the client's certificate and key for mutual TLS).
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise LiveError(
            f"broker URL must look like mqtt://host:port or mqtts://host:port, got {url!r}"
        )
    tls = parsed.scheme == "mqtts"
    try:
        port = parsed.port or (8883 if tls else 1883)
    except ValueError:
        raise LiveError(f"broker URL has an invalid port: {url!r}") from None
    return BrokerAddress(parsed.hostname, port, protocol, tls)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """amqtt (MQTT 3.1.1 only) on its own event loop in a daemon thread."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(self.host, self.port, MqttProtocol.MQTT311)

    def start(self, *, timeout_s: float = 10.0) -> BrokerAddress:
        """Serve on ``host:port``; TransportError (amqtt's error as its cause) if it cannot."""
        where = f"{self.host}:{self.port}"
        try:
            from amqtt.broker import Broker  # optional dependency: fedward[embedded]
        except ImportError as exc:
            raise TransportError(
                "the embedded MQTT broker needs amqtt: pip install 'fedward[embedded]', "
                "or use a running broker (--broker mqtt://host:port)"
            ) from exc

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                self._broker = Broker(config, loop=loop)
                await self._broker.start()

            try:
                loop.run_until_complete(boot())
            except BaseException as exc:  # amqtt's BrokerError, OSError, ...: start() maps it
                failure.append(exc)
                self._loop = self._broker = None  # nothing runs, so stop() has nothing to do
                loop.close()
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise TransportError(
                f"the embedded MQTT broker did not start on {where} within {timeout_s}s; "
                "retry, or use a running broker (--broker mqtt://host:port)"
            )
        if failure:
            raise TransportError(
                f"the embedded MQTT broker could not start on {where}: {failure[0]!r}; "
                "free that port, or use a running broker (--broker mqtt://host:port)"
            ) from failure[0]
        return self.address

    def stop(self) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout=10)
        except Exception:  # shutting down anyway
            log.debug("embedded broker shutdown", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = self._broker = None


# -- the live study ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LiveOptions:
    scenario: Scenario
    run: StrategyRun = StrategyRun.FTTE
    broker: BrokerAddress | None = None
    """``None``: start the embedded amqtt broker on a free loopback port."""
    coordinator_tls: TlsSettings | None = None
    """TLS of the coordinator's connection (``mqtts``: the study CA, its certificate)."""
    device_tls: Callable[[str], TlsSettings] | None = None
    """TLS of each agent's connection, by device id (its own client certificate)."""
    username: str | None = None
    password: SecretStr | None = None
    """Broker credentials of every connection (a password-file broker)."""
    data_dir: Path | None = None
    """Coordinator database, blobs, audit log and device state; a new temp dir if ``None``."""
    study_id: str | None = None
    update_budget: int | None = None
    """The study's stop rule: the coordinator stops it after this many updates (and when
    every device is exhausted); ``None``: it runs until ``wait`` returns and it is closed."""
    task_deadline_s: float = 120.0
    poll_s: float = 0.25
    heartbeat_interval_s: float = 5.0
    resend_after_s: float = 10.0
    torch_threads: int | None = 1
    """Torch intra-op threads of this process (N agents share the cores); left set after
    the study, as there is no getter outside ``fedward.tinytrain`` to restore the previous value."""
    time_scale: float = 0.0
    """Emulate the fleet's speeds: each task also waits ``time_scale`` x the simulator's
    compute + uplink time of that device (class profile, straggler slowdown). 0: real speed.

    Why: agents on one machine all run at the same speed, so their updates arrive in
    synchronised bursts; with a buffered strategy every merge then sees the same
    staleness, which oscillates when local steps are large. A real fleet (and the
    simulator) spreads arrivals out."""


@dataclass
class LiveResult:
    study_id: str
    broker_url: str
    data_dir: Path
    audit_log: Path
    final_accuracy: float
    last_accuracy: float
    updates: int
    merges: int
    model_version: int
    duplicates: int
    wall_s: float
    rejections: dict[str, int] = field(default_factory=dict)
    bridge_rejected: dict[str, int] = field(default_factory=dict)
    agent_republished: int = 0
    series: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str | None = None  # the stop rule that ended it, if one did
    by_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per device class: devices, devices that contributed, accepted updates, staleness,
    the class's measured training step against its memory budget."""
    epsilon_series: list[dict[str, Any]] = field(default_factory=list)
    """A DP study: each class's highest cumulative epsilon over wall seconds since start."""
    privacy: dict[str, Any] = field(default_factory=dict)
    """A DP study: the budget and what its epsilon protects (window or patient)."""
    secagg: dict[str, Any] = field(default_factory=dict)
    """A secure-aggregation study: fills opened/merged/aborted, dropouts per phase,
    SecAgg bytes in and out (the coordinator's counts; never any content)."""


class LiveStudy:
    """One live study. Use as a context manager: ``start`` on enter, ``close`` on exit."""

    def __init__(self, options: LiveOptions) -> None:
        self.options = options
        scenario = options.scenario
        self.spec = scenario.study_spec(options.run).model_copy(
            update={
                "task_deadline_s": options.task_deadline_s,
                "stop": StopRule(max_updates=options.update_budget),
            }
        )
        secagg = self.spec.secagg
        if options.run.distributed_dp and secagg is not None and secagg.ddp is None:
            # the scenario leaves the mechanism to its simulator; live, the engine builds
            # it from the spec (StudySpec.secagg_policy: sized for the fill and the model)
            ddp = DistributedDpSettings(
                l2_clip=scenario.ddp_l2_clip,
                noise_multiplier=scenario.ddp_noise_multiplier,
                bits=scenario.ddp_bits,
                # the ftte+dp row's budget, now a per-patient ledger of the fills
                epsilon=scenario.dp_epsilon,
                delta=scenario.dp_delta,
            )
            self.spec = self.spec.model_copy(
                update={"secagg": secagg.model_copy(update={"ddp": ddp, "energy_bins": ()})}
            )
        self.model_config = self.spec.model_settings()
        # A temp dir is kept after the run: it holds the audit log the user may verify.
        self.data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="fedward-up-"))
        self.study_id = options.study_id or f"{self.spec.name}-{secrets.token_hex(4)}"
        self.embedded: EmbeddedBroker | None = None
        self.broker: BrokerAddress | None = None
        self.service: StudyService | None = None
        self.bridge: StudyBridge | None = None
        self.coordinator_transport: MqttTransport | None = None
        self.security: WireSecurity | None = None
        self.agents: list[EdgeAgent] = []
        self.series: list[dict[str, float]] = []
        self._evaluated = -1
        self._eval_model = build_model(self.model_config, seed=scenario.seed)
        self._test: tuple[np.ndarray, np.ndarray] | None = None
        self._started = 0.0
        self._started_epoch = 0.0  # the coordinator's clock (ledger times) at start

    # -- setup --------------------------------------------------------------------

    def __enter__(self) -> LiveStudy:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        o, scenario = self.options, self.options.scenario
        if o.torch_threads is not None:
            limit_threads(o.torch_threads)
        self._started = time.monotonic()
        self._started_epoch = time.time()
        if o.broker is None:
            self.embedded = EmbeddedBroker()
            self.broker = self.embedded.start()
        else:
            self.broker = o.broker
        data = load_study_data(scenario.data_config())
        pick = np.random.default_rng(scenario.seed + 7).permutation(len(data.test_y))
        self._test = (
            data.test_x[pick[: scenario.eval_windows]],
            data.test_y[pick[: scenario.eval_windows]],
        )
        self._start_coordinator()
        fleet = draw_fleet(
            devices=scenario.devices,
            mix=dict(scenario.mix),
            straggler_fraction=scenario.straggler_fraction,
            straggler_slowdown=scenario.straggler_slowdown,
            rng=np.random.default_rng(scenario.seed + 1),
            profiles=scenario.device_profiles(),
        )
        for device in fleet:
            path = self.data_dir / "devices" / device.device_id / "data.npz"
            save_dataset(path, data.device_x[device.index], data.device_y[device.index])
            self.agents.append(
                self._agent(
                    device.device_id,
                    DeviceClass(device.profile.device_class.value),
                    device.profile.memory_bytes,
                    path,
                    seed=scenario.seed * 1_000_003 + device.index,
                    pace=self._pace(device, len(data.device_y[device.index])),
                )
            )
        for agent in self.agents:
            agent.start()
        for agent in self.agents:
            agent.wait_enrolled(30)
        if self.service is None or self.bridge is None:
            raise LiveError("the coordinator did not start")
        self.service.start(self.study_id)
        self.bridge.request_dispatch()

    def _mqtt(self, client_id: str, *, tls: TlsSettings | None = None) -> MqttTransport:
        if self.broker is None:
            raise LiveError("no broker")
        if self.broker.tls and tls is None:
            raise LiveError("an mqtts:// broker needs TLS settings (the study CA at least)")
        return MqttTransport(
            MqttSettings(
                host=self.broker.host,
                port=self.broker.port,
                client_id=client_id[-64:],
                tls=tls,
                username=self.options.username,
                password=self.options.password,
                protocol=self.broker.protocol,
                clean_start=False,
                session_expiry_s=3600,
                reconnect_min_delay_s=0.1,
                reconnect_max_delay_s=2.0,
            )
        )

    def _start_coordinator(self) -> None:
        settings = CoordinatorSettings(
            database_url=f"sqlite:///{self.data_dir / 'coordinator.db'}",
            # one folder layout for every command: `audit verify --data-dir D` and
            # `budget report --data-dir D` both take the folder `up` printed
            data_dir=self.data_dir,
            operator_token=SecretStr(secrets.token_urlsafe(32)),
        )
        self.audit_log = settings.audit_log_path
        self.service = StudyService.open(settings, seed=self.options.scenario.seed)
        scenario = self.options.scenario
        start = scenario_start(scenario, self.model_config)
        self.service.create_study(self.spec, study_id=self.study_id, initial_params=start)
        self.coordinator_transport = self._mqtt(
            f"coord.{self.study_id}", tls=self.options.coordinator_tls
        )
        # Signed both ways, as `fedward coordinator serve`: each agent gets an
        # operator-issued enrolment secret below and pins this coordinator's key.
        self.security = WireSecurity.from_settings(settings)
        self.bridge = StudyBridge(
            self.service,
            self.coordinator_transport,
            study_id=self.study_id,
            dispatch_interval_s=0.5,
            timeout_interval_s=5.0,
            refuse=lambda exc: ErrorCode.UNAUTHORIZED if isinstance(exc, ServiceError) else None,
            on_reject=self.service.transport_rejected,
            security=self.security,
        )
        self.coordinator_transport.set_error_hook(self.bridge.on_transport_error)
        self.bridge.start()
        self.coordinator_transport.connect()

    def _pace(self, device: SimDevice, samples: int) -> Callable[[Task, int], float] | None:
        scale = self.options.time_scale
        if scale <= 0:
            return None
        config = self.model_config

        def pace(task: Task, update_bytes: int) -> float:
            flops = task_flops(
                config,
                task.subset_names,
                samples=samples,
                epochs=task.local_epochs,
                batch_size=task.batch_size,
            )
            return scale * (device.compute_s(flops) + device.upload_s(update_bytes))

        return pace

    def _agent(
        self,
        device_id: str,
        device_class: DeviceClass,
        memory: int,
        data: Path,
        *,
        seed: int,
        pace: Callable[[Task, int], float] | None,
    ) -> EdgeAgent:
        spec, o = self.spec, self.options
        settings = AgentSettings(
            device_id=device_id,
            study_id=self.study_id,
            device_class=device_class,
            memory_bytes=memory,
            data_path=data,
            state_dir=data.parent,
            model_kind=spec.model_kind,
            in_channels=spec.in_channels,
            window=spec.window,
            num_classes=spec.num_classes,
            width=spec.width,
            hidden=spec.hidden,
            momentum=spec.momentum,
            # a DP study's devices hold the study's budget as their own (a real
            # device's owner sets it; without one the agent declines DP tasks)
            dp_epsilon=None if spec.privacy is None else spec.privacy.epsilon,
            dp_delta=1e-5 if spec.privacy is None else spec.privacy.delta,
            dp_accountant=Accountant.RDP if spec.privacy is None else spec.privacy.accountant,
            heartbeat_interval_s=o.heartbeat_interval_s,
            resend_after_s=o.resend_after_s,
            poll_interval_s=0.1,
        )
        if self.service is not None and spec.secagg_on:
            # the device checks its fill peers' keys against the coordinator's signed
            # audit log (provisioned with the log's key, as a real device would be)
            audit_key = self.service.audit_public_key.public_bytes_raw().hex()
            settings = settings.model_copy(update={"audit_public_key": audit_key})
        if self.service is not None and not (settings.state_dir / "coordinator.pub").exists():
            secret = self.service.issue_enrolment_secret(self.study_id, device_id, by="fedward-up")
            settings = settings.model_copy(update={"enrolment_secret": SecretStr(secret)})
        dataset = load_dataset(
            data, channels=spec.in_channels, window=spec.window, num_classes=spec.num_classes
        )
        return EdgeAgent(
            settings,
            transport=self._mqtt(
                f"{self.study_id}.{device_id}",
                tls=self.options.device_tls(device_id) if self.options.device_tls else None,
            ),
            identity=load_or_create_identity(settings.state_dir, device_id=device_id),
            dataset=dataset,
            rng=random.Random(seed),
            pace=pace,
        )

    # -- running ------------------------------------------------------------------

    def _evaluate_new_versions(self) -> float | None:
        """Evaluate every model version not seen yet; the latest accuracy, if any new."""
        if self.service is None or self._test is None:
            return None
        latest = None
        merged = 0
        for info in self.service.model_versions(self.study_id):
            merged += info.update_count
            if info.version <= self._evaluated:
                continue
            params = decode_tensors(self.service.model_blob(self.study_id, info.version))
            acc, loss = evaluate(self._eval_model, params, *self._test)
            self.series.append(
                {
                    "t": time.monotonic() - self._started,  # wall seconds since start
                    "updates": merged,
                    "version": info.version,
                    "accuracy": acc,
                    "loss": loss,
                }
            )
            self._evaluated = info.version
            latest = acc
        if latest is not None:
            self.service.report_evaluation(self.study_id, version=self._evaluated, accuracy=latest)
        return latest

    def accepted(self) -> int:
        if self.service is None:
            return 0
        return self.service.status(self.study_id).updates_accepted

    def wait(
        self,
        *,
        updates: int,
        timeout_s: float = 600.0,
        progress: Progress | None = None,
        on_poll: Callable[[LiveStudy], None] | None = None,
    ) -> None:
        """Block until ``updates`` updates were accepted (evaluating as merges land)."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.accepted()
            accuracy = self._evaluate_new_versions()
            if progress is not None:
                progress(done, updates, accuracy)
            if done >= updates:
                return
            if self.service is not None and self.stopped_by_rule() is not None:
                return  # the coordinator ended it (e.g. every device's budget spent)
            if on_poll is not None:
                on_poll(self)
            if time.monotonic() > deadline:
                raise LiveError(f"only {done}/{updates} updates after {timeout_s}s")
            time.sleep(self.options.poll_s)

    def _by_class(self) -> dict[str, dict[str, Any]]:
        """What the coordinator's device records say, per class (for ``fedward report``).

        Staleness comes from the audit log's UPDATE_ACCEPTED entries (the engine's
        own figure, server versions behind); training memory is the measured step
        of the subset the study's planner gives the class (the coordinator's rule,
        over the memory the agents enrolled with), beside the class's budget.
        """
        if self.service is None:
            return {}
        devices = self.service.list_devices(self.study_id)
        planner = build_planner(self.spec)
        fleet_memory = [d.memory_bytes for d in devices]
        stale = self._staleness({d.device_id: d.device_class.value for d in devices})
        out: dict[str, dict[str, Any]] = {}
        for d in devices:
            cls = d.device_class.value
            if cls not in out:
                subset = planner.subset_for(d.memory_bytes, fleet_memory=fleet_memory)
                ages = stale.get(cls, [])
                out[cls] = {
                    "devices": 0,
                    "participating_devices": 0,
                    "accepted": 0,
                    "staleness_mean": float(np.mean(ages)) if ages else None,
                    "staleness_max": max(ages) if ages else None,
                    "memory_budget_bytes": d.memory_bytes,
                    "train_memory_bytes": planner.tier_footprint(subset.tier),
                }
            c = out[cls]
            c["devices"] += 1
            c["participating_devices"] += d.completed > 0
            c["accepted"] += d.completed
        return out

    def _staleness(self, classes: dict[str, str]) -> dict[str, list[int]]:
        """Each class's accepted updates' staleness, read back from the audit log."""
        by_class: dict[str, list[int]] = {}
        for record in JsonlAuditStore(self.audit_log, read_only=True).read_entry_records():
            entry = AuditEntry.model_validate_json(record)
            if entry.action is not AuditAction.UPDATE_ACCEPTED or entry.study_id != self.study_id:
                continue
            device, age = entry.details.get("device_id"), entry.details.get("staleness")
            if isinstance(device, str) and isinstance(age, int) and device in classes:
                by_class.setdefault(classes[device], []).append(age)
        return by_class

    def _privacy(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """A DP study's epsilon per class over elapsed time, from the coordinator's ledger."""
        ddp = self.spec.secagg.ddp if self.spec.secagg_on and self.spec.secagg else None
        budgeted_ddp = ddp is not None and ddp.epsilon is not None
        if self.service is None or (
            self.spec.privacy is None and self.spec.client_dp is None and not budgeted_ddp
        ):
            return [], {}
        try:
            report = self.service.privacy_report(self.study_id)
        except NoPrivacyPolicy:  # client_dp without a per-patient budget
            return [], {}
        series = [
            {
                "t": max(0.0, p.t - self._started_epoch),
                "class": cls,
                # the report's per-class maximum, as one line per class (the
                # simulator lists devices; the plot takes the maximum either way)
                "device": f"{cls} max",
                "epsilon": p.epsilon_max,
            }
            for cls, points in report.epsilon_over_time.items()
            for p in points
        ]
        privacy = {
            "epsilon_budget": report.policy.epsilon,
            "delta": report.policy.delta,
            "accountant": report.policy.accountant,
            "unit": report.unit.value,
            "exhausted_devices": len(report.exhausted_devices),
        }
        return series, privacy

    def stopped_by_rule(self) -> str | None:
        """Which stop rule ended the study (None while it runs)."""
        if self.service is None:
            return None
        return self.service.status(self.study_id).stop_reason

    def result(self) -> LiveResult:
        if self.service is None or self.bridge is None or self.broker is None:
            raise LiveError("the study was not started")
        self._evaluate_new_versions()
        status = self.service.status(self.study_id)
        if not self.series:
            raise LiveError("no model version was evaluated")
        epsilon_series, privacy = self._privacy()
        return LiveResult(
            study_id=self.study_id,
            broker_url=self.broker.url,
            data_dir=self.data_dir,
            audit_log=self.audit_log,
            final_accuracy=final_accuracy(self.series, tail=self.options.scenario.final_tail),
            last_accuracy=self.series[-1]["accuracy"],
            updates=status.updates_accepted,
            merges=status.merges,
            model_version=status.model_version,
            duplicates=status.duplicates,
            wall_s=time.monotonic() - self._started,
            rejections={k.value: v for k, v in status.rejections.items()},
            bridge_rejected=dict(self.bridge.stats.rejected),
            stop_reason=status.stop_reason,
            by_class=self._by_class(),
            epsilon_series=epsilon_series,
            privacy=privacy,
            secagg=self.service.secagg_stats(self.study_id) if self.spec.secagg_on else {},
            agent_republished=sum(a.stats.republished for a in self.agents),
            series=list(self.series),
        )

    def close(self) -> None:
        """Stop the study and everything started for it (idempotent)."""
        if self.service is not None:
            try:
                if self.service.study(self.study_id).state.value == "running":
                    self.service.stop(self.study_id)
            except ServiceError:
                pass
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"agent {a.settings.device_id}", a.stop) for a in self.agents
        ]
        if self.bridge is not None:
            steps.append(("bridge", self.bridge.stop))
        if self.coordinator_transport is not None:
            steps.append(("coordinator transport", self.coordinator_transport.close))
        if self.service is not None:
            steps.append(("service", self.service.close))
        if self.embedded is not None:
            steps.append(("embedded broker", self.embedded.stop))
        for what, stop in steps:
            try:  # one failing part must not leave the others running
                stop()
            except Exception:
                log.exception("stopping the %s failed", what)
        self.agents = []
        self.bridge = self.coordinator_transport = self.service = self.embedded = None


def run_live(
    options: LiveOptions,
    *,
    updates: int,
    progress: Progress | None = None,
    timeout_s: float = 600.0,
) -> LiveResult:
    """Run a live study to ``updates`` accepted updates and return its result."""
    with LiveStudy(options) as study:
        study.wait(updates=updates, progress=progress, timeout_s=timeout_s)
        return study.result()
