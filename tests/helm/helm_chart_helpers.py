"""Render the fedward chart with Helm's own Go code (helm-python-sdk), offline.

One render per scenario per test session (``rendered``): Helm's template
engine runs in-process through a bundled shared library, no helm binary and
no network. A scenario is a values overlay on values.yaml: the defaults and
the files in helm/fedward/ci/ (external broker, external database, gateways,
TLS from existing Secrets, SQLite, an air-gapped mirror).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fedward"
RELEASE = "fw"
NAMESPACE = "clinical"

# The default values and each combination in helm/fedward/ci/ (<name>-values.yaml,
# the chart-testing convention, so `helm template -f` renders the same ones).
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    **{
        path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text())
        for path in sorted((CHART / "ci").glob("*-values.yaml"))
    },
}


@functools.cache
def chart() -> Any:
    import helm_python

    return helm_python.Chart.load(CHART)


def render_raw(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text (raises Helm's error on bad values)."""
    return dict(chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))


@functools.cache
def _rendered(scenario: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(render_raw(SCENARIOS[scenario]).items()))


def rendered_text(scenario: str) -> dict[str, str]:
    return dict(_rendered(scenario))


def manifests(scenario: str, *, include_tests: bool = True) -> list[dict[str, Any]]:
    """Every Kubernetes object the scenario renders (NOTES.txt excluded)."""
    docs: list[dict[str, Any]] = []
    for path, text in _rendered(scenario):
        if path.endswith("NOTES.txt") or (not include_tests and "/tests/" in path):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    if len(found) != 1:
        raise LookupError(f"{len(found)} {kind} named *{suffix}")
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload and bare pod."""
    specs = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            specs.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            specs.append((d["metadata"]["name"], d["spec"]))
    return specs


def component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])
