"""``fedward``'s own exports: the names its docstring lists, resolved lazily from their homes."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import fedward

ROOT = Path(__file__).resolve().parents[1]
# Written out here, not read from fedward: the test states the contract.
HOMES = {
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
HEAVY = ("torch", "opacus", "fastapi", "starlette", "sqlalchemy", "alembic", "paho")


def modules_loaded_by(code: str) -> list[str]:
    """Top-level modules in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed: {proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


def test_all_lists_the_exports_and_the_version() -> None:
    assert sorted(fedward.__all__) == sorted([*HOMES, "__version__"])


@pytest.mark.parametrize("name", sorted(HOMES))
def test_each_export_is_the_object_at_its_home(name: str) -> None:
    # Execute
    exported = getattr(fedward, name)
    # Assert
    assert exported is getattr(importlib.import_module(HOMES[name]), name)


def test_version_comes_from_the_metadata_of_pyproject() -> None:
    # Prepare
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    # Execute / Assert
    assert fedward.__version__ == importlib.metadata.version("fedward") == pyproject


def test_type_checkers_see_the_same_names_from_the_same_homes() -> None:
    # Prepare: the imports under ``if TYPE_CHECKING:`` in fedward/__init__.py
    tree = ast.parse((ROOT / "fedward" / "__init__.py").read_text())
    guarded = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    ]
    # Execute
    seen = {
        alias.asname or alias.name: stmt.module
        for block in guarded
        for stmt in block.body
        if isinstance(stmt, ast.ImportFrom)
        for alias in stmt.names
    }
    # Assert
    assert seen == HOMES


def test_an_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = fedward.NoSuchThing  # type: ignore[attr-defined]
    assert not hasattr(fedward, "EdgeAgent")  # reachable at fedward.edge.agent, not here


def test_dir_lists_the_exports() -> None:
    assert set(fedward.__all__) <= set(dir(fedward))


@pytest.mark.parametrize(
    "code",
    [
        "import fedward",
        "import fedward.protocol.messages",
        "import fedward.privacy",
        "import fedward; dir(fedward); fedward.FedwardError",
    ],
)
def test_the_light_packages_import_no_heavy_library(code: str) -> None:
    # Execute
    loaded = modules_loaded_by(code)
    # Assert
    assert [m for m in HEAVY if m in loaded] == []


def test_the_probe_sees_a_heavy_import() -> None:
    # Execute: the one protocol module that owns paho does import it
    loaded = modules_loaded_by("import fedward.protocol.mqtt")
    # Assert
    assert "paho" in loaded
