"""One error root: every exception fedward defines derives from FedwardError.

fedward/errors.py documents the tree and why it exists (a caller embedding
fedward catches ours apart from everyone else's). This test walks the
installed package, imports every module and checks every exception class the
module itself defines, so a new error that forgets its base fails here.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import fedward
from fedward.coordinator.errors import CoordinatorError, StateLoadError
from fedward.errors import FedwardError, SavedStateError
from fedward.privacy.budget import BudgetPolicy
from fedward.privacy.errors import LedgerStateError, PrivacyError
from fedward.privacy.ledger import PrivacyLedger
from fedward.privacy.secagg import SecAggConfig, SecAggServer, SecAggSession
from fedward.privacy.secagg.errors import SecAggError, StateError
from fedward.saved_state import open_envelope

ROOT = Path(__file__).resolve().parents[1]

# Modules that only run inside the tool that loads them. Their source is read
# instead of imported (test_unimportable_modules_define_no_exceptions), so none
# is skipped silently.
RUN_BY_A_TOOL = {
    "fedward.coordinator.migrations.env": "alembic's env script: needs alembic's running context",
}

# Private exception classes: control flow that never leaves its module. Listed
# one by one, so a new one is a decision, not a gap in the check.
PRIVATE_CONTROL_FLOW = {
    # Marks a bug while judging one frame (any exception); submit_updates catches it
    # and re-judges frame by frame. Not a deliberate refusal, so not a FedwardError.
    "fedward.coordinator.service.updates._FrameCrashed",
}


def _walk_error(name: str) -> None:
    raise ImportError(f"pkgutil could not import package {name} while walking fedward")


def module_names() -> list[str]:
    """Every module of the installed fedward package.

    pkgutil walks ``fedward.__path__`` and, because the editable install maps
    the subpackages of ``[tool.fedward.package-dir]`` from their own folders
    (which ``fedward.__path__`` does not contain), each of those as well.
    """
    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["fedward"]
    packages: list[ModuleType] = [fedward]
    packages += [importlib.import_module(name) for name in mapped["package-dir"]]
    names = set()
    for package in packages:
        names.add(package.__name__)
        for info in pkgutil.walk_packages(
            package.__path__, f"{package.__name__}.", onerror=_walk_error
        ):
            names.add(info.name)
    return sorted(names)


MODULES = module_names()


def defined_exceptions(module: ModuleType) -> list[type[BaseException]]:
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]


def all_defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in MODULES:
        if name in RUN_BY_A_TOOL:
            continue
        for cls in defined_exceptions(importlib.import_module(name)):
            found[f"{name}.{cls.__qualname__}"] = cls
    return found


def test_the_walk_reaches_every_mapped_package_and_tool_run_modules_exist() -> None:
    # Prepare / Execute
    tops = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    # Assert: fedward's own folders and the mapped ones, and the listed exceptions are real
    assert {"protocol", "privacy", "coordinator", "edge", "compliance", "bench"} <= tops
    assert {"simulation", "tinytrain", "commands", "live", "errors", "saved_state"} <= tops
    assert set(RUN_BY_A_TOOL) <= set(MODULES)


def test_every_exception_fedward_defines_derives_from_fedward_error() -> None:
    # Prepare / Execute: import every module, collect the exceptions each defines
    found = all_defined_exceptions()
    private = {name for name in found if name.rsplit(".", 1)[1].startswith("_")}
    outside = sorted(
        f"{name} ({', '.join(b.__name__ for b in cls.__mro__[1:])})"
        for name, cls in found.items()
        if name not in private and not issubclass(cls, FedwardError)
    )
    # Assert
    assert "fedward.protocol.errors.TransportError" in found  # the scan does see errors
    assert outside == [], "exceptions not under fedward.errors.FedwardError:\n" + "\n".join(outside)
    assert private == PRIVATE_CONTROL_FLOW


@pytest.mark.parametrize("name", sorted(RUN_BY_A_TOOL))
def test_unimportable_modules_define_no_exceptions(name: str) -> None:
    # Prepare: the source, found without running the module
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise AssertionError(f"{name} is listed but has no source file")
    tree = ast.parse(Path(spec.origin).read_text(), filename=spec.origin)
    # Execute
    classes = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    # Assert: nothing there that the import-based check would have had to look at
    assert classes == []


def module_sources() -> dict[str, Path]:
    """The source file of every module the walk found, run-by-a-tool ones included."""
    sources: dict[str, Path] = {}
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise AssertionError(f"{name} has no Python source file")
        sources[name] = Path(spec.origin)
    return sources


def bare_runtime_error_raises(tree: ast.AST) -> list[int]:
    """Lines of ``raise RuntimeError`` / ``raise RuntimeError(...)`` (builtins. too)."""

    def names_runtime_error(node: ast.expr) -> bool:
        if isinstance(node, ast.Call):
            node = node.func
        if isinstance(node, ast.Name):
            return node.id == "RuntimeError"
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "RuntimeError"
            and isinstance(node.value, ast.Name)
            and node.value.id == "builtins"
        )

    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise) and node.exc is not None and names_runtime_error(node.exc)
    ]


def test_the_scan_finds_a_bare_runtime_error() -> None:
    # Prepare
    source = "def f():\n    raise RuntimeError('x')\n\ndef g():\n    raise builtins.RuntimeError\n"
    # Execute / Assert: the check below would see one
    assert bare_runtime_error_raises(ast.parse(source)) == [2, 5]
    assert bare_runtime_error_raises(ast.parse("raise SimulationError('x')")) == []


def test_nothing_fedward_raises_on_purpose_is_a_bare_runtime_error() -> None:
    """A deliberate failure is a fedward error (fedward/errors.py): the package's own
    class, or a new one under the package's base, never ``RuntimeError``."""
    # Prepare
    sources = module_sources()
    # Execute
    found = [
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line} ({name})"
        for name, path in sorted(sources.items())
        for line in bare_runtime_error_raises(ast.parse(path.read_text(), filename=str(path)))
    ]
    # Assert
    assert "fedward.edge.dp_training" in sources  # the scan does read the mapped folders
    assert found == [], "raise a fedward error instead of RuntimeError:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("error", "package_base"),
    [
        (StateLoadError, CoordinatorError),
        (LedgerStateError, PrivacyError),
        (StateError, SecAggError),
    ],
)
def test_state_load_errors_are_saved_state_errors_and_keep_their_package_base(
    error: type[SavedStateError], package_base: type[FedwardError]
) -> None:
    # Prepare: a state of another kind, opened the way every load opens it
    state = {"kind": "fedward.something.else", "format_version": 1, "payload": {}}
    # Execute / Assert: one except clause catches it; its own package's base does too
    with pytest.raises(SavedStateError) as caught:
        open_envelope(state, kind="fedward.expected", format_version=1, error=error)
    assert type(caught.value) is error
    assert isinstance(caught.value, package_base)


def test_real_loads_of_a_foreign_state_raise_saved_state_errors() -> None:
    # Prepare: a privacy ledger and a secure-aggregation server, each given the other's state
    ledger = PrivacyLedger(BudgetPolicy(epsilon=4.0, delta=1e-6))
    session = SecAggSession(
        session_id=b"errors-test-session",
        round_index=0,
        cohort=("d0", "d1", "d2"),
        vector_length=4,
        index_set_digest=bytes(32),
    )
    server = SecAggServer(
        config=SecAggConfig(threshold=3, scale=2.0**10, clip=1.0), session=session
    )
    # Execute / Assert
    with pytest.raises(SavedStateError) as from_ledger:
        ledger.load_state_dict(server.state_dict())
    with pytest.raises(SavedStateError) as from_server:
        server.load_state_dict(ledger.state_dict())
    assert isinstance(from_ledger.value, LedgerStateError)
    assert isinstance(from_server.value, StateError)
