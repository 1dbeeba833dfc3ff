"""The coordinator's settings: one validated object, built explicitly.

Why no import-time singleton: tests, ``fedward up`` and ``fedward coordinator
serve`` each build their own settings (from the environment, a CLI flag or
code), and a module-level object would freeze whatever the environment held
when something first imported this file.

Why the operator token is required and checked: every ``/v1`` endpoint starts,
stops or inspects studies on health data. A coordinator that starts with an
empty or well-known token ("changeme") is an open door, so construction fails
instead. Environment variables use the prefix ``FEDWARD_``; nested MQTT
fields use ``__`` (``FEDWARD_MQTT__HOST``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedward.protocol.messages import DEFAULT_MAX_MESSAGE_BYTES
from fedward.protocol.mqtt_settings import MqttProtocol, MqttSettings, TlsSettings

DEFAULT_DATA_DIR = Path("./fedward-data")
DEFAULT_DATABASE_URL = "sqlite:///./fedward-data/coordinator.db"
"""The database of the default data dir (``database_url`` defaults inside ``data_dir``)."""


def sqlite_url_in(data_dir: Path | str) -> str:
    """The default database of a data dir: ``<data_dir>/coordinator.db`` (SQLite)."""
    return f"sqlite:///{Path(data_dir) / 'coordinator.db'}"


MIN_TOKEN_CHARS = 16
# Tokens that appear in examples, tutorials and default configs everywhere.
KNOWN_WEAK_TOKENS = frozenset(
    {
        "changeme", "change-me", "change_me", "changeit", "secret", "password", "token",
        "admin", "default", "test", "example", "letmein", "operator", "fedward",
    }
)  # fmt: skip


class BrokerSettings(BaseModel):
    """Where the coordinator's MQTT bridge connects (the bridge builds its client)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    protocol: MqttProtocol = MqttProtocol.MQTT5
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSettings | None = None
    client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "fedward-coordinator"

    def client_settings(self, **overrides: object) -> MqttSettings:
        """The transport's settings for this broker (``overrides`` win)."""
        values: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "protocol": self.protocol,
            "username": self.username,
            "password": self.password,
            "tls": self.tls,
            "client_id": self.client_id,
        }
        values.update(overrides)
        return MqttSettings.model_validate(values)


def _is_weak(token: str) -> bool:
    lowered = token.strip().lower()
    if lowered in KNOWN_WEAK_TOKENS:
        return True
    # "changemechangeme", "aaaaaaaaaaaaaaaa", "secretsecret1234"-style padding.
    if len(set(lowered)) < 6:
        return True
    return any(lowered.startswith(w) and len(w) >= 6 for w in KNOWN_WEAK_TOKENS)


class CoordinatorSettings(BaseSettings):
    """Everything the live coordinator needs; refuses unsafe values."""

    model_config = SettingsConfigDict(
        env_prefix="FEDWARD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    database_url: str = Field(default=DEFAULT_DATABASE_URL, min_length=1)
    """SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql+psycopg://user@host/db``.
    Default: ``<data_dir>/coordinator.db``, so two data dirs never share a database."""
    data_dir: Path = DEFAULT_DATA_DIR
    """Model blobs, buffered updates, the audit log and its signing key live here."""
    api_host: str = "127.0.0.1"
    api_port: Annotated[int, Field(ge=1, le=65535)] = 8080
    mqtt: BrokerSettings = BrokerSettings()
    max_message_bytes: Annotated[int, Field(ge=1024, le=2**32 - 1)] = DEFAULT_MAX_MESSAGE_BYTES
    operator_token: SecretStr
    """Bootstrap admin credential of the REST API (required, >= 16 characters, not a known
    default): it issues role tokens (``fedward tokens issue``, ``POST /v1/tokens``)."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 2**20)] = 64 * 1024
    """Largest REST request body; larger is 413 before anything is parsed."""
    max_model_bytes: Annotated[int, Field(ge=1024, le=2**32 - 1)] = 64 * 2**20
    """Largest model (float32 parameters) a study may ask for; refused (422) at creation.
    A model is also refused if it cannot fit one MQTT message (``max_message_bytes``)."""
    auth_max_failures: Annotated[int, Field(ge=1, le=10_000)] = 20
    """Failed authentications per source and interval before the source gets 429."""
    auth_interval_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    """Interval over which failed authentications are counted and audited once."""
    auth_lockout_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    """How long a source that failed too often is answered 429."""
    audit_key_password: SecretStr | None = None
    """Passphrase of the audit signing key file, if it is encrypted."""
    audit_sign_interval_s: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    """Sign a tree head over the audit log's unsigned tail this often (0: only every
    256 entries and at shutdown). Bounds how long a tail stays rewritable undetected."""

    @model_validator(mode="before")
    @classmethod
    def _database_in_data_dir(cls, values: Any) -> Any:
        # Why: the database used to default to ./fedward-data relative to the
        # working directory whatever --data-dir said, so two coordinators started
        # from one folder with different data dirs shared (and fought over) one.
        if isinstance(values, dict) and not values.get("database_url"):
            values = {
                **values,
                "database_url": sqlite_url_in(values.get("data_dir") or DEFAULT_DATA_DIR),
            }
        return values

    @field_validator("operator_token")
    @classmethod
    def _strong_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"operator_token must be at least {MIN_TOKEN_CHARS} characters")
        if token != token.strip():
            raise ValueError("operator_token must not start or end with whitespace")
        if _is_weak(token):
            raise ValueError("operator_token is a well-known default or too repetitive")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "sqlite+pysqlite:", "postgresql")):
            raise ValueError("database_url must be a sqlite:// or postgresql+psycopg:// URL")
        return value

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def pending_dir(self) -> Path:
        return self.data_dir / "pending"

    @property
    def audit_log_path(self) -> Path:
        return self.data_dir / "audit" / "coordinator.jsonl"

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "keys" / "audit-signing-key.pem"

    @property
    def wire_key_path(self) -> Path:
        """The coordinator's Ed25519 key for downlink messages (devices pin its public half)."""
        return self.data_dir / "keys" / "wire-signing-key.pem"

    @property
    def enrolment_key_path(self) -> Path:
        """The master key operator-issued enrolment secrets are derived from."""
        return self.data_dir / "keys" / "enrolment.key"

    @property
    def wire_state_dir(self) -> Path:
        """The downlink counter and the highest counter seen per device (replay window)."""
        return self.data_dir / "wire"
