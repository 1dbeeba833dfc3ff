"""The embedded amqtt broker's start-up errors reach callers as TransportError."""

from __future__ import annotations

import socket

import pytest

from fedward.live import EmbeddedBroker
from fedward.protocol.errors import TransportError


def test_an_embedded_broker_on_a_port_in_use_raises_transport_error():
    # Prepare: something already listens on the port the broker is given
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = int(taken.getsockname()[1])
        broker = EmbeddedBroker(port=port)
        try:
            # Execute
            with pytest.raises(TransportError) as caught:
                broker.start(timeout_s=10)
        finally:
            broker.stop()  # a no-op after a failed start
    # Assert: ours, says what to do, amqtt's own error chained as the cause
    assert f"127.0.0.1:{port}" in str(caught.value) and "--broker" in str(caught.value)
    assert caught.value.__cause__ is not None
    assert not isinstance(caught.value, OSError)
