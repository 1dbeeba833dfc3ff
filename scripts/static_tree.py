"""Link the ``fedward`` namespace into one folder tree for static tools.

Why: at run time the installed package maps ``fedward.coordinator`` to the
repository's coordinator/ folder (and so on, ``[tool.fedward.package-dir]`` in
pyproject.toml) through setuptools' import hook. import-linter and mypy read
the file system instead of importing, so they need ``fedward/coordinator/...``
to exist as a path. This builds ``build/static/fedward/`` out of symbolic
links (fedward/'s own entries plus one link per mapped folder) and prints
the folder to run them in. Rebuilt from scratch on every call: cheap, and a
new or removed file is never missed.

    python scripts/static_tree.py        # -> build/static
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path = ROOT / "build" / "static") -> Path:
    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["fedward"]["package-dir"]
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
    sys.stdout.write(f"{build()}\n")
