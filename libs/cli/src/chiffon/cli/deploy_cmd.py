"""``chiffon deploy agent``: what an operator needs to run an agent on another machine.

It writes four files for one agent: a Dockerfile (from the agent image), a systemd unit for
a bare host, a compose snippet and a Kubernetes manifest. The agent's credential is never
read and never written into them: each artifact names where it comes from (a file systemd
hands over, a compose secret, a Kubernetes Secret), and the operator puts it there.
Every value that reaches a file is checked first, so a hostile name or URL cannot add a
line to a unit or a key to a manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated

import jinja2
import typer

from chiffon.cli import exit_codes as codes
from chiffon.cli.text import secho

#: The agent's capabilities: shell (its own), the tools of chiffon.agent.tools.registry,
#: and gpu (a capability with no tool: routing only). tests/unit/deploy checks this list
#: against the agent's.
CAPABILITIES = ("shell", "python", "files", "http", "sql", "ansible", "catalog", "gpu")
#: Capabilities whose tools serve a folder of playbooks and roles (CHIFFON_AGENT_CATALOG_DIR).
NEED_CATALOG = ("ansible", "catalog")
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")  # the registry's credential names
# http(s)://host[:port][/path]: no spaces, quotes, `%` (a systemd specifier) or `$`.
URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")
IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[0-9]{1,5}/[a-z0-9._/-]+)?(:[A-Za-z0-9_.-]{1,128})?$")
HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")
# A path written into a unit: absolute, and none of systemd's or a shell's special characters.
HOST_PATH = re.compile(r"^/[A-Za-z0-9._/+@-]*$")
NAMESPACE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# Where the artifacts mount what the agent reads (containers).
CREDENTIAL_PATH = PurePosixPath("/run/secrets/chiffon-agent/credential")
EXECUTOR_KEY_PATH = PurePosixPath("/run/chiffon/executor-signing.pub")
IMAGE_CATALOG_DIR = "/srv/chiffon/catalog"
CATALOG_README = f"""# The agent's catalog

The ansible and catalog tools serve the playbooks in `playbooks/` and the roles in
`roles/` (see `chiffon infra scaffold` and examples/homelab/catalog). Fill this folder
before building the image (the Dockerfile copies it to {IMAGE_CATALOG_DIR}); for the
systemd unit, copy it to {IMAGE_CATALOG_DIR} on the host.
"""
HEALTH_PORT = 8404
DEFAULT_REGISTRY = "http://registry.chiffon.svc:8080"
DEFAULT_BASE_IMAGE = "registry.example.internal/chiffon-agent:0.1.0"


@functools.cache
def _templates() -> jinja2.Environment:
    """Built on first use, not when the CLI starts: most commands never render one."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("chiffon.cli", "deploy_templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 — Dockerfile, unit and YAML, not HTML; values are checked
    )
    # A YAML scalar in double quotes (JSON's string syntax is YAML's), whatever the value holds.
    environment.filters["q"] = lambda value: json.dumps(value, ensure_ascii=False)
    return environment


class DeployError(ValueError):
    """Input that cannot become an agent's deployment files."""


@dataclass(frozen=True)
class AgentDeployment:
    """One agent's deployment, checked: everything the four artifacts need."""

    name: str
    capabilities: tuple[str, ...]
    registry: str
    image: str
    base_image: str
    credential_file: str
    executor_key_file: str
    install_dir: str
    grpc_port: int = 8500
    health_port: int = HEALTH_PORT
    advertise_host: str | None = None
    catalog: str | None = None
    # ansible or catalog without --catalog: the output holds an empty catalog/ folder to
    # fill before building the image, and the unit reads IMAGE_CATALOG_DIR on the host.
    catalog_to_fill: bool = False
    namespace: str = "chiffon"

    @property
    def service(self) -> str:
        return f"agent-{self.name.replace('_', '-').replace('.', '-')}"[:63].rstrip("-")

    @property
    def unit_name(self) -> str:
        return f"chiffon-agent-{self.name}.service"

    def files(self) -> dict[str, str]:
        """The artifacts by file name."""
        context = {
            **dataclasses.asdict(self),
            "service": self.service,
            "unit_name": self.unit_name,
            "python": f"{self.install_dir}/bin/python",
            "secret": f"chiffon-{self.service}",
            "credential_secret": f"{self.service}-credential",
            "credential_path": str(CREDENTIAL_PATH),
            "credential_dir": str(CREDENTIAL_PATH.parent),
            "credential_basename": CREDENTIAL_PATH.name,
            "executor_key_path": str(EXECUTOR_KEY_PATH),
            "executor_key_dir": str(EXECUTOR_KEY_PATH.parent),
            "executor_key_basename": EXECUTOR_KEY_PATH.name,
            "image_catalog_dir": IMAGE_CATALOG_DIR,
            "advertise_compose": "${CHIFFON_AGENT_ADVERTISE_HOST:?the address executors dial}",
            "labels": {
                "app": self.service,
                "app.kubernetes.io/component": "agent",
                "app.kubernetes.io/part-of": "chiffon",
            },
        }
        return {
            "Dockerfile": _templates().get_template("Dockerfile.j2").render(context),
            self.unit_name: _templates().get_template("agent.service.j2").render(context),
            "compose.yaml": _templates().get_template("compose.yaml.j2").render(context),
            "kubernetes.yaml": _templates().get_template("kubernetes.yaml.j2").render(context),
        }


def parse_capabilities(text: str) -> tuple[str, ...]:
    words = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not words:
        raise DeployError("--capabilities: at least one (shell, ansible, ...)")
    unknown = [word for word in words if word not in CAPABILITIES]
    if unknown:
        raise DeployError(
            f"--capabilities: unknown {', '.join(repr(u[:64]) for u in unknown)}; "
            f"known: {', '.join(CAPABILITIES)}"
        )
    return words


def _checked(pattern: re.Pattern[str], value: str, option: str, what: str) -> str:
    if not pattern.fullmatch(value) or len(value) > 2048:
        raise DeployError(f"{option} {value[:200]!r}: {what}")
    return value


def _host_path(value: Path, option: str) -> str:
    text = str(value if value.is_absolute() else value.absolute())
    return _checked(HOST_PATH, text, option, "an absolute path of letters, digits and ._/+@-")


def plan(
    name: str,
    capabilities: str,
    *,
    registry: str = DEFAULT_REGISTRY,
    image: str | None = None,
    base_image: str = DEFAULT_BASE_IMAGE,
    credential_file: Path | None = None,
    executor_key_file: Path = Path("/etc/chiffon/executor-signing.pub"),
    install_dir: Path = Path("/opt/chiffon"),
    grpc_port: int = 8500,
    health_port: int = HEALTH_PORT,
    advertise_host: str | None = None,
    catalog: Path | None = None,
    namespace: str = "chiffon",
) -> AgentDeployment:
    """Check every input; DeployError names the first bad one. Reads no file."""
    _checked(NAME, name, "NAME", "1-63 of a-z 0-9 _ . - starting with a letter or digit")
    caps = parse_capabilities(capabilities)
    _checked(URL, registry, "--registry", "an http:// or https:// URL (host, port, path)")
    image = image or f"chiffon-agent-{name}:latest"
    _checked(IMAGE, image, "--image", "an image reference (name[:tag])")
    _checked(IMAGE, base_image, "--base-image", "an image reference (name[:tag])")
    _checked(NAMESPACE, namespace, "--namespace", "a Kubernetes namespace name")
    if advertise_host is not None:
        _checked(HOST, advertise_host, "--advertise-host", "a host name or address")
    if grpc_port == health_port:
        raise DeployError(f"--port and --health-port are both {grpc_port}")
    serving = [c for c in caps if c in NEED_CATALOG]
    if catalog is not None and not catalog.is_dir():
        raise DeployError(f"--catalog {catalog}: no such folder")
    return AgentDeployment(
        name=name,
        capabilities=caps,
        registry=registry.rstrip("/"),
        image=image,
        base_image=base_image,
        credential_file=_host_path(
            credential_file or Path(f"/etc/chiffon/{name}.credential"), "--credential-file"
        ),
        executor_key_file=_host_path(executor_key_file, "--executor-key"),
        install_dir=_host_path(install_dir, "--install-dir"),
        grpc_port=grpc_port,
        health_port=health_port,
        advertise_host=advertise_host,
        catalog=_host_path(catalog.resolve(), "--catalog") if catalog is not None else None,
        catalog_to_fill=bool(serving) and catalog is None,
        namespace=namespace,
    )


def write(deployment: AgentDeployment, out: Path, *, force: bool = False) -> list[Path]:
    """Write the artifacts into ``out`` (created if missing); all of them or none."""
    files = deployment.files()
    targets = [out / name for name in files]
    if deployment.catalog is not None or deployment.catalog_to_fill:
        targets.append(out / "catalog")
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise DeployError(
            f"{', '.join(str(t) for t in existing)} already exist (--force replaces them)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DeployError(f"--out {out}: {error.strerror}") from None
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise DeployError(f"--out {out}: not a writable folder")
    # Into a staging folder beside the targets, then renamed: a failure halfway leaves none.
    try:
        staging = Path(tempfile.mkdtemp(prefix=".chiffon-deploy-", dir=out))
    except OSError as error:
        raise DeployError(f"--out {out}: {error.strerror}") from None
    try:
        for file_name, text in files.items():
            (staging / file_name).write_text(text)
        if deployment.catalog is not None:
            shutil.copytree(deployment.catalog, staging / "catalog", symlinks=True)
        elif deployment.catalog_to_fill:
            (staging / "catalog" / "playbooks").mkdir(parents=True)
            (staging / "catalog" / "roles").mkdir()
            (staging / "catalog" / "README.md").write_text(CATALOG_README)
        for target in targets:
            if force and target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            (staging / target.name).replace(target)
    except OSError as error:
        raise DeployError(f"--out {out}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def _fail(message: str) -> typer.Exit:
    secho(f"error: {message}", err=True, fg="red")
    return typer.Exit(codes.USAGE)


app = typer.Typer(help="Files to run Chiffon's parts elsewhere.", no_args_is_help=True)


@app.command("agent")
def agent(
    name: Annotated[str, typer.Argument(help="The agent's name (its credential's).")],
    capabilities: Annotated[
        str, typer.Option("--capabilities", help=f"Comma-separated: {', '.join(CAPABILITIES)}.")
    ] = "shell",
    registry: Annotated[
        str, typer.Option("--registry", help="The registry URL the agent registers with.")
    ] = DEFAULT_REGISTRY,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder to write into (default: agent-NAME).")
    ] = None,
    credential_file: Annotated[
        Path | None,
        typer.Option(
            "--credential-file",
            help="On a bare host: the file holding the credential (default /etc/chiffon/NAME.credential).",
        ),
    ] = None,
    executor_key: Annotated[
        Path,
        typer.Option("--executor-key", help="On a bare host: the executor's public key file."),
    ] = Path("/etc/chiffon/executor-signing.pub"),
    install_dir: Annotated[
        Path,
        typer.Option(
            "--install-dir", help="On a bare host: where the agent is installed (bin/python)."
        ),
    ] = Path("/opt/chiffon"),
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", help="Playbooks and roles (required with ansible, catalog)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="gRPC port.")] = 8500,
    health_port: Annotated[
        int, typer.Option("--health-port", min=1, max=65535, help="/healthz and /readyz.")
    ] = HEALTH_PORT,
    advertise_host: Annotated[
        str | None, typer.Option("--advertise-host", help="Bare host: the host executors dial.")
    ] = None,
    image: Annotated[
        str | None, typer.Option("--image", help="The agent's image (default chiffon-agent-NAME).")
    ] = None,
    base_image: Annotated[
        str, typer.Option("--base-image", help="The Chiffon agent image to build from.")
    ] = DEFAULT_BASE_IMAGE,
    namespace: Annotated[
        str, typer.Option("--namespace", help="Kubernetes namespace.")
    ] = "chiffon",
    force: Annotated[bool, typer.Option("--force", help="Replace files already there.")] = False,
) -> None:
    """Write a Dockerfile, a systemd unit, a compose snippet and a Kubernetes manifest for
    one agent. Its credential stays where you keep it: no file written here contains it."""
    try:
        deployment = plan(
            name,
            capabilities,
            registry=registry,
            image=image,
            base_image=base_image,
            credential_file=credential_file,
            executor_key_file=executor_key,
            install_dir=install_dir,
            grpc_port=port,
            health_port=health_port,
            advertise_host=advertise_host,
            catalog=catalog,
            namespace=namespace,
        )
        written = write(deployment, out or Path(f"agent-{name}"), force=force)
    except DeployError as error:
        raise _fail(str(error)) from None
    for path in written:
        typer.echo(str(path))
    typer.echo(
        f"\nNext: `chiffon agents credential create {name} --output {name}.credential`, then\n"
        f"  bare host:  copy it to {deployment.credential_file} and install {deployment.unit_name}\n"
        f"  kubernetes: kubectl -n {namespace} create secret generic chiffon-{deployment.service} "
        f"--from-file=credential={name}.credential\n"
        f"  compose:    keep it beside compose.yaml as {name}.credential"
    )


def register(root: typer.Typer) -> None:
    """Add this module's commands to ``root``: ``chiffon deploy agent``."""
    root.add_typer(app, name="deploy")
