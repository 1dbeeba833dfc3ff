"""The wheel holds one import name, ``fedward``, with every mapped folder inside it.

setup.py maps coordinator/, edge/, privacy/, compliance/ and bench/ to
``fedward.<name>`` (pyproject.toml ``[tool.fedward.package-dir]``). The test
builds the wheel offline from a copy of the working tree (an in-tree build
reuses build/lib, where files deleted from the source survive), reads the zip,
and installs it into a bare target folder to import it without the repository
on ``sys.path`` and without the editable install's import hook.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Never part of a build: local state, caches, other builds.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".hypothesis",
    ".pytest_cache",
    ".ruff_cache",
    "runs",
    ".cache",
)
MAPPED: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["fedward"][
    "package-dir"
]

pytestmark = pytest.mark.slow


def offline_pip_env() -> dict[str, str]:
    return os.environ | {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel built from a copy of the working tree (tests/ and scripts/ included)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE, symlinks=True)
    out = work / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--quiet", "-w", str(out), str(source)],
        env=offline_pip_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (built,) = out.glob("fedward-*.whl")
    yield built


@pytest.fixture(scope="module")
def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_only_top_level_name_is_fedward(wheel: Path, names: list[str]) -> None:
    # Execute
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    with zipfile.ZipFile(wheel) as zf:
        top_level = f"{info}/top_level.txt"
        declared = zf.read(top_level).decode().split() if top_level in names else ["fedward"]
    # Assert
    assert tops == {"fedward"}, sorted(tops)
    assert declared == ["fedward"]


def test_every_mapped_folder_is_a_subpackage(names: list[str]) -> None:
    # Prepare
    expected = [
        "fedward/__init__.py",
        "fedward/coordinator/engine/engine.py",
        "fedward/privacy/ledger.py",
        "fedward/privacy/secagg/__init__.py",
        "fedward/compliance/log.py",
        "fedward/edge/agent.py",
        "fedward/bench/seeds.py",
        "fedward/protocol/messages.py",
        "fedward/simulation/study.py",
        "fedward/tinytrain/models.py",
        *(f"{name.replace('.', '/')}/__init__.py" for name in MAPPED),
    ]
    # Execute
    missing = [path for path in expected if path not in names]
    # Assert
    assert missing == []


def test_the_typed_marker_ships(names: list[str]) -> None:
    # Assert: PEP 561, so a caller's type checker reads fedward's annotations
    assert "fedward/py.typed" in names


def test_the_migrations_ship_with_their_data(names: list[str]) -> None:
    # Prepare: every migration in the source tree, as the wheel must name it
    versions = sorted(
        f"fedward/coordinator/migrations/versions/{p.name}"
        for p in (ROOT / "coordinator" / "migrations" / "versions").glob("*.py")
    )
    expected = [
        "fedward/coordinator/migrations/alembic.ini",
        "fedward/coordinator/migrations/script.py.mako",
        "fedward/coordinator/migrations/env.py",
        *versions,
    ]
    # Execute
    missing = [path for path in expected if path not in names]
    # Assert
    assert len(versions) >= 1
    assert missing == []


def test_no_tests_scripts_or_caches_leak_in(names: list[str]) -> None:
    leaked = [
        n
        for n in names
        if "/tests/" in f"/{n}"
        or "/scripts/" in f"/{n}"
        or "__pycache__" in n
        or n.endswith(".pyc")
        or "/conftest.py" in f"/{n}"
    ]
    assert leaked == []


def test_the_installed_wheel_imports_without_the_repository(wheel: Path, tmp_path: Path) -> None:
    # Prepare: install into a bare folder; no site (so no editable-install hook, no .pth)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target)]
        + [str(wheel)],
        env=offline_pip_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    dependencies = sysconfig.get_paths()["purelib"]  # pydantic, numpy, ... without their .pth
    probe = (
        "import sys\n"
        f"sys.path[:] = [{str(target)!r}, *sys.path, {dependencies!r}]\n"
        "import fedward.coordinator.engine, fedward.privacy.ledger, fedward.compliance.log\n"
        "import fedward.coordinator.migrations as m\n"
        "from importlib.resources import files\n"
        "ours = [m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'fedward']\n"
        f"print(all(f.startswith({str(target)!r}) for f in ours))\n"
        "print(files(m).joinpath('alembic.ini').is_file())\n"
        f"print({str(ROOT)!r} in sys.path)\n"
    )
    # Execute: -I (no cwd, no PYTHONPATH, no user site) and -S (no site-packages hook)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Assert
    assert proc.returncode == 0, proc.stderr
    all_from_target, has_ini, repo_on_path = proc.stdout.split()
    assert all_from_target == "True"
    assert has_ini == "True"
    assert repo_on_path == "False"
