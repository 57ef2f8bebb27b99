"""deploy/kubernetes, checked as a cluster would see it but offline: every file parses,
`kubectl kustomize` builds the base and the KEDA overlay, every object validates against
the Kubernetes OpenAPI schemas with the network refused, and what an operator relies on
holds (probes, requests, non-root, secrets by reference, a 3-node NATS with R3 streams and
fsync on every write, disruption budgets, who may reach whom). The last test feeds the
same checks broken manifests and sees each one caught."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from chiffon.eventstore.streams import Streams
from chiffon.executor.worker import CONSUMER
from tests.unit.deploy.checks import (
    OUTSIDE,
    REPO,
    SERVICES,
    BuildFailed,
    Object,
    chiffon_probe_problems,
    essential_problems,
    find,
    kustomize,
    may_connect,
    pod_labels,
    schema_problems,
)

KUBERNETES = REPO / "deploy" / "kubernetes"
KEDA = KUBERNETES / "overlays" / "keda"
AGENT_POD = {"app": "some-agent", "app.kubernetes.io/component": "agent"}


@pytest.fixture(scope="module")
def base() -> list[Object]:
    return kustomize(KUBERNETES)


@pytest.fixture(scope="module")
def keda() -> list[Object]:
    return kustomize(KEDA)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any connection attempt fails the test: the validation must need no download."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access during validation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


def test_every_manifest_file_parses_into_named_objects() -> None:
    files = sorted(KUBERNETES.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        assert docs, path
        for doc in docs:
            assert {"apiVersion", "kind"} <= doc.keys(), path
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path


def test_the_base_and_the_keda_overlay_build_and_validate_offline(
    base: list[Object], keda: list[Object], no_network: None
) -> None:
    for objects in (base, keda):
        problems, unknown = schema_problems(objects)
        assert problems == []
        # KEDA's CRD is not among Kubernetes' schemas: its ScaledObject is checked by
        # test_keda_scales_executors_on_their_consumers_pending_work instead.
        assert unknown == ([] if objects is base else ["keda.sh/v1alpha1 ScaledObject"])
    kinds = sorted({o["kind"] for o in base})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "Job",
        "Namespace",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "StatefulSet",
    ]
    assert all(
        o["metadata"].get("namespace") == "chiffon" for o in base if o["kind"] != "Namespace"
    )


def test_workloads_are_probed_bounded_unprivileged_and_take_secrets_by_reference(
    base: list[Object],
) -> None:
    assert essential_problems(base) == []
    assert chiffon_probe_problems(base, SERVICES) == []
    for service in SERVICES:
        pod = find(base, "Deployment", service)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].endswith(f"/chiffon-{service}:0.1.0")
        assert {"secretRef": {"name": "chiffon-secrets"}} in container["envFrom"]
    assert not [o for o in base if o["kind"] == "Secret"], "secrets are created by the operator"
    executor = find(base, "Deployment", "executor")["spec"]["template"]["spec"]
    assert executor["volumes"][0]["secret"]["secretName"] == "chiffon-executor-signing"


def test_nats_is_three_fsyncing_nodes_and_streams_get_three_replicas(base: list[Object]) -> None:
    nats = find(base, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    conf = find(base, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "sync_interval: always" in [line.strip() for line in conf.splitlines()]
    assert conf.count("nats://nats-") == 3
    (container,) = nats["spec"]["template"]["spec"]["containers"]
    assert "ldm=" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert nats["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30
    settings = find(base, "ConfigMap", "chiffon-config")["data"]
    assert settings["CHIFFON_STREAM_REPLICAS"] == "3"
    assert settings["CHIFFON_NATS_URL"].count("nats://") == 3
    budget = find(base, "PodDisruptionBudget", "nats")["spec"]
    assert budget == {"minAvailable": 2, "selector": {"matchLabels": {"app": "nats"}}}
    assert find(base, "PodDisruptionBudget", "executor")["spec"]["minAvailable"] == 1


def test_cpu_autoscaling_by_default(base: list[Object]) -> None:
    hpa = find(base, "HorizontalPodAutoscaler", "executor")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "executor",
    }
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


def test_keda_scales_executors_on_their_consumers_pending_work(keda: list[Object]) -> None:
    assert not [o for o in keda if o["kind"] == "HorizontalPodAutoscaler"]
    scaled = find(keda, "ScaledObject", "executor")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "executor"
    assert find(keda, "Deployment", "executor")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    # The names the executor really uses (namespace "chiffon", chiffon-config's default).
    assert trigger["metadata"]["stream"] == Streams("chiffon").stream_name("RUNS")
    assert trigger["metadata"]["consumer"] == CONSUMER
    assert trigger["metadata"]["natsServerMonitoringEndpoint"].startswith("nats.chiffon.svc")
    assert int(trigger["metadata"]["lagThreshold"]) > 0
    policies = [o for o in keda if o["kind"] == "NetworkPolicy"]
    assert may_connect(policies, {"app": "nats"}, OUTSIDE), "KEDA reads NATS monitoring"


def test_only_gateway_and_trigger_take_outside_traffic_and_only_the_executor_reaches_agents(
    base: list[Object],
) -> None:
    policies = [o for o in base if o["kind"] == "NetworkPolicy"]
    pods = pod_labels(base)
    public = {name for name, labels in pods.items() if may_connect(policies, labels, OUTSIDE)}
    assert public == {"gateway", "trigger"}
    callers = {name for name, labels in pods.items() if may_connect(policies, AGENT_POD, labels)}
    assert callers == {"executor"}
    assert not may_connect(policies, AGENT_POD, OUTSIDE)
    # What must still work: services reach NATS and PostgreSQL, agents the registry.
    for service in SERVICES:
        assert may_connect(policies, pods["nats"], pods[service])
        assert may_connect(policies, pods["postgres"], pods[service])
    assert may_connect(policies, pods["nats"], pods["chiffon-migrate"])
    assert may_connect(policies, pods["registry"], AGENT_POD)
    assert not may_connect(policies, pods["nats"], AGENT_POD)
    ingress = find(base, "Ingress", "chiffon")["spec"]["rules"][0]["http"]["paths"]
    assert {p["backend"]["service"]["name"] for p in ingress} == {"gateway", "trigger"}


def _broken(tmp_path: Path, manifest: str) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir(parents=True)
    (folder / "kustomization.yaml").write_text("resources: [thing.yaml]\n")
    (folder / "thing.yaml").write_text(manifest)
    return folder


GOOD_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: thing}
spec:
  replicas: 1
  selector: {matchLabels: {app: thing}}
  template:
    metadata: {labels: {app: thing}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 10001}
      containers:
        - name: thing
          image: thing
          livenessProbe: {httpGet: {path: /healthz, port: 8080}}
          readinessProbe: {httpGet: {path: /readyz, port: 8080}}
          resources: {requests: {cpu: 100m, memory: 64Mi}}
          securityContext: {allowPrivilegeEscalation: false}
"""


def test_the_checks_catch_broken_manifests(tmp_path: Path) -> None:
    good = kustomize(_broken(tmp_path, GOOD_DEPLOYMENT))
    assert schema_problems(good) == ([], []) and essential_problems(good) == []
    assert chiffon_probe_problems(good, ["thing"]) == []

    # The bug deploy/ once had: `?` inside a flow mapping is not YAML.
    invalid_yaml = GOOD_DEPLOYMENT.replace("{path: /readyz,", "{path: /readyz?full=1,")
    with pytest.raises(BuildFailed, match="yaml"):
        kustomize(_broken(tmp_path / "a", invalid_yaml))

    cases = {
        "replicas: 1": ("replicas: two", "schema"),
        "image: thing": ("image: thing\n          ports: [{containerPort: eighty}]", "schema"),
        "selector:": ("selectr:", "schema"),  # an unknown field (strict)
        "runAsNonRoot: true, runAsUser: 10001": ("runAsUser: 0", "may run as root"),
        "resources: {requests: {cpu: 100m, memory: 64Mi}}": ("resources: {}", "requests"),
        "          readinessProbe: {httpGet: {path: /readyz, port: 8080}}\n": ("", "probes"),
        "          livenessProbe": (
            "          env: [{name: DB_PASSWORD, value: hunter2}]\n          livenessProbe",
            "inline",
        ),
    }
    for index, (old, (new, expected)) in enumerate(cases.items()):
        assert old in GOOD_DEPLOYMENT, old
        objects = kustomize(_broken(tmp_path / str(index), GOOD_DEPLOYMENT.replace(old, new)))
        problems, _ = schema_problems(objects)
        found = problems if expected == "schema" else essential_problems(objects)
        assert found, f"not caught: {new!r}"
        assert expected == "schema" or any(expected in p for p in found), found

    wrong_path = GOOD_DEPLOYMENT.replace("path: /readyz", "path: /ready")
    objects = kustomize(_broken(tmp_path / "p", wrong_path))
    assert chiffon_probe_problems(objects, ["thing"]) == [
        "Deployment/thing: probes /healthz, /ready, not /healthz, /readyz"
    ]
