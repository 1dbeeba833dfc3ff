"""fedward wire protocol: the neutral floor every other package talks through.

Floor 1: imports nothing from our other packages (only floor 0:
:mod:`fedward.errors`, the root its errors hang from, and
:mod:`fedward.vocabulary`, the ``Accountant`` enum the wire carries) and no
torch, so devices, the coordinator, the simulator and third-party clients can
share it.

Modules (data path: tensors -> codec -> frame -> chunks -> transport):

* :mod:`fedward.protocol.errors`         one exception family for everything untrusted
* :mod:`fedward.protocol.codec`          named numpy tensors <-> bytes (no pickle, CRC32)
* :mod:`fedward.protocol.messages`       strict, versioned pydantic messages and frames
* :mod:`fedward.protocol.ids`            the identifier alphabet shared by messages and topics
* :mod:`fedward.protocol.topics`         MQTT topic layout, strict parser, route checks
* :mod:`fedward.protocol.chunking`       split/reassemble large frames with bounded memory
* :mod:`fedward.protocol.transport`      the Transport seam, in-memory broker/transport
* :mod:`fedward.protocol.mqtt`           paho-mqtt 2.x transport (only module importing paho)
* :mod:`fedward.protocol.mqtt_settings`  its settings, importable without paho

Submodules are imported explicitly
(``from fedward.protocol.messages import Update``); this package re-exports
nothing, so importing it stays cheap.
"""
