"""Where a benchmark figure came from: the code that produced it, and the machine.

Why: in session 8 a README table could not be reproduced at HEAD. It had been
measured at an intermediate commit that summed the buffer's mean in float64.
Nothing in its JSON said so. Every report now carries:

- ``code_digest``: a SHA-256 over every ``.py`` file of the fedward source
  trees (path and bytes, in sorted order). It identifies the code even outside
  a git checkout, as for a wheel or a copied tree;
- ``git_commit`` and ``git_dirty``: from ``git``, when the sources are a
  checkout and git is installed (None otherwise);
- the installed versions of Python, torch, numpy and Opacus, and the machine
  and torch thread count.

Two reports with the same ``code_digest`` ran the same code. The machine
fields say where the wall times come from; a seed's figures do not depend on
them (``tests/simulation/test_executor_determinism_empty_cache.py``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import fedward

GIT_TIMEOUT_S = 5.0


# the top-level folders mapped into the namespace (pyproject [tool.fedward.package-dir])
SUBPACKAGES = ("bench", "compliance", "coordinator", "edge", "privacy")


def source_roots() -> list[Path]:
    """The folders the ``fedward`` namespace is loaded from, whatever is imported yet."""
    roots = {Path(p).resolve() for p in getattr(fedward, "__path__", [])}
    for name in SUBPACKAGES:
        spec = importlib.util.find_spec(f"fedward.{name}")
        for p in (spec.submodule_search_locations or []) if spec is not None else []:
            roots.add(Path(p).resolve())
    return sorted(roots)


@lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 over (relative path, bytes) of every ``.py`` file under the source roots."""
    digest = hashlib.sha256()
    for root in source_roots():
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding the sources; (None, None) if none is found."""
    roots = source_roots()
    if not roots:
        return None, None
    top = _git(["rev-parse", "--show-toplevel"], roots[0])
    if top is None:
        return None, None
    commit = _git(["rev-parse", "HEAD"], Path(top))
    status = _git(["status", "--porcelain", "--untracked-files=no"], Path(top))
    return commit, None if status is None else bool(status)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str | None]:
    """The CPU's model name and a digest of its feature flags (None where unknown).

    Why: a seed's figures are the same run after run on one machine but not bitwise
    across CPUs (the warm start scored 0.7320 on one machine, 0.7435 on another, at
    the same code), so a report says which CPU it came from."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return {"model": platform.processor() or None, "flags_digest": None}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "flags", "Features") and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = fields.get("flags") or fields.get("Features")
    return {
        "model": fields.get("model name") or platform.processor() or None,
        "flags_digest": hashlib.sha256(flags.encode()).hexdigest()[:16] if flags else None,
    }


def provenance() -> dict[str, Any]:
    """The code and machine a report was produced with (JSON-able).

    Versions come from the installed distributions, so nothing is imported for them;
    the thread count is torch's if torch is loaded (torch stays in model and
    training code, ``tests/test_layering.py``)."""
    commit, dirty = git_state()
    torch = sys.modules.get("torch")
    return {
        "code_digest": code_digest(),
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "opacus": _version("opacus"),
        "machine": platform.machine(),
        "cpu": cpu_identity(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
    }


__all__ = ["code_digest", "cpu_identity", "git_state", "provenance", "source_roots"]
