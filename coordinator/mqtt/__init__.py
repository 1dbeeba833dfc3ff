"""The coordinator's MQTT side: the device-facing half of a live study.

    bridge.py      StudyBridge: one study's uplink topics <-> the StudyService
    supervisor.py  BridgeSupervisor: one connection, a bridge per live study

Both know only the ``fedward.protocol.transport.Transport`` seam.
"""
