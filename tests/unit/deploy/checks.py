"""What a Kubernetes install of Chiffon must be, checked offline: kustomize builds it, every
object fits the Kubernetes OpenAPI schemas (kubernetes-validate's bundled copy, strict: an
unknown field is an error), and the essentials hold. Each check returns the problems it
found, so a test can feed it a broken manifest and see it caught."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[3]
KUBECTL = Path(sys.executable).with_name("kubectl")
#: The oldest Kubernetes a user is expected to run this on (minor releases of the last year).
KUBERNETES_VERSION = "1.33"
#: Chiffon's own workloads (the services and the migration job), by their `app` label.
SERVICES = ("registry", "executor", "cost", "trigger", "gateway")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet")

Object = dict[str, Any]


class BuildFailed(AssertionError):
    pass


def kustomize(folder: Path) -> list[Object]:
    """``kubectl kustomize FOLDER``, parsed; BuildFailed with kubectl's message."""
    # Through a proxy that refuses every connection: a remote base or a download would fail
    # the build here instead of passing on a machine that happens to be online.
    offline = {
        **os.environ,
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in offline.items() if k.upper() != "NO_PROXY"},
    )
    if done.returncode != 0:
        raise BuildFailed(f"kubectl kustomize {folder}: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def schema_problems(objects: Iterable[Object]) -> tuple[list[str], list[str]]:
    """(problems, kinds without a bundled schema): every object against the OpenAPI schemas."""
    problems: list[str] = []
    unknown: list[str] = []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append(f"{obj['apiVersion']} {obj['kind']}")
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problems.append(f"{name}: {path}: {error.message}")
    return problems, unknown


def pod_specs(objects: Iterable[Object]) -> Iterator[tuple[str, Object]]:
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def _non_root(pod: Object, container: Object) -> bool:
    pod_ctx = pod.get("securityContext", {})
    ctx = {**pod_ctx, **container.get("securityContext", {})}
    return bool(ctx.get("runAsNonRoot")) and int(ctx.get("runAsUser", 0)) != 0


def _inline_secrets(container: Object) -> list[str]:
    """Environment variables whose names say secret but whose value is written inline."""
    secretive = ("PASSWORD", "SECRET", "TOKEN", "CREDENTIAL", "_KEY", "DATABASE_URL")
    return [
        env["name"]
        for env in container.get("env", [])
        if "value" in env
        and any(word in env["name"] for word in secretive)
        and not env["name"].endswith("_FILE")
    ]


def essential_problems(objects: list[Object]) -> list[str]:
    """Probes, requests, non-root, secrets by reference, in every workload's containers."""
    problems: list[str] = []
    for name, pod in pod_specs(objects):
        for container in pod["containers"]:
            where = f"{name} {container['name']}"
            if not _non_root(pod, container):
                problems.append(f"{where}: may run as root (runAsNonRoot and a uid > 0)")
            if container.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            requests = container.get("resources", {}).get("requests", {})
            if not {"cpu", "memory"} <= requests.keys():
                problems.append(f"{where}: no cpu and memory requests")
            for env in _inline_secrets(container):
                problems.append(f"{where}: {env} written inline, not from a Secret")
            if name.startswith("Job/"):
                continue
            if "readinessProbe" not in container or "livenessProbe" not in container:
                problems.append(f"{where}: no liveness and readiness probes")
    for obj in objects:
        if obj["kind"] == "Secret" and (obj.get("data") or obj.get("stringData")):
            problems.append(f"Secret/{obj['metadata']['name']}: secret values in a manifest")
    return problems


def chiffon_probe_problems(objects: list[Object], apps: Iterable[str]) -> list[str]:
    """Chiffon's own services: liveness on /healthz, readiness on /readyz (chiffon.core.service)."""
    problems: list[str] = []
    wanted = set(apps)
    for name, pod in pod_specs(objects):
        for container in pod["containers"]:
            if container["name"] not in wanted:
                continue
            live = container.get("livenessProbe", {}).get("httpGet", {}).get("path")
            ready = container.get("readinessProbe", {}).get("httpGet", {}).get("path")
            if (live, ready) != ("/healthz", "/readyz"):
                problems.append(f"{name}: probes {live}, {ready}, not /healthz, /readyz")
    return problems


def find(objects: list[Object], kind: str, name: str) -> Object:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} among {[o['kind'] for o in objects]}")


# -- NetworkPolicy: who may open a connection to a pod ----------------------------------


def _selects(selector: Object, labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        present = expression["key"] in labels
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


OUTSIDE = None  # a client outside the namespace (the internet, another namespace)


def may_connect(
    policies: list[Object], target: dict[str, str], source: dict[str, str] | None
) -> bool:
    """Whether ``source`` (a pod's labels in the same namespace, or OUTSIDE) may open a
    connection to a pod labelled ``target``, by NetworkPolicy semantics (ingress)."""
    selecting = [
        p
        for p in policies
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and _selects(p["spec"].get("podSelector", {}), target)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    if source is OUTSIDE:
                        return True
                    continue
                if "namespaceSelector" in peer:
                    if source is OUTSIDE:  # another namespace
                        return True
                    continue
                if source is not OUTSIDE and _selects(peer.get("podSelector", {}), source):
                    return True
    return False


def pod_labels(objects: list[Object]) -> dict[str, dict[str, str]]:
    """Each workload's pod labels, by workload name."""
    return {
        obj["metadata"]["name"]: obj["spec"]["template"]["metadata"]["labels"]
        for obj in objects
        if obj["kind"] in WORKLOAD_KINDS
    }
