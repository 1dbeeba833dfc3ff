"""``StudyService``: every call module composed into the one façade callers use."""

from __future__ import annotations

from .devices import DeviceCalls
from .lifecycle import LifecycleCalls
from .queries import QueryCalls
from .refusals import RefusalCalls
from .secagg import SecAggCalls
from .studies import StudyCalls
from .tasks import TaskCalls
from .updates import UpdateCalls


class StudyService(
    StudyCalls,
    LifecycleCalls,
    DeviceCalls,
    TaskCalls,
    UpdateCalls,
    RefusalCalls,
    SecAggCalls,
    QueryCalls,
):
    """Thread-safe façade over every live study (see :mod:`fedward.coordinator.service`)."""
