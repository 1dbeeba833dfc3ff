"""Link the ``fedward`` namespace into one folder tree for static tools.

Why: at run time the installed package maps ``fedward.coordinator`` to the
repository's coordinator/ folder (and so on, ``[tool.fedward.package-dir]`` in
pyproject.toml) through setuptools' import hook. import-linter and mypy read
the file system instead of importing, so they need ``fedward/coordinator/...``
to exist as a path. This builds ``build/static/fedward/`` out of symbolic
links (fedward/'s own entries plus one link per mapped folder) and prints
the folder to run them in. Rebuilt from scratch on every call: cheap, and a
new or removed file is never missed.

mypy, in particular: pointed at the repository it would see coordinator/ as a
top-level package ``coordinator``, not ``fedward.coordinator``, so an
``import fedward.coordinator...`` would not resolve and floors could not be
configured by module name (``fedward.privacy.*`` is strict). On the linked
tree every module has its one real name. Its cache (build/mypy_cache, kept
across rebuilds) cannot hide an error: entries are keyed by module name and
path and checked against each file's mtime and hash, which a link reports
from its target; a moved file is a new module there.

Errors name the linked path (``fedward/coordinator/...``); ``--sed`` prints
a sed script mapping those back to the repository's folders (scripts/test.sh
pipes mypy through it), and :func:`repo_paths` does the same in Python.

    python scripts/static_tree.py        # -> build/static
    python scripts/static_tree.py --sed  # s#^fedward/coordinator/#coordinator/#;...
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mapped_folders() -> dict[str, str]:
    """``[tool.fedward.package-dir]``: import name -> repository folder."""
    table: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["fedward"][
        "package-dir"
    ]
    return table


def _path_prefixes() -> list[tuple[str, str]]:
    """(linked path prefix, repository path prefix), e.g. fedward/edge/ -> edge/."""
    return [
        (name.replace(".", "/") + "/", folder.rstrip("/") + "/")
        for name, folder in mapped_folders().items()
    ]


def repo_paths(text: str) -> str:
    """``text`` (a tool's report from the linked tree) with each line's path the repository's."""
    lines = text.splitlines(keepends=True)
    for linked, real in _path_prefixes():
        lines = [real + line[len(linked) :] if line.startswith(linked) else line for line in lines]
    return "".join(lines)


def sed_script() -> str:
    """The same mapping as :func:`repo_paths`, as a ``sed`` script."""
    return ";".join(f"s#^{linked}#{real}#" for linked, real in _path_prefixes())


def build(out: Path = ROOT / "build" / "static") -> Path:
    mapped = mapped_folders()
    if out.exists():
        shutil.rmtree(out)
    package = out / "fedward"
    package.mkdir(parents=True)
    for entry in sorted((ROOT / "fedward").iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in mapped.items():
        parent, _, leaf = name.rpartition(".")
        if parent != "fedward":
            raise SystemExit(f"{name}: only direct subpackages of fedward can be mapped")
        (package / leaf).symlink_to(ROOT / folder)
    return out


if __name__ == "__main__":
    sys.stdout.write(f"{sed_script() if sys.argv[1:] == ['--sed'] else build()}\n")
