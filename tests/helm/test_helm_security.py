"""Secure defaults in the rendered chart: hardened pods, no plain secrets, least-flow networking.

The NetworkPolicy tests evaluate the rendered policies the way Kubernetes
does (a flow passes only if the source's egress AND the destination's
ingress allow it, policies being additive) over the release's own pods and
two outsiders, and compare the allowed flows with the list the system needs.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fedward.coordinator.api.routes.probes import router as probe_router
from tests.helm.helm_chart_helpers import (
    SCENARIOS,
    by_kind,
    manifests,
    named,
    pod_specs,
)

SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|PRIVATE|_KEY$", re.IGNORECASE)


# --- pods ---------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_pod_and_container_is_hardened(scenario: str) -> None:
    # Prepare
    specs = pod_specs(manifests(scenario))

    # Execute / Assert
    assert specs
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] > 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert "hostNetwork" not in spec and "hostPID" not in spec, name
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name
        for container in spec.get("initContainers", []) + spec["containers"]:
            ctx = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["privileged"] is False, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert "limits" in container["resources"] and "requests" in container["resources"], (
                where
            )


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_secret_is_a_plain_value(scenario: str) -> None:
    # Prepare
    docs = manifests(scenario)

    # Execute
    plain = []
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]) and "value" in env:
                    plain.append(f"{name}: {env['name']}")
                # a URL carrying a password (scheme://user:password@host)
                if re.search(r"://[^/@:]+:[^/@]+@", str(env.get("value", ""))):
                    plain.append(f"{name}: {env['name']} has a password in its URL")
    configmap_text = str([d.get("data") for d in by_kind(docs, "ConfigMap")])

    # Assert
    assert plain == []
    assert "PRIVATE KEY" not in configmap_text


def test_generated_credentials_are_random_and_strong() -> None:
    # Prepare: the operator token is made by the chart when no Secret is named
    from fedward.coordinator.settings import CoordinatorSettings

    token_secret = named(manifests("default"), "Secret", "-operator-token")

    # Execute
    token = base64.b64decode(token_secret["data"]["operator-token"]).decode()

    # Assert: the coordinator itself accepts it (length, not a known default, not repetitive)
    CoordinatorSettings(operator_token=token)
    assert len(token) >= 40
    assert token_secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_coordinator_probes_are_routes_the_api_serves() -> None:
    # Prepare
    deployment = named(manifests("default"), "Deployment", "-coordinator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    routes = {getattr(route, "path", None) for route in probe_router.routes}

    # Execute
    liveness = container["livenessProbe"]["httpGet"]["path"]
    readiness = container["readinessProbe"]["httpGet"]["path"]

    # Assert
    assert (liveness, readiness) == ("/healthz", "/readyz")
    assert {liveness, readiness} <= routes


def test_coordinator_keeps_its_state_on_a_kept_volume_and_stops_gracefully() -> None:
    # Prepare
    docs = manifests("default")
    deployment = named(docs, "Deployment", "-coordinator")
    spec = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    claim = named(docs, "PersistentVolumeClaim", "-coordinator")

    # Assert: the data dir (model store, audit log, keys) is the kept volume
    assert mounts["data"] == env["FEDWARD_DATA_DIR"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert (
        deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    )
    assert spec["terminationGracePeriodSeconds"] >= 60


def test_air_gapped_install_pulls_every_image_from_the_mirror() -> None:
    # Prepare
    specs = pod_specs(manifests("air-gapped"))

    # Execute
    images = [c["image"] for _, s in specs for c in s["containers"]]

    # Assert
    assert images and all(i.startswith("registry.hospital.local:5000/") for i in images)
    assert all(s["imagePullSecrets"] == [{"name": "mirror"}] for _, s in specs)


def test_a_digest_pins_the_image() -> None:
    # Prepare
    from tests.helm.helm_chart_helpers import render_raw

    digest = "sha256:" + "ab" * 32

    # Execute
    text = render_raw({"coordinator": {"image": {"digest": digest}}})[
        "fedward/templates/coordinator-deployment.yaml"
    ]

    # Assert
    assert f"image: fedward/coordinator@{digest}" in text


def test_gateway_agents_are_pinned_to_gateway_nodes() -> None:
    # Prepare
    docs = manifests("gateways")

    # Execute
    gateway = named(docs, "Deployment", "-gw-ward3-gw01")
    spec = gateway["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]

    # Assert
    assert spec["nodeSelector"] == {"fedward.io/gateway": "true"}
    assert spec["tolerations"] == [{"key": "gateway", "operator": "Exists", "effect": "NoSchedule"}]
    assert args[args.index("--class") + 1] == "gateway"
    assert args[args.index("--broker") + 1].startswith("mqtts://")
    assert gateway["spec"]["replicas"] == 1  # one agent per device identity


# --- NetworkPolicies ------------------------------------------------------------

RELEASE_COMPONENTS = ["coordinator", "broker", "database", "migrations", "gateway", "test"]
PORTS = {"coordinator": 8080, "broker": 8883, "database": 5432}


def _labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "fedward",
        "app.kubernetes.io/instance": "fw",
        "app.kubernetes.io/component": component,
    }


OPERATOR = {"fedward.io/operator": "true"}
STRANGER = {"app": "something-else"}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: dict[str, Any], labels: dict[str, str] | None, ip: str | None) -> bool:
    if "ipBlock" in peer:
        return ip is not None and ipaddress.ip_address(ip) in ipaddress.ip_network(
            peer["ipBlock"]["cidr"]
        )
    if labels is None or "namespaceSelector" in peer:
        return False  # same-namespace pods only in these tests
    return _selects(peer["podSelector"], labels)


def _rule_allows(
    rule: dict[str, Any], key: str, labels: dict[str, str] | None, ip: str | None, port: int
) -> bool:
    peers_ok = any(_peer_matches(p, labels, ip) for p in rule.get(key, []))
    ports_ok = any(p["port"] == port for p in rule.get("ports", []))
    return peers_ok and ports_ok


def _direction_allows(
    policies: list[dict[str, Any]],
    pod: dict[str, str],
    kind: str,
    other: dict[str, str] | None,
    ip: str | None,
    port: int,
) -> bool:
    key = "to" if kind == "Egress" else "from"
    selecting = [
        p
        for p in policies
        if _selects(p["spec"]["podSelector"], pod) and kind in p["spec"]["policyTypes"]
    ]
    if not selecting:
        return True  # a pod no policy isolates (never one of ours: see the default-deny test)
    rules = [r for p in selecting for r in p["spec"].get(kind.lower(), [])]
    return any(_rule_allows(r, key, other, ip, port) for r in rules)


def _allowed_flows(policies: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    pods = {c: _labels(c) for c in RELEASE_COMPONENTS}
    pods["operator"] = OPERATOR
    pods["stranger"] = STRANGER
    flows = set()
    for src, src_labels in pods.items():
        for dst, port in PORTS.items():
            dst_labels = pods[dst]
            if src == dst:
                continue
            if _direction_allows(
                policies, src_labels, "Egress", dst_labels, None, port
            ) and _direction_allows(policies, dst_labels, "Ingress", src_labels, None, port):
                flows.add((src, dst, port))
    return flows


NEEDED = {
    ("coordinator", "broker", 8883),
    ("coordinator", "database", 5432),
    ("migrations", "database", 5432),
    ("operator", "coordinator", 8080),
    ("test", "coordinator", 8080),
    ("test", "broker", 8883),
}


def test_default_deny_isolates_every_pod_of_the_release() -> None:
    # Prepare
    docs = manifests("gateways")
    deny = named(docs, "NetworkPolicy", "-default-deny")

    # Execute
    pod_labels = [s["metadata"]["labels"] for s in docs if s["kind"] == "Pod"] + [
        d["spec"]["template"]["metadata"]["labels"] for d in docs if "template" in d.get("spec", {})
    ]

    # Assert
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    assert pod_labels and all(
        _selects(deny["spec"]["podSelector"], labels) for labels in pod_labels
    )


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("default", NEEDED),
        ("gateways", NEEDED | {("gateway", "broker", 8883)}),
        # the external broker and database are reached by ipBlock (below), not in-cluster
        ("external-broker", {f for f in NEEDED if f[1] != "broker"}),
        ("external-database", {f for f in NEEDED if f[1] != "database"}),
        ("sqlite", {f for f in NEEDED if f[1] != "database"}),
    ],
)
def test_only_the_needed_flows_are_allowed(
    scenario: str, expected: set[tuple[str, str, int]]
) -> None:
    # Prepare
    policies = by_kind(manifests(scenario), "NetworkPolicy")

    # Execute
    flows = _allowed_flows(policies)

    # Assert: e.g. no broker -> database, no gateway -> coordinator, no stranger anywhere
    assert flows == expected


def test_devices_reach_the_broker_only_from_their_networks() -> None:
    # Prepare
    closed = by_kind(manifests("default"), "NetworkPolicy")
    opened = by_kind(manifests("air-gapped"), "NetworkPolicy")  # deviceCidrs 192.0.2.0/24
    broker = _labels("broker")

    # Execute
    def device_in(policies: list[dict[str, Any]], ip: str) -> bool:
        return _direction_allows(policies, broker, "Ingress", None, ip, 8883)

    # Assert
    assert not device_in(closed, "192.0.2.7")
    assert device_in(opened, "192.0.2.7")
    assert not device_in(opened, "203.0.113.9")
    assert not _direction_allows(opened, _labels("coordinator"), "Ingress", None, "192.0.2.7", 8080)
    assert _direction_allows(
        opened, _labels("coordinator"), "Ingress", None, "198.51.100.4", 8080
    )  # operators


def test_external_services_are_reached_only_on_their_port_and_networks() -> None:
    # Prepare
    broker_policies = by_kind(manifests("external-broker"), "NetworkPolicy")
    db_policies = by_kind(manifests("external-database"), "NetworkPolicy")
    coordinator = _labels("coordinator")

    # Execute / Assert
    assert _direction_allows(broker_policies, coordinator, "Egress", None, "10.20.3.4", 8883)
    assert not _direction_allows(broker_policies, coordinator, "Egress", None, "10.20.3.4", 22)
    assert not _direction_allows(broker_policies, coordinator, "Egress", None, "10.99.0.1", 8883)
    assert _direction_allows(db_policies, coordinator, "Egress", None, "10.30.0.5", 5432)
    assert not _direction_allows(db_policies, coordinator, "Egress", None, "10.30.0.6", 5432)
    assert not _direction_allows(
        db_policies, _labels("database"), "Egress", None, "10.30.0.5", 5432
    )


def test_dns_is_the_only_other_egress() -> None:
    # Prepare
    policies = by_kind(manifests("default"), "NetworkPolicy")

    # Execute
    peers = [
        (p["metadata"]["name"], peer)
        for p in policies
        for rule in p["spec"].get("egress", [])
        for peer in rule["to"]
        if "namespaceSelector" in peer
    ]

    # Assert: cross-namespace egress goes to kube-system's DNS on port 53 only
    assert peers
    for name, peer in peers:
        assert peer == {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
        }, name
    for p in policies:
        for rule in p["spec"].get("egress", []):
            if any("namespaceSelector" in peer for peer in rule["to"]):
                assert {port["port"] for port in rule["ports"]} == {53}


# --- keys imported from a Secret -----------------------------------------------


def _import_keys(script: str, secret_dir: Path, data_dir: Path) -> str:
    """Run the init container's script here, its two paths moved to ``secret_dir``/``data_dir``."""
    local = script.replace("/var/run/secrets/fedward/keys", str(secret_dir)).replace(
        "/var/lib/fedward", str(data_dir)
    )
    return subprocess.run(
        ["/bin/sh", "-c", local], capture_output=True, text=True, check=True
    ).stdout


def test_imported_keys_are_owner_only_and_never_overwrite(tmp_path: Path) -> None:
    # Prepare: a Secret volume as the kubelet makes it (group-readable files)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedward.compliance.keys import load_signing_key

    deployment = named(manifests("tls-existing-secret"), "Deployment", "-coordinator")
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    secret_dir, data_dir = tmp_path / "secret", tmp_path / "data"
    secret_dir.mkdir()
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (secret_dir / "audit-signing-key.pem").write_bytes(pem)
    (secret_dir / "audit-signing-key.pem").chmod(0o440)
    (secret_dir / "wire-signing-key.pem").write_bytes(pem)
    (data_dir / "keys").mkdir(parents=True)
    (data_dir / "keys" / "wire-signing-key.pem").write_bytes(b"the key devices already pinned")
    (data_dir / "keys" / "wire-signing-key.pem").chmod(0o600)

    # Execute
    out = _import_keys(init["command"][2], secret_dir, data_dir)
    imported = data_dir / "keys" / "audit-signing-key.pem"

    # Assert: the loader that refuses unsafe files takes the copy; the pinned key is untouched
    assert out.strip() == "imported audit-signing-key.pem"
    assert stat.S_IMODE(imported.stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "keys").stat().st_mode) == 0o700
    load_signing_key(imported)
    assert (
        data_dir / "keys" / "wire-signing-key.pem"
    ).read_bytes() == b"the key devices already pinned"
    assert (
        "initContainers"
        not in named(manifests("default"), "Deployment", "-coordinator")["spec"]["template"]["spec"]
    )


def test_volumes_keep_owner_only_key_modes_across_restarts() -> None:
    # Prepare: with fsGroupChangePolicy Always the kubelet would add group rw to
    # every file at each mount, and the key loaders would then refuse the keys
    specs = pod_specs(manifests("gateways"))

    # Execute
    policies = {name: spec["securityContext"]["fsGroupChangePolicy"] for name, spec in specs}

    # Assert
    assert set(policies.values()) == {"OnRootMismatch"}, policies
