"""The chart cannot drift from the code: what it sets is what the programs read.

* Every ``FEDWARD_*`` variable the chart gives the coordinator (and the
  migration job) is a field of ``CoordinatorSettings`` (nested fields by
  ``__``), read from the settings classes now, and the rendered environment
  builds a valid ``CoordinatorSettings``; any other variable is on a short,
  explained list.
* Every command line the chart runs parses with the real ``fedward`` CLI
  (typer's click), so a renamed or removed option fails here, not in a hospital.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel

from fedward.cli import app as cli_app
from fedward.coordinator.settings import CoordinatorSettings
from tests.helm.helm_chart_helpers import SCENARIOS, manifests, named, pod_specs

# Variables that are not fedward settings, and why the chart sets them.
NOT_SETTINGS = {
    # libpq reads the bundled database's password from the environment, so it
    # never sits in a URL in the manifest (from a Secret).
    "PGPASSWORD",
}
# What a Secret would hold, for building settings from the rendered env.
SECRET_STANDINS = {
    "FEDWARD_DATABASE_URL": "postgresql+psycopg://fedward@db.example:5432/fedward",
    "FEDWARD_AUDIT_KEY_PASSWORD": "a passphrase",
    "PGPASSWORD": "x",
}
PREFIX = "FEDWARD_"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``Model``, ``Model | None``, ``Optional[Model]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _is_setting(model: type[BaseModel], parts: list[str]) -> bool:
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    nested = _model_of(field.annotation)
    return nested is not None and _is_setting(nested, parts[1:])


def _coordinator_envs() -> list[tuple[str, str, dict[str, Any]]]:
    """(scenario, container, env entry) for every coordinator-image container."""
    found = []
    for scenario in SCENARIOS:
        for name, spec in pod_specs(manifests(scenario, include_tests=False)):
            if "-gw-" in name:
                continue  # the gateway agent is configured by options (below)
            for container in spec["containers"]:
                if (
                    container["image"].endswith(("coordinator:0.1.0",))
                    or "fedward/coordinator" in container["image"]
                ):
                    found.extend(
                        (scenario, f"{name}/{container['name']}", env)
                        for env in container.get("env", [])
                    )
    return found


def test_every_fedward_variable_is_a_coordinator_setting() -> None:
    # Prepare
    envs = _coordinator_envs()

    # Execute
    unknown = sorted(
        {
            f"{where}: {env['name']}"
            for _, where, env in envs
            if env["name"].startswith(PREFIX)
            and not _is_setting(CoordinatorSettings, env["name"][len(PREFIX) :].lower().split("__"))
        }
    )
    others = {env["name"] for _, _, env in envs if not env["name"].startswith(PREFIX)}

    # Assert
    assert len(envs) > 20
    assert unknown == []
    assert others <= NOT_SETTINGS


def test_a_nonexistent_variable_would_be_caught() -> None:
    # Assert: the check above can fail (a typo, a nested path through a non-model)
    assert not _is_setting(CoordinatorSettings, ["mqtt", "tls", "ca_fil"])
    assert not _is_setting(CoordinatorSettings, ["api_port", "x"])
    assert _is_setting(CoordinatorSettings, ["mqtt", "tls", "ca_file"])


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_rendered_environment_builds_valid_settings(
    scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a clean environment holding exactly what the pod would get
    import os

    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    deployment = named(manifests(scenario), "Deployment", "-coordinator")
    for env in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        value = env["value"] if "value" in env else SECRET_STANDINS[env["name"]]
        monkeypatch.setenv(env["name"], value)

    # Execute: the token comes from its file (--operator-token-file)
    settings = CoordinatorSettings(operator_token="Xk3-operator-token-from-file-9q")

    # Assert
    assert settings.api_host == "0.0.0.0"
    assert str(settings.data_dir) == "/var/lib/fedward"
    assert settings.mqtt.tls is not None and settings.mqtt.tls.cert_file is not None
    assert settings.mqtt.port == 8883
    if scenario == "sqlite":
        assert settings.database_url == "sqlite:////var/lib/fedward/coordinator.db"
    else:
        assert settings.database_url.startswith("postgresql+psycopg://")


def _command(*path: str) -> Any:
    """The click command (typer vendors its own click) at ``fedward <path>``."""
    command: Any = typer.main.get_command(cli_app)
    for name in path:
        command = command.commands[name]
    return command


def _parses(args: list[str], tmp_path: Path) -> None:
    """Parse ``args`` (after ``fedward``) with the real CLI; files named in them exist."""
    path_args = []
    for arg in args:
        if arg.startswith("/var/run/secrets/"):  # mounted Secrets exist in the pod
            local = tmp_path / arg.strip("/").replace("/", "_")
            local.write_text("Xk3-operator-token-from-file-9q\n")
            path_args.append(str(local))
        else:
            path_args.append(arg)
    group, name, *rest = path_args
    command = _command(group, name)
    with command.make_context(f"fedward {group} {name}", rest) as ctx:
        assert ctx.params


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_command_line_the_chart_runs_parses(scenario: str, tmp_path: Path) -> None:
    # Prepare
    commands = [
        (name, container["args"])
        for name, spec in pod_specs(manifests(scenario, include_tests=False))
        for container in spec["containers"]
        if "args" in container
    ]

    # Execute / Assert: click raises on an unknown option or a bad value
    assert commands
    for _, args in commands:
        _parses(list(args), tmp_path)


def test_gateway_options_cover_tls_and_the_model() -> None:
    # Prepare
    gateway = named(manifests("gateways"), "Deployment", "-gw-ward3-gw01")
    args = gateway["spec"]["template"]["spec"]["containers"][0]["args"]

    # Execute
    options = {a for a in args if a.startswith("--")}
    real = {opt for p in _command("edge", "run").params for opt in p.opts}

    # Assert
    assert options <= real
    assert {
        "--ca-file",
        "--cert-file",
        "--key-file",
        "--enrolment-secret-file",
        "--dp-epsilon",
    } <= options


def test_an_unknown_option_would_be_caught(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(Exception) as refused:
        _parses(["edge", "run", "--brokr", "mqtts://x:8883"], tmp_path)
    assert type(refused.value).__name__ == "NoSuchOption" and refused.value.exit_code == 2


# Settings the chart does not set, and why. A setting added to the coordinator
# fails the test below until it is either exposed by the chart or listed here.
NOT_EXPOSED = {
    "operator_token": "passed as a mounted file (--operator-token-file), never an env value",
    "audit_key_password": "set from a Secret only when coordinator.auditKeyPassword names one",
    "mqtt.protocol": "MQTT 5, the default; the chart's broker speaks it",
    "mqtt.username": "the broker takes the client certificate's CN as the user name",
    "mqtt.password": "no passwords: client certificates",
}


def test_every_coordinator_setting_is_set_by_the_chart_or_listed() -> None:
    # Prepare
    deployment = named(manifests("default"), "Deployment", "-coordinator")
    env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}

    # Execute
    missing = []
    for name, field in CoordinatorSettings.model_fields.items():
        nested = _model_of(field.annotation)
        paths = (
            [f"{name}.{sub}" for sub in nested.model_fields]
            if nested and name == "mqtt"
            else [name]
        )
        for path in paths:
            variable = PREFIX + path.upper().replace(".", "__")
            covered = variable in env or any(e.startswith(variable + "__") for e in env)
            if not covered and path not in NOT_EXPOSED:
                missing.append(path)

    # Assert
    assert missing == [], (
        f"expose these in the chart (values + env) or list them in NOT_EXPOSED: {missing}"
    )
