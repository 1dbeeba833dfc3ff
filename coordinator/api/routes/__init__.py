"""The ``/v1`` routers (operator endpoints) and the probes."""
