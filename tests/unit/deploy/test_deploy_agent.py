"""``chiffon deploy agent``: the files it writes pass the checks deploy/ passes (the manifest
validates against the Kubernetes schemas, is probed, bounded, non-root, reachable only from
the executor), name the credential's place without containing it, and bad input is a usage
error that writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from chiffon.agent.tools.registry import _BUILDERS
from chiffon.cli import deploy_cmd
from chiffon.cli.exit_codes import USAGE
from tests.unit.deploy.checks import (
    OUTSIDE,
    chiffon_probe_problems,
    essential_problems,
    find,
    kustomize,
    may_connect,
    pod_labels,
    schema_problems,
)
from tests.unit.deploy.test_images import effective, parse_dockerfile
from tests.unit.deploy.test_kubernetes import KUBERNETES

ROOT = typer.Typer()
deploy_cmd.register(ROOT)


def deploy(*args: str) -> Any:
    return CliRunner().invoke(ROOT, ["deploy", "agent", *args])


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("agent") / "out"
    catalog = out.parent / "catalog"
    (catalog / "playbooks").mkdir(parents=True)
    (catalog / "playbooks" / "ping.yml").write_text("- hosts: all\n  tasks: []\n")
    result = deploy(
        "gpu-box",
        "--capabilities",
        "shell,ansible,gpu",
        "--registry",
        "https://registry.lan:8401",
        "--catalog",
        str(catalog),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert (out / "catalog" / "playbooks" / "ping.yml").is_file()
    return {path.name: path.read_text() for path in out.iterdir() if path.is_file()}


def test_the_issues_form_without_a_catalog_leaves_one_to_fill(tmp_path: Path) -> None:
    """``chiffon deploy agent NAME --capabilities shell,ansible --registry URL --out DIR``:
    the catalog the ansible tool serves is a folder in the output, empty, that the
    Dockerfile copies and the unit reads where the README says to put it."""
    out = tmp_path / "desk"
    result = deploy(
        "desk", "--capabilities", "shell,ansible", "--registry", "http://r.lan:8401",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "catalog").iterdir()) == [
        "README.md",
        "playbooks",
        "roles",
    ]
    assert "COPY catalog/ /srv/chiffon/catalog/" in (out / "Dockerfile").read_text()
    unit = (out / "chiffon-agent-desk.service").read_text()
    assert "Environment=CHIFFON_AGENT_CATALOG_DIR=/srv/chiffon/catalog" in unit
    objects = [d for d in yaml.safe_load_all((out / "kubernetes.yaml").read_text()) if d]
    assert schema_problems(objects) == ([], [])


def test_the_capabilities_it_knows_are_the_agents() -> None:
    assert set(deploy_cmd.CAPABILITIES) == {"shell", "gpu", *_BUILDERS}


def test_the_manifest_passes_deploys_checks_and_only_the_executor_reaches_the_agent(
    written: dict[str, str],
) -> None:
    objects = [doc for doc in yaml.safe_load_all(written["kubernetes.yaml"]) if doc]
    assert schema_problems(objects) == ([], [])
    assert essential_problems(objects) == []
    assert chiffon_probe_problems(objects, ["agent"]) == []
    agent = find(objects, "StatefulSet", "agent-gpu-box")
    assert agent["metadata"]["namespace"] == "chiffon"
    pod = agent["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CHIFFON_AGENT_CAPABILITIES"] == "shell,ansible,gpu"
    assert env["CHIFFON_REGISTRY_URL"] == "https://registry.lan:8401"
    assert env["CHIFFON_AGENT_ID"] == "$(POD_NAME)"
    secret = next(v for v in pod["volumes"] if "secret" in v)["secret"]
    assert secret["secretName"] == "chiffon-agent-gpu-box"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "credential")
    assert env["CHIFFON_AGENT_CREDENTIAL_FILE"].startswith(mount["mountPath"] + "/")
    # Beside the base install, the base's NetworkPolicies apply to it.
    base = kustomize(KUBERNETES)
    policies = [o for o in base if o["kind"] == "NetworkPolicy"]
    agent_labels = agent["spec"]["template"]["metadata"]["labels"]
    callers = {
        name
        for name, labels in pod_labels(base).items()
        if may_connect(policies, agent_labels, labels)
    }
    assert callers == {"executor"}
    assert not may_connect(policies, agent_labels, OUTSIDE)
    assert may_connect(policies, pod_labels(base)["registry"], agent_labels)


def test_dockerfile_unit_and_compose_take_the_credential_from_outside(
    written: dict[str, str],
) -> None:
    assert sorted(written) == [
        "Dockerfile",
        "chiffon-agent-gpu-box.service",
        "compose.yaml",
        "kubernetes.yaml",
    ]
    stages = parse_dockerfile(written["Dockerfile"])
    (final,) = stages.values()
    assert final.base == deploy_cmd.DEFAULT_BASE_IMAGE
    assert effective(stages, final.name, "USER") == "10001:10001"
    assert "/readyz" in (effective(stages, final.name, "HEALTHCHECK") or "")
    assert "COPY catalog/ /srv/chiffon/catalog/" in written["Dockerfile"]
    compose = yaml.safe_load(written["compose.yaml"])
    service = compose["services"]["agent-gpu-box"]
    assert compose["secrets"]["agent-gpu-box-credential"] == {"file": "./gpu-box.credential"}
    assert service["secrets"][0]["target"] == str(deploy_cmd.CREDENTIAL_PATH)
    assert service["healthcheck"]["test"][0] == "CMD"
    unit = written["chiffon-agent-gpu-box.service"]
    assert "LoadCredential=agent-credential:/etc/chiffon/gpu-box.credential" in unit
    assert "LoadCredential=executor-key:/etc/chiffon/executor-signing.pub" in unit
    assert "CHIFFON_AGENT_CREDENTIAL_FILE=%d/agent-credential" in unit
    assert "Environment=CHIFFON_AGENT_CATALOG_DIR=" in unit
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == "ExecStart=/opt/chiffon/bin/python -m chiffon.agent"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad Name"], "NAME 'Bad Name'"),
        (["../etc"], "NAME '../etc'"),
        (["box\nExecStartPre=/bin/sh"], "NAME"),
        (["box\n"], "NAME"),
        (["box", "--registry", "http://registry:8401\n"], "--registry"),
        (["box", "--capabilities", "shell,telepathy"], "unknown 'telepathy'"),
        (["box", "--capabilities", " , "], "at least one"),
        (["box", "--capabilities", "ansible", "--catalog", "/no/such/folder"], "no such folder"),
        (["box", "--registry", "ftp://registry"], "--registry"),
        (["box", "--registry", "http://r:1/\nExecStartPre=/bin/sh"], "--registry"),
        (["box", "--registry", "http://r/%h"], "--registry"),
        (["box", "--credential-file", "/etc/my creds"], "--credential-file"),
        (["box", "--image", "Evil Image"], "--image"),
        (["box", "--namespace", "Chiffon"], "--namespace"),
        (["box", "--port", "8404"], "--port and --health-port"),
    ],
)
def test_bad_input_is_a_usage_error_that_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = deploy(*args, "--out", str(out))
    assert result.exit_code == USAGE, result.output
    assert message in result.output
    assert not out.exists()


def test_an_out_folder_it_cannot_write_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = deploy("box", "--out", str(blocker / "out"))
    assert result.exit_code == USAGE and "--out" in result.output
    result = deploy("box", "--out", str(blocker))
    assert result.exit_code == USAGE and "--out" in result.output
    assert blocker.read_text() == "not a folder"


def test_files_already_there_are_kept_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert deploy("box", "--out", str(out)).exit_code == 0
    (out / "Dockerfile").write_text("mine")
    again = deploy("box", "--capabilities", "shell,python", "--out", str(out))
    assert again.exit_code == USAGE and "already exist" in again.output
    assert (out / "Dockerfile").read_text() == "mine"
    forced = deploy("box", "--capabilities", "shell,python", "--out", str(out), "--force")
    assert forced.exit_code == 0
    assert "CHIFFON_AGENT_CAPABILITIES=shell,python" in (out / "Dockerfile").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".chiffon-deploy-")]
