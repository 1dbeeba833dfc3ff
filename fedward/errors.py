"""The one error root of fedward, and where each package's errors hang from it.

Everything fedward raises on purpose derives from :class:`FedwardError`, so a
caller that embeds fedward (a hospital's pipeline, a notebook) can catch ours
apart from everyone else's. Each package keeps its own base below the root and
documents its own subtree; catch the narrowest class you can handle::

    FedwardError                          fedward.errors
    ├── SavedStateError                   a saved state failed its checks on load (kind,
    │                                     format version, checksum, content); every
    │                                     package's state error is also one of these:
    │                                     StateLoadError, LedgerStateError, secagg StateError
    ├── ProtocolError                     fedward.protocol.errors: decode, encode, size,
    │   └── TransportError                version, chunk, route; the transport seam (paho
    │                                     and amqtt errors are mapped to it, never leak)
    ├── PrivacyError                      fedward.privacy.errors: budgets, forged claims,
    │   ├── LedgerStateError              policies, ledger state (and edge.budget.TaskRefused)
    │   └── SecAggError                   fedward.privacy.secagg.errors: secure aggregation
    │       └── StateError                wrong stage, or a session state that fails its checks
    ├── ComplianceError                   fedward.compliance.errors: audit integrity,
    │                                     forbidden content, lineage, keys, store lock
    ├── CoordinatorError                  fedward.coordinator.errors: rejected updates,
    │   ├── StateLoadError                strategy config, state load, not ready, blobs,
    │   └── ServiceError                  planning, API; the service's caller mistakes
    │                                     (api maps them to HTTP)
    ├── EdgeError                         fedward.edge (no errors module of its own):
    │   ├── AgentError                    edge.agent: the agent cannot go on
    │   │   └── EnrolmentRefused          the coordinator refused the enrolment
    │   ├── OutboxError                   edge.outbox: an entry cannot be stored or read
    │   └── DatasetError                  edge.dataset: unusable data file (also a ValueError)
    ├── SimulationError                   the simulator and benchmarks:
    │   └── IncomparableReports           bench.seeds: reports of different benchmarks
    │                                     (also a ValueError)
    ├── LiveError                         fedward.live: a live study not set up or not
    │                                     finished (a library's run-time failure, not input)
    └── CliError                          fedward.cli: a command's input, said plainly

Why the root lives here, on a floor of its own: the floor-1 packages import
nothing of each other's, yet their errors must share one base. This module
imports nothing of ours (nor does :mod:`fedward.saved_state`), so any
package may use it without a layering cycle.

Validation raises (never ``assert``): several of these classes also derive
from ``ValueError`` or ``KeyError`` where callers reasonably catch those.
"""

from __future__ import annotations

__all__ = [
    "CliError",
    "EdgeError",
    "FedwardError",
    "SavedStateError",
    "SimulationError",
]


class FedwardError(Exception):
    """Base of every error fedward raises deliberately."""


class SavedStateError(FedwardError):
    """A saved state (``state_dict``) failed its checks on load.

    Raised for the wrong kind, an unsupported format version, a checksum
    mismatch or content the writer could never have produced. The object
    being loaded is left as it was, unless its ``load_state_dict`` says
    otherwise.
    """


class EdgeError(FedwardError):
    """Base of the errors the edge agent raises (see ``fedward.edge``)."""


class SimulationError(FedwardError):
    """Base of the errors the simulator and benchmarks raise."""


class CliError(FedwardError):
    """A command-line input that cannot be used; the message says what to do."""
