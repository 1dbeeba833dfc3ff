"""The rendered release, run here without Kubernetes: chart PKI, chart broker, chart coordinator.

What a cluster would run, taken from the rendered manifests and started as
local processes: Mosquitto with the chart's ConfigMap and the certificates
the chart generated (``broker.tls.extraDnsNames: [localhost]`` so the name
checks pass here), and ``fedward coordinator serve`` with the Deployment's
arguments and environment (only host names, ports and paths moved to this
machine). Then the ``helm test`` check runs against both, and the
coordinator is stopped with SIGTERM the way the kubelet stops it: it must
exit cleanly, having signed its audit log, well inside
``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.helm.helm_chart_helpers import CHART, render_raw

VALUES = {"database": {"mode": "sqlite"}, "broker": {"tls": {"extraDnsNames": ["localhost"]}}}
START_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _docs() -> list[dict]:
    docs = []
    for path, text in render_raw(VALUES).items():
        if not path.endswith("NOTES.txt"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def _named(docs: list[dict], kind: str, suffix: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix))


def _write_secret(doc: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in doc["data"].items():
        (folder / key).write_bytes(base64.b64decode(value))
        (folder / key).chmod(0o600)


def _check_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_release", CHART / "files/tests/check_release.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _post(url: str, token: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def _device_connack(tmp_path: Path, port: int, *, ca_dir: Path, device_id: str) -> int | None:
    """Onboard a device as docs/deployment.md says (`fedward pki device` with the CA in
    ``ca_dir``; a fresh CA there if it has none) and connect it: the CONNACK code, or
    None if the broker refused it before that."""
    from typer.testing import CliRunner

    from fedward.cli import app

    runner = CliRunner()
    if not (ca_dir / "ca.key").exists():
        assert runner.invoke(app, ["pki", "init", "--dir", str(ca_dir)]).exit_code == 0
    result = runner.invoke(app, ["pki", "device", "--dir", str(ca_dir), "--device-id", device_id])
    assert result.exit_code == 0, result.output
    cert = next(ca_dir.rglob(f"{device_id}.crt"))
    context = ssl.create_default_context(cafile=str(tmp_path / "broker" / "tls" / "ca.crt"))
    context.load_cert_chain(str(cert), str(cert.with_suffix(".key")))
    check = _check_module()
    try:
        with socket.create_connection(("localhost", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(check._connect_packet(device_id))
                return check._read_connack(conn)
    except (ssl.SSLError, ConnectionError):
        return None


def test_rendered_release_serves_passes_helm_test_and_stops_gracefully(tmp_path: Path) -> None:
    # Prepare: the broker from its ConfigMap and the generated server certificate
    mosquitto = shutil.which("mosquitto")
    if mosquitto is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed")
    docs = _docs()
    broker_port, api_port = _free_port(), _free_port()
    _write_secret(_named(docs, "Secret", "-broker-tls"), tmp_path / "broker" / "tls")
    _write_secret(_named(docs, "Secret", "-coordinator-mqtt"), tmp_path / "coordinator-mqtt")
    _write_secret(_named(docs, "Secret", "-operator-token"), tmp_path / "operator")
    _write_secret(_named(docs, "Secret", "-study-ca"), tmp_path / "study-ca")
    config = _named(docs, "ConfigMap", "-broker")["data"]
    (tmp_path / "broker" / "config").mkdir(parents=True)
    (tmp_path / "broker" / "data").mkdir()
    conf = config["mosquitto.conf"].replace("/mosquitto/", f"{tmp_path}/broker/")
    conf = conf.replace("listener 8883", f"listener {broker_port}")
    if os.geteuid() == 0:
        conf += (
            "\nuser root\n"  # as root Mosquitto would switch to its own user, which cannot read tmp
        )
    (tmp_path / "broker" / "config" / "mosquitto.conf").write_text(conf)
    (tmp_path / "broker" / "config" / "acl").write_text(config["acl"])

    # Prepare: the coordinator with the Deployment's arguments and environment
    deployment = _named(docs, "Deployment", "-coordinator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    grace_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    moved = {
        "/var/run/secrets/fedward/mqtt/": f"{tmp_path}/coordinator-mqtt/",
        "/var/run/secrets/fedward/operator/token": f"{tmp_path}/operator/operator-token",
        "/var/lib/fedward": f"{tmp_path}/data",
    }

    def here(value: str) -> str:
        for cluster, local in moved.items():
            value = value.replace(cluster, local)
        return value

    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDWARD_")}
    env.update({e["name"]: here(e["value"]) for e in container["env"]})
    env.update(
        FEDWARD_MQTT__HOST="localhost",
        FEDWARD_MQTT__PORT=str(broker_port),
        FEDWARD_API_HOST="127.0.0.1",
        FEDWARD_API_PORT=str(api_port),
    )
    args = [here(a) for a in container["args"]]
    api = f"http://127.0.0.1:{api_port}"
    check = _check_module()

    broker = subprocess.Popen(
        [mosquitto, "-c", str(tmp_path / "broker" / "config" / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    coordinator = None
    log = tmp_path / "coordinator.log"
    try:
        with log.open("wb") as out:
            coordinator = subprocess.Popen(
                [str(Path(sys.executable).parent / "fedward"), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        # Execute: wait until ready (database migrated, bridge connected over mutual TLS)
        deadline = time.monotonic() + START_TIMEOUT_S
        ready = False
        while time.monotonic() < deadline and coordinator.poll() is None:
            try:
                with urllib.request.urlopen(api + "/readyz", timeout=2) as response:
                    ready = response.status == 200
            except OSError:
                pass
            if ready:
                break
            time.sleep(0.5)
        assert ready, log.read_text()
        failures = check.check_http(api)
        token = (tmp_path / "operator" / "operator-token").read_text()
        issued = _post(api + "/v1/tokens", token, {"role": "researcher", "name": "alice"})
        device_code = _device_connack(
            tmp_path, broker_port, ca_dir=tmp_path / "study-ca", device_id="dev-0001"
        )
        stranger_code = _device_connack(
            tmp_path, broker_port, ca_dir=tmp_path / "other-ca", device_id="dev-0002"
        )
        failures += check.check_broker_refuses_anonymous(
            "localhost", broker_port, str(tmp_path / "broker/tls/ca.crt")
        )
        failures += check.check_broker_refuses_plaintext("localhost", broker_port)

        stopped_at = time.monotonic()
        coordinator.send_signal(signal.SIGTERM)
        code = coordinator.wait(timeout=grace_s)
        stop_s = time.monotonic() - stopped_at
    finally:
        for proc in (coordinator, broker):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    output = log.read_text()
    print(
        f"coordinator stopped {stop_s:.2f} s after SIGTERM (grace period {grace_s} s)"
    )  # shown with -s

    # Assert
    assert "MQTT bridge on localhost" in output, (
        output
    )  # the chart's client certificate was accepted
    assert failures == []
    assert (
        issued[0] == 201 and issued[1]["role"] == "researcher"
    )  # the chart's operator token works
    assert device_code == 0  # a device certificate `fedward pki device` signed with the chart's CA
    assert stranger_code is None  # one from another CA: refused at the handshake
    assert code == 0, output
    assert "audit log signed and closed" in output, output
    assert stop_s < grace_s / 3, f"stopping took {stop_s:.1f} s of a {grace_s} s grace period"
