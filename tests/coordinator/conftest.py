"""Fixtures for the coordinator's store, service and API tests.

Databases: SQLite files under ``tmp_path`` and a REAL PostgreSQL on
127.0.0.1:5432. One PostgreSQL database (``fedward_test_<random>``) is created
per test session and dropped at its end; each test gets it with an empty
``public`` schema. Tests that use it are marked ``postgres`` (skipped when no
server answers, failed instead under CI: tests/services.py).

The study is tiny (width 4, 64-sample windows, 2 tasks in flight, buffer of 2)
so a real local training task takes milliseconds.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.compliance import public_key_raw
from fedward.coordinator.service import OutboundTask, StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.study_spec import StudySpec
from fedward.edge.local import LocalTask, run_local_task
from fedward.edge.updates import encode_update, update_header
from fedward.protocol.messages import DeviceClass, Enrol, PrivacyReport, decode_frame
from fedward.tinytrain.models import Params, build_model
from tests.services import require_module, unavailable

TOKEN = "t0k3n-For-Tests-9f8e7d6c5b4a"
MAX_BYTES = 16 * 1024 * 1024
SPEC = StudySpec(width=4, window=64, concurrency=2, buffer_size=2)
MEMORY = 20_000  # fits tier 4 of the tiny CNN: a real sparse subset


class FakeClock:
    """Deterministic POSIX seconds; ``advance`` moves time forward."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models train ~100x faster on one thread than with thread contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- databases -----------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_database(postgres_server: tuple[str, int]) -> Iterator[str]:
    """A fresh PostgreSQL database for this session (dropped at the end)."""
    psycopg = require_module("psycopg", install="bash scripts/setup.sh (the dev extra)")
    server = "{}:{}".format(*postgres_server)
    try:
        admin = psycopg.connect(
            f"postgresql://postgres@{server}/postgres", autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        unavailable(
            f"PostgreSQL on {server} refused the admin login ({exc})",
            fix="the suite logs in as user postgres without a password",
        )
    name = f"fedward_test_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@{server}/{name}"
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def _empty_pg(url: str) -> str:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return url


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'coordinator.db'}"
    return _empty_pg(request.getfixturevalue("pg_database"))


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    return _empty_pg(pg_database)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'coordinator.db'}"


# -- service -------------------------------------------------------------------
def make_settings(url: str, data_dir: Path) -> CoordinatorSettings:
    return CoordinatorSettings(database_url=url, data_dir=data_dir, operator_token=TOKEN)


@pytest.fixture
def settings(sqlite_url: str, tmp_path: Path) -> CoordinatorSettings:
    return make_settings(sqlite_url, tmp_path / "data")


@pytest.fixture
def service(settings: CoordinatorSettings, clock: FakeClock) -> Iterator[StudyService]:
    svc = StudyService.open(settings, clock=clock, seed=7)
    try:
        yield svc
    finally:
        svc.close()


def device_key(index: int) -> bytes:
    seed = bytes([index + 1]) * 32
    return public_key_raw(Ed25519PrivateKey.from_private_bytes(seed))


def enrol_msg(
    study_id: str, index: int, *, memory: int = MEMORY, key: bytes | None = None
) -> Enrol:
    return Enrol(
        device_id=f"dev-{index:03d}",
        study_id=study_id,
        device_class=DeviceClass.PHONE,
        memory_bytes=memory,
        public_key=key if key is not None else device_key(index),
    )


@dataclass
class Fleet:
    """Devices that hold the tensors they were sent and train for real."""

    spec: StudySpec = SPEC
    held: dict[str, Params] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = build_model(self.spec.model_settings(), seed=self.spec.model_seed)
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((12, self.spec.in_channels, self.spec.window)).astype(
            np.float32
        )
        self.y = rng.integers(0, self.spec.num_classes, 12)

    def train(
        self, out: OutboundTask, *, seed: int = 1, privacy: PrivacyReport | None = None
    ) -> bytes:
        """Receive the model frame, train the subset, return the update frame
        (carrying ``privacy``, the device's DP report, when given)."""
        _, tensors = decode_frame(out.model_frame, max_bytes=MAX_BYTES)
        held = self.held.setdefault(out.device_id, {})
        held.update(tensors)
        task = LocalTask(
            task_id=out.task.task_id,
            model_version=out.task.model_version,
            subset_names=out.task.subset_names,
            train=self.spec.train_settings(),
            seed=seed,
        )
        result = run_local_task(self.model, dict(held), self.x, self.y, task)
        header = update_header(
            result,
            device_id=out.device_id,
            subset_id=out.task.subset_id,
            base_version=out.task.model_version,
            privacy=privacy,
        )
        return encode_update(header, result, max_bytes=MAX_BYTES)


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


def running_study(service: StudyService, *, devices: int = 3, study_id: str = "s1") -> str:
    service.create_study(SPEC, study_id=study_id)
    for i in range(devices):
        ack = service.enrol(study_id, enrol_msg(study_id, i))
        assert ack.accepted, ack.reason
    service.start(study_id)
    return study_id


# -- helpers as fixtures (test modules never import conftest) -------------------
@pytest.fixture
def spec() -> StudySpec:
    return SPEC


@pytest.fixture
def token() -> str:
    return TOKEN


@pytest.fixture
def new_enrol():
    return enrol_msg


@pytest.fixture
def start_study():
    return running_study


@pytest.fixture
def settings_for():
    return make_settings
