"""fedward wire protocol: the neutral floor every other package talks through.

Floor 1: imports nothing from our other packages (only floor 0:
:mod:`fedward.errors`, the root its errors hang from, and
:mod:`fedward.saved_state`) and no torch, so devices, the coordinator, the
simulator and third-party clients can share it.

Modules (data path: tensors -> codec -> frame -> chunks -> transport):

* :mod:`protocol.errors`     one exception family for everything untrusted
* :mod:`protocol.codec`      named numpy tensors <-> bytes (no pickle, CRC32)
* :mod:`protocol.messages`   strict, versioned pydantic messages and frames
* :mod:`protocol.ids`        the identifier alphabet shared by messages and topics
* :mod:`protocol.topics`     MQTT topic layout, strict parser, route checks
* :mod:`protocol.chunking`   split/reassemble large frames with bounded memory
* :mod:`protocol.transport`  the Transport seam, in-memory broker/transport
* :mod:`protocol.mqtt`       paho-mqtt 2.x transport (only module importing paho)
* :mod:`protocol.mqtt_settings` its settings, importable without paho

Submodules are imported explicitly (``from protocol.messages import Update``);
this package re-exports nothing, so importing it stays cheap.
"""
