"""fedward: privacy-hardened, semi-asynchronous sparse federated learning.

The names most users need, importable from ``fedward`` itself; each one lives
in (and is documented at) its home module:

==========================  ==================================  =====================================
name                        home module                         what for
==========================  ==================================  =====================================
``__version__``             package metadata (pyproject.toml)   the installed release
``FedwardError``            ``fedward.errors``                  catch anything fedward raises
``StudySpec``               ``fedward.coordinator.study_spec``  a study: model, strategy, privacy
``Scenario``                ``fedward.simulation.scenario``     a simulated fleet, data and budget
``load_scenario``           ``fedward.simulation.scenario``     a preset (tiny/quick/full) or file
``StrategyRun``             ``fedward.simulation.scenario``     which strategy row a simulation runs
``Study``                   ``fedward.simulation.study``        one simulated study in virtual time
``make_executor``           ``fedward.simulation.executor``     where simulated devices train
``ExecutorKind``            ``fedward.simulation.executor``     serial, process pool or Ray
``CoordinatorSettings``     ``fedward.coordinator.settings``    the live coordinator's settings
``create_app``              ``fedward.coordinator.api.app``     the coordinator's REST app (FastAPI)
==========================  ==================================  =====================================

A simulation from Python, as ``fedward simulate`` runs it::

    from fedward import ExecutorKind, StrategyRun, Study, load_scenario, make_executor

    scenario = load_scenario("quick")
    spec = scenario.study_spec(StrategyRun.FTTE)
    pool = make_executor(ExecutorKind.SERIAL, scenario.data_config(), spec.model_settings())
    try:
        result = Study(scenario, StrategyRun.FTTE, executor=pool).run()
    finally:
        pool.close()

Everything else stays at its home module and is not re-exported here: the
wire protocol (``fedward.protocol.*``), privacy accounting and secure
aggregation (``fedward.privacy.*``), the audit log (``fedward.compliance``),
the coordinator's service and store, and the edge agent
(``fedward.edge.agent.EdgeAgent``, which also needs an identity, a dataset and
a transport from their own modules; ``fedward edge run`` wires them).

Lazy (PEP 562): ``import fedward`` and every ``import fedward.<sub>`` run this
file, so it imports nothing; a name is imported from its home module on first
access. ``import fedward.protocol`` therefore never pulls in torch, FastAPI,
SQLAlchemy or paho. Inside fedward, import from the home modules, never from
``fedward`` (import-linter's floor contracts would see the package importing
every floor at once).

``__version__`` is read from the installed distribution's metadata, so
pyproject.toml's ``version`` is the only place it is written.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedward.coordinator.api.app import create_app
    from fedward.coordinator.settings import CoordinatorSettings
    from fedward.coordinator.study_spec import StudySpec
    from fedward.errors import FedwardError
    from fedward.simulation.executor import ExecutorKind, make_executor
    from fedward.simulation.scenario import Scenario, StrategyRun, load_scenario
    from fedward.simulation.study import Study

    __version__: str

# exported name -> home module; tests/test_public_api.py checks it against the
# TYPE_CHECKING imports above and against __all__.
_HOMES: dict[str, str] = {
    "FedwardError": "fedward.errors",
    "StudySpec": "fedward.coordinator.study_spec",
    "Scenario": "fedward.simulation.scenario",
    "load_scenario": "fedward.simulation.scenario",
    "StrategyRun": "fedward.simulation.scenario",
    "Study": "fedward.simulation.study",
    "make_executor": "fedward.simulation.executor",
    "ExecutorKind": "fedward.simulation.executor",
    "CoordinatorSettings": "fedward.coordinator.settings",
    "create_app": "fedward.coordinator.api.app",
}

__all__ = [
    "CoordinatorSettings",
    "ExecutorKind",
    "FedwardError",
    "Scenario",
    "StrategyRun",
    "Study",
    "StudySpec",
    "__version__",
    "create_app",
    "load_scenario",
    "make_executor",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        value: Any = version("fedward")
    elif name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    else:
        raise AttributeError(f"module 'fedward' has no attribute {name!r}")
    globals()[name] = value  # later reads skip this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
