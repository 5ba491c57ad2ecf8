"""Small JSON schemas of the Kubernetes resources in deploy/k8s, one per kind.

Why hand-written and small rather than the full OpenAPI schemas: those (and KubeRay's CRDs) are
not available offline, and what matters here is the house rules on top of validity: every
container pinned to a tag, sized (requests and limits), non-root, without privilege escalation,
configured from the ConfigMap/Secrets; every pod non-root with a fixed uid. Unknown fields are
allowed: the schemas say what must be there, not everything that may be.
"""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]

Schema = dict[str, Any]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = {"type": "string", "minLength": 1}
PINNED_IMAGE = r"^[^:@\s]+(:[A-Za-z0-9_][A-Za-z0-9_.-]*)$"

METADATA: Schema = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63}},
}


def resource(api_version: str, kind: str, spec: Schema | None = None) -> Schema:
    """A top-level object of ``kind``; ``spec`` (when given) is required."""
    schema: Schema = {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
        },
    }
    if spec is not None:
        schema["required"].append("spec")
        schema["properties"]["spec"] = spec
    return schema


SIZED: Schema = {
    "type": "object",
    "required": ["cpu", "memory"],
    "properties": {"cpu": QUANTITY, "memory": QUANTITY},
}

CONTAINER_SECURITY: Schema = {
    "type": "object",
    "required": ["runAsNonRoot", "allowPrivilegeEscalation", "capabilities"],
    "properties": {
        "runAsNonRoot": {"const": True},
        "allowPrivilegeEscalation": {"const": False},
        "capabilities": {
            "type": "object",
            "required": ["drop"],
            "properties": {"drop": {"type": "array", "contains": {"const": "ALL"}}},
        },
    },
}

ENV_FROM: Schema = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "minProperties": 1,
        "properties": {
            "configMapRef": {"type": "object", "required": ["name"]},
            "secretRef": {"type": "object", "required": ["name"]},
        },
        "additionalProperties": False,
    },
}


def container(*, command: bool) -> Schema:
    """A container: pinned image, requests and limits, non-root, settings from envFrom."""
    required = ["name", "image", "resources", "securityContext", "envFrom"]
    if command:
        required.append("command")
    return {
        "type": "object",
        "required": required,
        "properties": {
            "name": {"type": "string", "pattern": DNS_LABEL},
            "image": {"type": "string", "pattern": PINNED_IMAGE, "not": {"pattern": ":latest$"}},
            "command": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "args": {"type": "array", "items": {"type": "string"}},
            "envFrom": ENV_FROM,
            "env": {"type": "array", "items": {"type": "object", "required": ["name"]}},
            "resources": {
                "type": "object",
                "required": ["requests", "limits"],
                "properties": {"requests": SIZED, "limits": SIZED},
            },
            "securityContext": CONTAINER_SECURITY,
        },
    }


def pod_template(*, command: bool, extra: Schema | None = None) -> Schema:
    """A pod template whose pod runs as a fixed non-root uid and whose containers are checked."""
    spec: Schema = {
        "type": "object",
        "required": ["securityContext", "containers"],
        "properties": {
            "securityContext": {
                "type": "object",
                "required": ["runAsNonRoot", "runAsUser"],
                "properties": {
                    "runAsNonRoot": {"const": True},
                    "runAsUser": {"type": "integer", "minimum": 1},
                },
            },
            "containers": {"type": "array", "minItems": 1, "items": container(command=command)},
        },
    }
    if extra:
        spec["required"] += extra.get("required", [])
        spec["properties"].update(extra.get("properties", {}))
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {"metadata": {"type": "object"}, "spec": spec},
    }


LABELS: Schema = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": {"type": "string"},
}

HTTP_PROBE: Schema = {
    "type": "object",
    "required": ["httpGet"],
    "properties": {
        "httpGet": {
            "type": "object",
            "required": ["path", "port"],
            "properties": {"path": {"type": "string"}, "port": {"type": ["string", "integer"]}},
        }
    },
}

UI_PROBES: Schema = {
    "properties": {
        "containers": {
            "items": {
                "required": ["ports", "readinessProbe", "livenessProbe"],
                "properties": {"readinessProbe": HTTP_PROBE, "livenessProbe": HTTP_PROBE},
            }
        }
    }
}

DEPLOYMENT = resource(
    "apps/v1",
    "Deployment",
    {
        "type": "object",
        "required": ["replicas", "selector", "template"],
        "properties": {
            "replicas": {"type": "integer", "minimum": 1},
            "selector": {
                "type": "object",
                "required": ["matchLabels"],
                "properties": {"matchLabels": LABELS},
            },
            "template": {
                "allOf": [
                    pod_template(command=True),
                    {
                        "required": ["metadata"],
                        "properties": {
                            "metadata": {"required": ["labels"], "properties": {"labels": LABELS}},
                            "spec": UI_PROBES,
                        },
                    },
                ]
            },
        },
    },
)

JOB = resource(
    "batch/v1",
    "Job",
    {
        "type": "object",
        "required": ["template"],
        "properties": {
            "backoffLimit": {"type": "integer", "minimum": 0},
            "template": pod_template(
                command=True,
                extra={
                    "required": ["restartPolicy"],
                    "properties": {"restartPolicy": {"enum": ["Never", "OnFailure"]}},
                },
            ),
        },
    },
)

RAY_START_PARAMS: Schema = {"type": "object", "additionalProperties": {"type": "string"}}

RAYCLUSTER = resource(
    "ray.io/v1",
    "RayCluster",
    {
        "type": "object",
        "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
        "properties": {
            "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
            "headGroupSpec": {
                "type": "object",
                "required": ["rayStartParams", "template"],
                "properties": {
                    "rayStartParams": RAY_START_PARAMS,
                    "template": pod_template(command=False),
                },
            },
            "workerGroupSpecs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": [
                        "groupName",
                        "replicas",
                        "minReplicas",
                        "maxReplicas",
                        "rayStartParams",
                        "template",
                    ],
                    "properties": {
                        "groupName": {"type": "string", "pattern": DNS_LABEL},
                        "replicas": {"type": "integer", "minimum": 0},
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 1},
                        "rayStartParams": RAY_START_PARAMS,
                        "template": pod_template(command=False),
                    },
                },
            },
        },
    },
)

RAYJOB = resource(
    "ray.io/v1",
    "RayJob",
    {
        "type": "object",
        "required": ["entrypoint", "clusterSelector"],
        "properties": {
            "entrypoint": {"type": "string", "pattern": r"^clinic "},
            "clusterSelector": {"type": "object", "required": ["ray.io/cluster"]},
        },
    },
)

SERVICE = resource(
    "v1",
    "Service",
    {
        "type": "object",
        "required": ["selector", "ports"],
        "properties": {
            "selector": LABELS,
            "ports": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "required": ["port", "targetPort"]},
            },
        },
    },
)

CONFIGMAP: Schema = {
    **resource("v1", "ConfigMap"),
    "required": ["apiVersion", "kind", "metadata", "data"],
}
CONFIGMAP["properties"] = {
    **CONFIGMAP["properties"],
    "data": {"type": "object", "additionalProperties": {"type": "string"}},
}

SECRET: Schema = {
    **resource("v1", "Secret"),
    "required": ["apiVersion", "kind", "metadata", "stringData"],
}
SECRET["properties"] = {
    **SECRET["properties"],
    "stringData": {"type": "object", "additionalProperties": {"type": "string"}},
}

PVC = resource(
    "v1",
    "PersistentVolumeClaim",
    {
        "type": "object",
        "required": ["accessModes", "resources"],
        "properties": {
            "accessModes": {"type": "array", "contains": {"const": "ReadWriteMany"}},
            "resources": {
                "type": "object",
                "required": ["requests"],
                "properties": {"requests": {"type": "object", "required": ["storage"]}},
            },
        },
    },
)

SCHEMAS: dict[str, Schema] = {
    "Namespace": resource("v1", "Namespace"),
    "ConfigMap": CONFIGMAP,
    "Secret": SECRET,
    "PersistentVolumeClaim": PVC,
    "Deployment": DEPLOYMENT,
    "Service": SERVICE,
    "Job": JOB,
    "RayCluster": RAYCLUSTER,
    "RayJob": RAYJOB,
}


def schema_errors(document: dict[str, Any]) -> list[str]:
    """Why ``document`` does not satisfy the schema of its kind ([] when it does)."""
    kind = document.get("kind")
    schema = SCHEMAS.get(str(kind))
    if schema is None:
        return [f"no schema for kind {kind!r}: add one before adding such a resource"]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{kind}/{document.get('metadata', {}).get('name')}: "
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(
            validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path]
        )
    ]
