"""Write docker/constraints.txt: the exact versions the images install.

Run it in the project's virtual environment after `bash scripts/setup.sh`
(python docker/pin_constraints.py): it walks the installed requirement tree
of fedward with its ``postgres`` extra and pins every package to the version
the test suite ran against, so an image build never resolves anything new.
torch is pinned without its local label (``2.13.0``, the CPU build comes
from the CPU wheel index the Dockerfiles are given). tests/helm checks every
runtime requirement of pyproject.toml is pinned here and satisfies it.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement

OUT = Path(__file__).resolve().parent / "constraints.txt"
# Needed to build the fedward wheel inside the image.
BUILD = ("setuptools", "wheel")


def closure(name: str, extras: tuple[str, ...], seen: dict[str, str]) -> None:
    key = name.lower().replace("_", "-")
    if key in seen:
        return
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return
    seen[key] = dist.version.split("+", 1)[0]
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            closure(req.name, tuple(req.extras), seen)


def main() -> None:
    seen: dict[str, str] = {}
    closure("fedward", ("postgres",), seen)
    seen.pop("fedward")
    for name in BUILD:
        closure(name, (), seen)
    lines = [
        "# Exact versions the fedward images install (python docker/pin_constraints.py).",
        *(f"{name}=={version}" for name, version in sorted(seen.items())),
    ]
    OUT.write_text("\n".join(lines) + "\n")
    sys.stdout.write(f"wrote {OUT} ({len(seen)} pins)\n")


if __name__ == "__main__":
    main()
