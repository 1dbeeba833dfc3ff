"""Every third-party module our code imports is installed by ``pip install fedward``
(or by the extra that names it): a module that only the ``dev`` extra happens to
pull in works in every test run and fails for a user.

Found by mypy (``Library stubs not installed for "yaml"``): PyYAML, which
``Scenario.from_file`` imports for ``.yaml`` scenarios, reached the test
environment only through schemathesis.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _installed_by_pip_install() -> set[str]:
    """What ``pip install fedward`` brings (transitively), plus each extra's own
    packages (``fedward[embedded]`` is how amqtt gets there; what amqtt pulls in
    is not ours to rely on). Never the dev extra."""
    project = PYPROJECT["project"]
    extras = {
        _name(r)
        for extra, reqs in project["optional-dependencies"].items()
        if extra != "dev"
        for r in reqs
    }
    seen: set[str] = set()
    stack = [_name(r) for r in project["dependencies"]]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        stack += [_name(r) for r in reqs if "extra ==" not in r]
    return seen | extras


def _imported_roots() -> dict[str, set[str]]:
    """Top-level module -> files of ours importing it (not stdlib, not fedward)."""
    folders = ["fedward", *PYPROJECT["tool"]["fedward"]["package-dir"].values()]
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    root = module.split(".")[0]
                    if root != "fedward" and root not in sys.stdlib_module_names:
                        found.setdefault(root, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_library_is_a_dependency() -> None:
    installed = _installed_by_pip_install()
    providers = packages_distributions()
    undeclared = {
        module: sorted(files)
        for module, files in _imported_roots().items()
        if not {_name(d) for d in providers.get(module, [module])} & installed
    }
    assert not undeclared, f"imported but not installed by pip install fedward: {undeclared}"
