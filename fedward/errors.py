"""The one error root of fedward, and where each package's errors hang from it.

Everything fedward raises on purpose derives from :class:`FedwardError`, so a
caller that embeds fedward (a hospital's pipeline, a notebook) can catch ours
apart from everyone else's. Each package keeps its own base below the root and
documents its own subtree; catch the narrowest class you can handle::

    FedwardError                          fedward.errors
    ├── SavedStateError                   a saved state failed its checks on load (kind,
    │                                     format version, checksum, content); every
    │                                     package's state error is also one of these:
    │                                     StateLoadError, GuardStateError, LedgerStateError,
    │                                     BudgetStateError, secagg StateError, LineageStateError
    ├── ProtocolError                     fedward.protocol.errors: decode, encode, size,
    │   └── TransportError                version, chunk, route; the transport seam (paho
    │                                     and amqtt errors are mapped to it, never leak)
    ├── PrivacyError                      fedward.privacy.errors: budgets, forged claims,
    │   │                                 policies (and fedward.edge.budget.TaskRefused)
    │   ├── LedgerStateError              a privacy ledger's saved state
    │   ├── BudgetStateError              fedward.edge.budget: a device budget's saved state
    │   └── SecAggError                   fedward.privacy.secagg.errors: secure aggregation
    │       └── StateError                wrong stage, or a session state that fails its checks
    ├── ComplianceError                   fedward.compliance.errors: audit integrity,
    │   │                                 forbidden content, keys, store lock
    │   └── LineageError                  the model-lineage graph is inconsistent
    │       └── LineageStateError         a lineage's saved state
    ├── CoordinatorError                  fedward.coordinator.errors: rejected updates,
    │   │                                 strategy config, not ready, planning, blobs, API
    │   ├── StateLoadError                a coordinator state failed its checks on load
    │   │   └── GuardStateError           a privacy guard's saved state (also a PolicyError)
    │   ├── ServiceError                  the service's caller mistakes (api maps them to HTTP)
    │   └── MigrationsMissing             fedward.coordinator.migrations: no migration scripts
    │                                     (an incomplete install)
    ├── EdgeError                         fedward.edge (no errors module of its own):
    │   ├── AgentError                    fedward.edge.agent: the agent cannot go on
    │   │   └── EnrolmentRefused          the coordinator refused the enrolment
    │   ├── OutboxError                   fedward.edge.outbox: an entry cannot be stored or read
    │   ├── DatasetError                  fedward.edge.dataset: unusable data file (also a ValueError)
    │   └── DPTrainingError               fedward.edge.dp_training: DP-SGD did not run the
    │                                     mechanism the task planned (not the pinned Opacus)
    ├── SimulationError                   the simulator and benchmarks:
    │   ├── IncomparableReports           fedward.bench.seeds: reports of different benchmarks
    │   │                                 (also a ValueError)
    │   ├── TooFewAcks                    fedward.bench.ingest: too few acks to measure a rate
    │   ├── DataFileError                 fedward.simulation.datafile: a data file not in the
    │   │                                 documented shape (also a ValueError)
    │   ├── StudyFileError                fedward.simulation.studyfile: a study file that cannot
    │   │                                 be read or is not a valid study (also a ValueError)
    │   └── ReportError                   fedward.simulation.studyreport: no run to report on
    │                                     (also a ValueError)
    ├── LiveError                         fedward.live: a live study not set up or not
    │                                     finished (a library's run-time failure, not input)
    └── CliError                          fedward.cli: a command's input, said plainly
        └── UsageError                    fedward.commands.simulate: options that do not go
                                          together (also a ValueError)

Why the root lives here, on a floor of its own: the floor-1 packages import
nothing of each other's, yet their errors must share one base. This module
imports nothing of ours (nor does :mod:`fedward.saved_state`), so any
package may use it without a layering cycle.

Validation raises (never ``assert``): several of these classes also derive
from ``ValueError`` or ``KeyError`` where callers reasonably catch those.

Argument checks stay built-in: a constructor or function given an argument
of the wrong type or value (``DPTrainConfig(lr=-1)``) raises ``TypeError`` or
``ValueError``, which is what its callers reasonably expect, unless a fedward
class that also subclasses ``ValueError`` is meant for it (secagg's
``ConfigError``, ``StrategyConfigError``, ``DatasetError``). Everything else
raised on purpose (a run-time failure, a refusal, a state that fails its
checks) is a fedward error, never a bare ``RuntimeError``: tests/test_errors.py
scans the source for ``raise RuntimeError``.
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
