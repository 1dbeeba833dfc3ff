"""A benchmark report names the code it ran: a digest of every source file, and git's commit."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedward.simulation import provenance as prov


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Two source roots standing in for the namespace's folders."""
    for name in ("fedward", "coordinator"):
        (tmp_path / name / "__pycache__").mkdir(parents=True)
        (tmp_path / name / "a.py").write_text(f"X = '{name}'\n")
    monkeypatch.setattr(
        prov, "source_roots", lambda: [tmp_path / "coordinator", tmp_path / "fedward"]
    )
    prov.code_digest.cache_clear()
    prov.git_state.cache_clear()
    yield tmp_path
    prov.code_digest.cache_clear()
    prov.git_state.cache_clear()


def _digest() -> str:
    prov.code_digest.cache_clear()
    return prov.code_digest()


def test_the_digest_changes_with_any_source_byte_and_ignores_bytecode(tree: Path) -> None:
    # Prepare
    before = _digest()
    (tree / "fedward" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00bytecode")
    with_bytecode = _digest()
    # Execute
    (tree / "coordinator" / "a.py").write_text("X = 'coordinator'  # changed\n")
    changed = _digest()
    (tree / "coordinator" / "a.py").write_text("X = 'coordinator'\n")
    (tree / "coordinator" / "b.py").write_text("")
    added = _digest()
    # Assert
    assert with_bytecode == before
    assert len({before, changed, added}) == 3


def test_outside_a_checkout_git_fields_are_none(tree: Path) -> None:
    # Execute / Assert: tmp_path is no git checkout
    assert prov.git_state() == (None, None)


def test_a_checkout_gives_its_commit_and_whether_it_is_dirty(tree: Path) -> None:
    # Prepare: the tree as a repository with one commit
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=tree, check=True, capture_output=True, text=True)
        return done.stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    # Execute
    clean = prov.git_state()
    (tree / "fedward" / "a.py").write_text("X = 2\n")
    prov.git_state.cache_clear()
    dirty = prov.git_state()
    # Assert
    assert clean == (head, False)
    assert dirty == (head, True)


def test_the_real_namespace_roots_cover_every_top_level_folder() -> None:
    # Execute
    names = {root.name for root in prov.source_roots()}
    # Assert: the design's folders, as pyproject maps them (whatever is imported yet)
    assert {"fedward", "coordinator", "edge", "privacy", "compliance", "bench"} <= names


def test_the_cpu_is_identified_by_model_and_a_digest_of_its_flags(tmp_path: Path) -> None:
    # Prepare
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2\n\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2\n"
    )
    other = tmp_path / "other"
    other.write_text("model name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx512f\n")

    # Execute
    cpu = prov.cpu_identity(info)

    # Assert: same model, different flags -> a different digest; no file -> no digest
    assert cpu["model"] == "Test CPU 9000"
    assert cpu["flags_digest"] is not None and len(cpu["flags_digest"]) == 16
    assert prov.cpu_identity(other)["flags_digest"] != cpu["flags_digest"]
    assert prov.cpu_identity(tmp_path / "missing")["flags_digest"] is None
