"""The layering rules, enforced.

1. Floors (import-linter contracts in pyproject.toml): nothing imports upward;
   protocol, privacy and tinytrain import nothing of ours; edge and coordinator
   never import each other.
2. Heavy or I/O libraries stay inside the modules that own them (AST scan).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "protocol",
    "privacy",
    "tinytrain",
    "edge",
    "compliance",
    "coordinator",
    "simulation",
    "fedward",
)

# library -> path prefixes (relative to the repo) allowed to import it
CONFINED: dict[str, tuple[str, ...]] = {
    "torch": ("tinytrain/", "edge/dp_training.py"),
    "opacus": ("edge/dp_training.py", "privacy/accounting.py", "tinytrain/dp_memory.py"),
    "fastapi": ("coordinator/api/",),
    "starlette": ("coordinator/api/",),
    "paho": ("protocol/mqtt.py",),
    "sqlalchemy": ("coordinator/store/", "coordinator/migrations/"),
    "alembic": ("coordinator/store/", "coordinator/migrations/"),
    "amqtt": ("fedward/",),
    "ray": ("simulation/executor.py",),
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


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run(
        [exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_scan_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from torch import nn\nimport paho.mqtt.client\n")
    assert {"torch", "paho"} <= imported_roots(bad)
