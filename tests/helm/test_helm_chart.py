"""The fedward chart: Helm's strict lint, strict Kubernetes schemas, its own values schema.

Rendering is Helm's Go code (helm-python-sdk, offline); validation is
kubernetes-validate's bundled OpenAPI schemas in strict mode (unknown fields
are errors) for Kubernetes 1.29, the chart's floor, and the newest bundled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.helm.helm_chart_helpers import (
    CHART,
    SCENARIOS,
    manifests,
    named,
    pod_specs,
    render_raw,
    rendered_text,
)

KUBE_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
_VALIDATED: dict[tuple[str, str], str | None] = {}


def _k8s_error(doc: dict[str, Any], version: str) -> str | None:
    """The strict validation error of ``doc``, or None; each distinct object is validated once
    per version (most objects are the same in several scenarios)."""
    key = (json.dumps(doc, sort_keys=True), version)
    if key not in _VALIDATED:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            _VALIDATED[key] = None
        except kubernetes_validate.ValidationError as exc:
            _VALIDATED[key] = str(exc.message)
    return _VALIDATED[key]


@pytest.mark.parametrize("kube", [f"v{v}" for v in KUBE_VERSIONS])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_strict_lint_passes(scenario: str, kube: str) -> None:
    # Execute: Helm's lint also flags APIs deprecated or removed in that Kubernetes
    report = helm_python.lint(CHART, SCENARIOS[scenario], strict=True, kube_version=kube)

    # Assert: no error and no warning (severity 2+); an INFO (no icon) is allowed
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_manifest_validates_strictly(scenario: str, version: str) -> None:
    # Prepare
    docs = manifests(scenario)

    # Execute
    failures = [
        f"{d['kind']}/{d['metadata']['name']}: {err}"
        for d in docs
        if (err := _k8s_error(d, version))
    ]

    # Assert
    assert len(docs) >= 10
    assert failures == []


def test_the_issue_combinations_are_all_there() -> None:
    # Assert: the defaults and at least the four combinations the issue names
    assert {
        "default",
        "external-broker",
        "external-database",
        "gateways",
        "tls-existing-secret",
    } <= set(SCENARIOS)


def test_the_scenarios_render_what_they_toggle() -> None:
    # Execute
    kinds = {s: {(d["kind"], d["metadata"]["name"]) for d in manifests(s)} for s in SCENARIOS}

    # Assert: each toggle adds or removes what it names
    default = kinds["default"]
    assert ("StatefulSet", "fw-fedward-postgresql") in default
    assert ("Deployment", "fw-fedward-broker") in default
    assert ("Job", "fw-fedward-migrate") in default
    assert ("Deployment", "fw-fedward-broker") not in kinds["external-broker"]
    assert ("StatefulSet", "fw-fedward-postgresql") not in kinds["external-database"]
    assert ("Job", "fw-fedward-migrate") in kinds["external-database"]
    assert ("Job", "fw-fedward-migrate") not in kinds["sqlite"]
    assert {
        ("Deployment", "fw-fedward-gw-ward3-gw01"),
        ("Deployment", "fw-fedward-gw-ward4-gw02"),
    } <= (kinds["gateways"])
    assert ("Secret", "fw-fedward-broker-tls") not in kinds["tls-existing-secret"]
    assert ("Secret", "fw-fedward-operator-token") not in kinds["tls-existing-secret"]


# --- the values schema -------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"replicas": 3},  # unknown top-level key
        {"coordinator": {"replicas": 2}},  # unknown nested key
        {"coordinator": {"persistence": {"sizee": "1Gi"}}},  # a typo
        {"coordinator": {"operatorToken": {"value": "a-plain-token-in-values"}}},
        {"postgresql": {"auth": {"password": "plain"}}},
        {"broker": {"mode": "embedded"}},  # not one of the toggles
        {"database": {"mode": "mysql"}},
        {"coordinator": {"terminationGracePeriodSeconds": 5}},  # no time for the final tree head
        {"broker": {"mode": "external"}},  # no host, no client certificate
        {"database": {"mode": "external"}},  # no Secret with the URL
        {"gateways": {"enabled": True, "study": "s1"}},  # no device
        {
            "gateways": {
                "enabled": True,
                "study": "s1",
                "devices": [{"id": "Bad_Id", "credentialsSecret": "c", "dataClaim": "d"}],
            }
        },
        {"broker": {"tls": {"mode": "existingSecret"}}},  # which Secret?
        {"networkPolicy": {"deviceCidrs": ["everyone"]}},
    ],
)
def test_schema_refuses_bad_values(values: dict[str, Any]) -> None:
    # Execute / Assert
    with pytest.raises(helm_python.HelmValuesError):
        render_raw(values)


def _walk_schema(node: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    open_maps = []
    if node.get("type") == "object" and "properties" in node:
        if node.get("additionalProperties") is not False:
            open_maps.append(path)
        for key, sub in node["properties"].items():
            open_maps += _walk_schema(sub, defs, f"{path}.{key}")
    if "items" in node:
        open_maps += _walk_schema(node["items"], defs, f"{path}[]")
    return open_maps


def _values_paths(value: Any, schema: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    """Paths of values.yaml that the schema does not describe."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    missing = []
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in value.items():
            if key not in schema["properties"]:
                missing.append(f"{path}.{key}")
            else:
                missing += _values_paths(sub, schema["properties"][key], defs, f"{path}.{key}")
    return missing


def test_schema_describes_every_value_and_closes_every_object() -> None:
    # Prepare
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    # Execute
    undescribed = _values_paths(values, schema, schema["definitions"], "")
    open_objects = _walk_schema(schema, schema["definitions"], "")

    # Assert: free-form maps (labels, annotations, affinity) have no "properties"
    assert undescribed == []
    assert open_objects == []


# --- yamllint ----------------------------------------------------------------

YAMLLINT_CONFIG = """
extends: default
rules:
  line-length: {max: 160, allow-non-breakable-inline-mappings: true}
  document-start: disable
  comments: {min-spaces-from-content: 1}
  indentation: {spaces: 2, indent-sequences: consistent}
"""


def test_yamllint_on_chart_files_and_rendered_manifests(tmp_path: Path) -> None:
    # Prepare: the chart's plain YAML files, and every scenario's rendered templates
    # (templates themselves are Go templates, not YAML, until rendered)
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml"))]
    for scenario in SCENARIOS:
        for path, text in rendered_text(scenario).items():
            if path.endswith(".yaml") and text.strip():
                out = tmp_path / scenario / Path(path).name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(text)
                files.append(out)

    # Execute
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-d", YAMLLINT_CONFIG, *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )

    # Assert
    assert result.returncode == 0, result.stdout + result.stderr


# --- helm test and NOTES ------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default", "external-broker", "tls-existing-secret"])
def test_helm_test_pod_checks_health_and_anonymous_refusal_with_the_ca_only(scenario: str) -> None:
    # Prepare
    docs = manifests(scenario)
    pod = named(docs, "Pod", "-test")
    script = named(docs, "ConfigMap", "-test")

    # Execute
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    ca_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "ca")

    # Assert
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert script["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert (
        script["data"]["check_release.py"] == (CHART / "files/tests/check_release.py").read_text()
    )
    assert env["CHECK_API_URL"] == "http://fw-fedward-coordinator.clinical.svc:8080"
    assert ca_volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # never a key
    expected_host = (
        "mqtt.hospital.example"
        if scenario == "external-broker"
        else "fw-fedward-broker.clinical.svc"
    )
    assert env["CHECK_BROKER_HOST"] == expected_host


def test_notes_name_the_token_secret_and_the_test() -> None:
    # Execute
    notes = rendered_text("default")["fedward/templates/NOTES.txt"]

    # Assert
    assert "helm test fw -n clinical" in notes
    assert "get secret fw-fedward-operator-token" in notes
    assert "deviceCidrs is empty" in notes


def test_pod_specs_cover_every_workload() -> None:
    # Execute
    names = {name for name, _ in pod_specs(manifests("gateways"))}

    # Assert
    assert names == {
        "fw-fedward-coordinator",
        "fw-fedward-broker",
        "fw-fedward-postgresql",
        "fw-fedward-migrate",
        "fw-fedward-gw-ward3-gw01",
        "fw-fedward-gw-ward4-gw02",
        "fw-fedward-test",
    }


def test_committed_schema_is_the_generated_one() -> None:
    # Prepare
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "values_schema", CHART.parent / "values_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    # Execute
    generated = module.render()

    # Assert: edit helm/values_schema.py, then run it
    assert (CHART / "values.schema.json").read_text() == generated


def test_helm_runs_from_the_installed_wheel() -> None:
    # Execute: the Go code is a shared library inside the wheel, loaded by ctypes
    library = Path(helm_python.library_path)

    # Assert: nothing was fetched at first use; Helm 4 is what renders
    assert library.is_file() and Path(helm_python.__file__).parent in library.parents
    assert helm_python.helm_sdk_version().startswith("v4.")
