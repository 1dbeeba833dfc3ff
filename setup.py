"""Packages of the one import namespace, ``fedward``, and the folders they live in.

The design's top-level folders are subpackages of ``fedward`` (``fedward.coordinator``
is coordinator/, ...), listed once in pyproject.toml under
``[tool.fedward.package-dir]``; the rest of ``fedward`` is fedward/. Project
metadata and dependencies are in pyproject.toml. A wheel holds only
``fedward/``: tests/test_packaging.py builds one and fails on any other
top-level name.
"""

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
MAPPED: dict[str, str] = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["fedward"][
    "package-dir"
]

packages = find_packages(include=["fedward", "fedward.*"])
for name, folder in MAPPED.items():
    packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]

setup(packages=packages, package_dir={"fedward": "fedward", **MAPPED})
