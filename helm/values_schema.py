"""Write helm/fedward/values.schema.json (run: python helm/values_schema.py).

The schema is generated so its many small objects stay consistent: every
object closes with ``additionalProperties: false`` (a typo is an install
error), shared shapes are definitions, and the cross-field rules of the
toggles (external broker -> host and client certificate, ...) sit in one
place. tests/helm checks the committed JSON equals this file's output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parent / "fedward" / "values.schema.json"


Node = dict[str, Any]


def obj(props: Node, required: list[str] | None = None, **kw: Any) -> Node:
    """A closed object: only ``props``, nothing else."""
    d: Node = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        d["required"] = required
    d.update(kw)
    return d


def s(**kw: Any) -> Node:
    return {"type": "string", **kw}


def i(**kw: Any) -> Node:
    return {"type": "integer", **kw}


def n(**kw: Any) -> Node:
    return {"type": "number", **kw}


def b(**kw: Any) -> Node:
    return {"type": "boolean", **kw}


def ref(name: str) -> Node:
    return {"$ref": f"#/definitions/{name}"}


K8S_NAME = r"^$|^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
K8S_NAME_REQ = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
QTY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
CIDR = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"

definitions = {
    "image": obj(
        {
            "registry": s(description="Registry host; global.imageRegistry wins."),
            "repository": s(minLength=1),
            "tag": {"type": ["string", "number"]},
            "digest": s(pattern=r"^$|^sha256:[0-9a-f]{64}$"),
            "pullPolicy": s(enum=["Always", "IfNotPresent", "Never"]),
        },
        ["repository", "tag", "digest", "pullPolicy"],
    ),
    "quantity": {"type": ["string", "number"], "pattern": QTY},
    "resources": obj(
        {
            "requests": obj({"cpu": ref("quantity"), "memory": ref("quantity")}),
            "limits": obj({"cpu": ref("quantity"), "memory": ref("quantity")}),
        },
        ["requests", "limits"],
    ),
    "secretName": s(pattern=K8S_NAME, description="Name of an existing Secret (empty: none)."),
    "secretKey": s(pattern=r"^[-._a-zA-Z0-9]+$"),
    "storageClass": s(),
    "size": s(pattern=QTY),
    "stringMap": {"type": "object", "additionalProperties": {"type": "string"}},
    "tolerations": {
        "type": "array",
        "items": obj(
            {
                "key": s(),
                "operator": s(enum=["Exists", "Equal"]),
                "value": s(),
                "effect": s(enum=["", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
                "tolerationSeconds": i(),
            }
        ),
    },
    "affinity": {
        "type": "object",
        "description": "A Kubernetes Affinity (validated by the API server).",
    },
    "serviceType": s(enum=["ClusterIP", "NodePort", "LoadBalancer"]),
    "probe": obj(
        {
            "initialDelaySeconds": i(minimum=0),
            "periodSeconds": i(minimum=1),
            "timeoutSeconds": i(minimum=1),
            "failureThreshold": i(minimum=1),
        },
        ["initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold"],
    ),
    "cidrs": {"type": "array", "items": s(pattern=CIDR)},
    "port": i(minimum=1, maximum=65535),
}

schema = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "fedward chart values",
    "description": "Every value of the chart; unknown keys are refused. Secrets are Secret references, never values.",
    "definitions": definitions,
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "global": obj(
            {
                "imageRegistry": s(description="Mirror for every image (air-gapped installs)."),
                "imagePullSecrets": {"type": "array", "items": s(pattern=K8S_NAME_REQ)},
            },
            ["imageRegistry", "imagePullSecrets"],
        ),
        "coordinator": obj(
            {
                "image": ref("image"),
                "apiPort": ref("port"),
                "logLevel": s(enum=["critical", "error", "warning", "info", "debug", "trace"]),
                "settings": obj(
                    {
                        "maxMessageBytes": i(minimum=1024, maximum=4294967295),
                        "maxBodyBytes": i(minimum=1024, maximum=16777216),
                        "maxModelBytes": i(minimum=1024, maximum=4294967295),
                        "authMaxFailures": i(minimum=1, maximum=10000),
                        "authIntervalS": n(exclusiveMinimum=0, maximum=86400),
                        "authLockoutS": n(exclusiveMinimum=0, maximum=86400),
                        "auditSignIntervalS": n(minimum=0, maximum=86400),
                    },
                    [
                        "maxMessageBytes",
                        "maxBodyBytes",
                        "maxModelBytes",
                        "authMaxFailures",
                        "authIntervalS",
                        "authLockoutS",
                        "auditSignIntervalS",
                    ],
                ),
                "operatorToken": obj(
                    {"existingSecret": ref("secretName"), "key": ref("secretKey")},
                    ["existingSecret", "key"],
                ),
                "auditKeyPassword": obj(
                    {"existingSecret": ref("secretName"), "key": ref("secretKey")},
                    ["existingSecret", "key"],
                ),
                "keys": obj({"existingSecret": ref("secretName")}, ["existingSecret"]),
                "mqttCredentials": obj(
                    {
                        "existingSecret": ref("secretName"),
                        "identity": s(pattern=r"^[A-Za-z0-9_.-]{1,64}$"),
                    },
                    ["existingSecret", "identity"],
                ),
                "persistence": obj(
                    {
                        "size": ref("size"),
                        "storageClass": ref("storageClass"),
                        "existingClaim": ref("secretName"),
                    },
                    ["size"],
                ),
                "resources": ref("resources"),
                "terminationGracePeriodSeconds": i(
                    minimum=30,
                    description="Time for the bridges to stop and the final signed tree head.",
                ),
                "probes": obj(
                    {"liveness": ref("probe"), "readiness": ref("probe")}, ["liveness", "readiness"]
                ),
                "service": obj(
                    {"type": ref("serviceType"), "annotations": ref("stringMap")}, ["type"]
                ),
                "podAnnotations": ref("stringMap"),
                "nodeSelector": ref("stringMap"),
                "tolerations": ref("tolerations"),
                "affinity": ref("affinity"),
            },
            [
                "image",
                "apiPort",
                "settings",
                "operatorToken",
                "mqttCredentials",
                "persistence",
                "terminationGracePeriodSeconds",
            ],
        ),
        "broker": obj(
            {
                "mode": s(enum=["bundled", "external"]),
                "image": ref("image"),
                "port": ref("port"),
                "tls": obj(
                    {
                        "mode": s(enum=["generate", "existingSecret"]),
                        "existingSecret": ref("secretName"),
                        "extraDnsNames": {
                            "type": "array",
                            "items": s(pattern=r"^[A-Za-z0-9*]([-A-Za-z0-9.]*[A-Za-z0-9])?$"),
                        },
                        "validityDays": i(minimum=1, maximum=3650),
                    },
                    ["mode", "existingSecret"],
                ),
                "persistence": obj(
                    {"size": ref("size"), "storageClass": ref("storageClass")}, ["size"]
                ),
                "service": obj(
                    {"type": ref("serviceType"), "annotations": ref("stringMap")}, ["type"]
                ),
                "resources": ref("resources"),
                "nodeSelector": ref("stringMap"),
                "tolerations": ref("tolerations"),
                "affinity": ref("affinity"),
            },
            ["mode", "tls"],
        ),
        "externalBroker": obj(
            {"host": s(), "port": ref("port"), "cidrs": ref("cidrs")}, ["host", "port", "cidrs"]
        ),
        "database": obj({"mode": s(enum=["bundled", "external", "sqlite"])}, ["mode"]),
        "postgresql": obj(
            {
                "image": ref("image"),
                "auth": obj(
                    {
                        "database": s(pattern=r"^[a-z_][a-z0-9_]{0,62}$"),
                        "username": s(pattern=r"^[a-z_][a-z0-9_]{0,62}$"),
                        "existingSecret": ref("secretName"),
                        "passwordKey": ref("secretKey"),
                    },
                    ["database", "username", "existingSecret", "passwordKey"],
                ),
                "persistence": obj(
                    {"size": ref("size"), "storageClass": ref("storageClass")}, ["size"]
                ),
                "resources": ref("resources"),
                "nodeSelector": ref("stringMap"),
                "tolerations": ref("tolerations"),
                "affinity": ref("affinity"),
            }
        ),
        "externalDatabase": obj(
            {
                "existingSecret": ref("secretName"),
                "urlKey": ref("secretKey"),
                "port": ref("port"),
                "cidrs": ref("cidrs"),
            },
            ["existingSecret", "urlKey", "port", "cidrs"],
        ),
        "migrations": obj(
            {
                "enabled": b(),
                "backoffLimit": i(minimum=0),
                "activeDeadlineSeconds": i(minimum=30),
            },
            ["enabled"],
        ),
        "gateways": obj(
            {
                "enabled": b(),
                "image": ref("image"),
                "study": s(pattern=r"^$|^[A-Za-z0-9_.-]{1,64}$"),
                "model": obj(
                    {
                        "kind": s(enum=["cnn", "mlp"]),
                        "inChannels": i(minimum=1),
                        "window": i(minimum=1),
                        "numClasses": i(minimum=2),
                        "width": i(minimum=1),
                    },
                    ["kind", "inChannels", "window", "numClasses", "width"],
                ),
                "memoryBytes": i(minimum=1),
                "dpEpsilon": n(minimum=0, description="The device's own budget; 0: no DP tasks."),
                "dpDelta": n(exclusiveMinimum=0, exclusiveMaximum=1),
                "devices": {
                    "type": "array",
                    "items": obj(
                        {
                            "id": s(
                                pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$",
                                description="Device id (also a Kubernetes name part).",
                            ),
                            "credentialsSecret": s(pattern=K8S_NAME_REQ),
                            "dataClaim": s(pattern=K8S_NAME_REQ),
                        },
                        ["id", "credentialsSecret", "dataClaim"],
                    ),
                },
                "nodeSelector": ref("stringMap"),
                "tolerations": ref("tolerations"),
                "stateSize": ref("size"),
                "storageClass": ref("storageClass"),
                "resources": ref("resources"),
            },
            ["enabled"],
        ),
        "networkPolicy": obj(
            {
                "enabled": b(),
                "operatorPodLabels": {**ref("stringMap"), "minProperties": 1},
                "operatorNamespaceLabels": ref("stringMap"),
                "operatorCidrs": ref("cidrs"),
                "deviceCidrs": ref("cidrs"),
                "dnsNamespace": s(pattern=K8S_NAME_REQ),
            },
            ["enabled", "operatorPodLabels", "dnsNamespace"],
        ),
        "tests": obj({"enabled": b()}, ["enabled"]),
    },
    "required": ["global", "coordinator", "broker", "database", "networkPolicy"],
}
# Cross-field rules: the toggle names its own required references.
schema["allOf"] = [
    {
        "if": {"properties": {"broker": {"properties": {"mode": {"const": "external"}}}}},
        "then": {
            "properties": {
                "externalBroker": {"properties": {"host": {"minLength": 1}}},
                "coordinator": {
                    "properties": {
                        "mqttCredentials": {"properties": {"existingSecret": {"minLength": 1}}}
                    }
                },
            }
        },
    },
    {
        "if": {
            "properties": {
                "broker": {
                    "properties": {"tls": {"properties": {"mode": {"const": "existingSecret"}}}}
                }
            }
        },
        "then": {
            "properties": {
                "broker": {
                    "properties": {"tls": {"properties": {"existingSecret": {"minLength": 1}}}}
                },
                "coordinator": {
                    "properties": {
                        "mqttCredentials": {"properties": {"existingSecret": {"minLength": 1}}}
                    }
                },
            }
        },
    },
    {
        "if": {"properties": {"database": {"properties": {"mode": {"const": "external"}}}}},
        "then": {
            "properties": {"externalDatabase": {"properties": {"existingSecret": {"minLength": 1}}}}
        },
    },
    {
        "if": {"properties": {"gateways": {"properties": {"enabled": {"const": True}}}}},
        "then": {
            "properties": {
                "gateways": {"properties": {"study": {"minLength": 1}, "devices": {"minItems": 1}}}
            }
        },
    },
]


def render() -> str:
    return json.dumps(schema, indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render())
    sys.stdout.write(f"wrote {SCHEMA_PATH}\n")
