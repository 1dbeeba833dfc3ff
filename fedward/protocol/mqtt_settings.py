"""Settings of the MQTT transport (no paho import, so config code stays light).

Defaults are chosen for unattended sensor fleets:

* persistent sessions (``clean_start=False``; MQTT 5 session expiry,
  ``clean_session=False`` on 3.1.1) so QoS-1 tasks and acks queued while a
  wearable is out of range are delivered when it comes back;
* exponential reconnect backoff so a fleet does not hammer a broker that
  just restarted;
* ``max_packet_bytes`` bounds every packet we send; larger messages are
  chunked by :mod:`fedward.protocol.transport` (MQTT 5 brokers may lower it
  further via the CONNACK Maximum Packet Size, which is honoured).

TLS: with ``tls`` set the client verifies the broker against ``ca_file``
(system CAs if ``None``) and presents ``cert_file``/``key_file`` for mutual
TLS, the natural device identity for HIPAA 164.312(d)/(e).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from fedward.protocol.ids import Id


class MqttProtocol(StrEnum):
    MQTT311 = "3.1.1"
    MQTT5 = "5"


class TlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: Id
    """Also the device id in ACL patterns (``%c``), hence the id alphabet."""
    protocol: MqttProtocol = MqttProtocol.MQTT5
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSettings | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=65535)] = 30
    clean_start: bool = False
    session_expiry_s: Annotated[int, Field(ge=0, le=2**32 - 1)] = 24 * 3600
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    ack_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    reconnect_min_delay_s: Annotated[float, Field(gt=0)] = 0.5
    reconnect_max_delay_s: Annotated[float, Field(gt=0)] = 60.0
    max_packet_bytes: Annotated[int, Field(ge=1024, le=268_435_455)] = 256 * 1024
    max_inflight: Annotated[int, Field(ge=1)] = 20
    max_queued: Annotated[int, Field(ge=0)] = 0
    """Paho's outgoing queue bound while offline (0 = unbounded)."""

    @model_validator(mode="after")
    def _delays_ordered(self) -> MqttSettings:
        if self.reconnect_max_delay_s < self.reconnect_min_delay_s:
            raise ValueError("reconnect_max_delay_s < reconnect_min_delay_s")
        return self
