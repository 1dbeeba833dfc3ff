"""The shipped broker ACL (deploy/mosquitto) on secure aggregation's topics: a device
reads only its own ``fill`` topic and publishes only on its own ``secagg`` topic."""

from __future__ import annotations

import shutil
import time

import pytest

from fedward.protocol.credentials import COORDINATOR_CN
from tests.wire.test_wire_broker import _client, tls_broker  # noqa: F401  # the fixture

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto")


def test_a_device_reads_and_writes_only_its_own_secagg_topics(tls_broker):  # noqa: F811
    # Prepare: the coordinator, d2, and d1 trying to act for d2
    port, creds = tls_broker
    coordinator = _client(port, creds, COORDINATOR_CN, client_id="coordinator-sa")
    d2 = _client(port, creds, "d2", client_id="d2-sa")
    d1 = _client(port, creds, "d1", client_id="d1-sa")
    try:
        for client in (coordinator, d1, d2):
            assert client.connected.wait(5), client.refused
        coordinator.subscribe("fedward/v1/s/secagg/+")
        d2.subscribe("fedward/v1/s/fill/d2")
        d1.subscribe("fedward/v1/s/fill/d2")  # another member's shares: denied
        d1.subscribe("fedward/v1/s/fill/d1")
        time.sleep(0.5)
        # Execute: the coordinator sends d2 its delivery; d1 posts a masked input as d2,
        # then its own; d2 posts its own
        coordinator.publish("fedward/v1/s/fill/d2", b"delivery for d2")
        d1.client.publish("fedward/v1/s/secagg/d2", b"forged by d1", qos=1)
        d1.publish("fedward/v1/s/secagg/d1", b"d1's own")
        d2.publish("fedward/v1/s/secagg/d2", b"d2's own")
        seen = coordinator.wait_for(
            lambda s: {b"d1's own", b"d2's own"} <= {p for _, p in s}, timeout=10
        )
        got = d2.wait_for(lambda s: len(s) >= 1)
        time.sleep(0.5)
        # Assert
        assert got == [("fedward/v1/s/fill/d2", b"delivery for d2")]
        assert ("fedward/v1/s/secagg/d1", b"d1's own") in seen
        assert ("fedward/v1/s/secagg/d2", b"d2's own") in seen
        assert all(p != b"forged by d1" for _, p in seen)
        assert d1.seen == []
    finally:
        for client in (coordinator, d1, d2):
            client.close()
