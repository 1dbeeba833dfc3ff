"""The layering rules, enforced.

1. Floors (import-linter contracts in pyproject.toml): nothing imports upward;
   fedward.protocol, fedward.privacy and fedward.tinytrain import nothing of
   ours; fedward.edge and fedward.coordinator never import each other.
2. Heavy or I/O libraries stay inside the modules that own them (AST scan).
3. Our code imports itself only as ``fedward.*`` (or relatively): the old
   top-level names (``coordinator``, ``privacy``, ...) are not installed.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folders holding the fedward namespace (pyproject.toml [tool.fedward.package-dir]).
PACKAGES = ("fedward", "coordinator", "edge", "privacy", "compliance", "bench")
# Names our code must never import as top-level modules.
FORMER_ROOTS = {
    "protocol",
    "privacy",
    "tinytrain",
    "edge",
    "compliance",
    "coordinator",
    "simulation",
    "bench",
}

# library -> path prefixes (relative to the repo) allowed to import it
CONFINED: dict[str, tuple[str, ...]] = {
    # and the probe that times batched training against the per-client loop (it is
    # training code: a hand-batched SensorCNN; bench/flower_side_by_side/README.md)
    "torch": (
        "fedward/tinytrain/",
        "edge/dp_training.py",
        "bench/flower_side_by_side/batched_probe.py",
    ),
    "opacus": ("edge/dp_training.py", "privacy/accounting.py", "fedward/tinytrain/dp_memory.py"),
    "fastapi": ("coordinator/api/",),
    "starlette": ("coordinator/api/",),
    "paho": ("fedward/protocol/mqtt.py",),
    "sqlalchemy": ("coordinator/store/", "coordinator/migrations/"),
    "alembic": ("coordinator/store/", "coordinator/migrations/"),
    "amqtt": ("fedward/live.py", "fedward/commands/"),
    "ray": ("fedward/simulation/executor.py",),
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def source_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


@pytest.mark.parametrize("library", sorted(CONFINED))
def test_library_stays_in_its_modules(library: str) -> None:
    allowed = CONFINED[library]
    offenders = [
        str(p.relative_to(ROOT))
        for p in source_files()
        if library in imported_roots(p) and not str(p.relative_to(ROOT)).startswith(allowed)
    ]
    assert offenders == [], f"{library} imported outside {allowed}: {offenders}"


def test_code_imports_itself_only_as_fedward() -> None:
    offenders = [
        f"{p.relative_to(ROOT)}: {sorted(FORMER_ROOTS & imported_roots(p))}"
        for p in [*source_files(), *sorted((ROOT / "tests").rglob("*.py"))]
        if FORMER_ROOTS & imported_roots(p)
    ]
    assert offenders == [], offenders


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    tree = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "static_tree.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    proc = subprocess.run(
        [exe, "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_scan_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from torch import nn\nimport paho.mqtt.client\n")
    assert {"torch", "paho"} <= imported_roots(bad)
