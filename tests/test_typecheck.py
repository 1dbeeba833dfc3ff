"""mypy over the whole ``fedward`` namespace exits 0, so ``pytest`` alone catches
a type regression (scripts/test.sh runs the same check before pytest).

Why the linked tree: setuptools' import hook maps ``fedward.coordinator`` to
coordinator/ (and so on) only at run time; mypy reads files, so it runs on the
tree scripts/static_tree.py links together, where each module has its real
name (its docstring says more). This test links its own copy of that tree in
a temporary folder, so a concurrent scripts/test.sh rebuilding build/static
cannot pull files from under it, and shares the cache (build/mypy_cache): a
warm run takes about a second, a cold one 15-20 s.

The configuration is in pyproject.toml ``[tool.mypy]``: default checks plus
check_untyped_defs everywhere, mypy's strict flags for floors 0 and 1.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
STRICT_FLOORS = [
    "fedward.errors",
    "fedward.saved_state",
    "fedward.vocabulary",
    "fedward.protocol.*",
    "fedward.privacy.*",
    "fedward.tinytrain.*",
]


def _static_tree() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "static_tree", ROOT / "scripts" / "static_tree.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mypy_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]


@pytest.mark.slow
def test_mypy_is_clean(tmp_path: Path) -> None:
    static_tree = _static_tree()
    tree = static_tree.build(tmp_path / "static")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = static_tree.repo_paths(result.stdout + result.stderr)
    assert result.returncode == 0, f"mypy found type errors (paths in the repository):\n{report}"


def test_floors_get_every_strict_flag() -> None:
    """The floor override spells out ``--strict``: per-module ``strict = true``
    would switch the flags on for every module. A mypy that adds a strict flag
    fails this until the flag is added (to the override, or to [tool.mypy]
    for a global-only flag)."""
    from mypy.main import define_options
    from mypy.options import PER_MODULE_OPTIONS

    config = _mypy_config()
    floors = [o for o in config["overrides"] if set(STRICT_FLOORS) & set(o["module"])]
    assert len(floors) == 1, "one [[tool.mypy.overrides]] holds the strict floors"
    assert set(STRICT_FLOORS) <= set(floors[0]["module"]), "a floor-0/1 package is not strict"

    def settings(table: dict) -> dict[str, bool]:
        out = {}
        for key, value in table.items():
            if isinstance(value, bool):
                out[key[3:] if key.startswith("no_") else key] = (
                    not value if key.startswith("no_") else value
                )
        return out

    per_module, global_ = settings(floors[0]), settings(config)
    assert "strict" not in per_module and "strict" not in global_
    _, _, strict_assignments = define_options()
    missing = [
        dest
        for dest, value in strict_assignments
        if (per_module if dest in PER_MODULE_OPTIONS else global_).get(dest) is not value
    ]
    assert not missing, f"strict flags not set for the floors: {missing}"


def test_repo_paths_maps_linked_paths_back() -> None:
    static_tree = _static_tree()
    report = (
        "fedward/coordinator/engine/engine.py:3: error: x  [misc]\n"
        "fedward/edge/agent.py:1: note: y\n"
        "fedward/cli.py:2: error: z  [misc]\n"
        "Found 2 errors in 2 files\n"
    )
    assert static_tree.repo_paths(report) == (
        "coordinator/engine/engine.py:3: error: x  [misc]\n"
        "edge/agent.py:1: note: y\n"
        "fedward/cli.py:2: error: z  [misc]\n"
        "Found 2 errors in 2 files\n"
    )
    for line in static_tree.repo_paths(report).splitlines()[:3]:
        assert (ROOT / line.split(":")[0]).exists()
    sed = subprocess.run(
        ["sed", "-e", static_tree.sed_script()],
        input=report,
        capture_output=True,
        text=True,
        check=True,
    )
    assert sed.stdout == static_tree.repo_paths(report)
