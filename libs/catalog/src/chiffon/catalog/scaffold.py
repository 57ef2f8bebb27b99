"""Role and playbook skeletons from Jinja2 templates (`chiffon infra scaffold`).

`chiffon infra scaffold SERVICE --out CATALOG` writes, in the catalog format
(chiffon.catalog.catalog):

    CATALOG/roles/<role>/tasks/main.yml, handlers/main.yml, defaults/main.yml,
                         meta/main.yml, README.md
    CATALOG/playbooks/deploy-<name>.yml

The role's name is SERVICE normalised to Ansible's rules (lowercase, [a-z0-9_], not
starting with a digit: `Uptime Kuma` -> `uptime_kuma`, `1password` -> `service_1password`);
the playbook's uses dashes (`deploy-uptime-kuma`). Every file says it was generated and by
which command. Nothing is written when a file exists, unless `force`; nothing at all when a
name cannot be made.

The templates use `[[ ]]` and `[% %]` as Jinja2's delimiters, so the `{{ }}` of the Ansible
files they produce are written as they are. Only normalised names reach them: a service
name cannot put YAML or Jinja into a file.

The generated playbook passes ansible-lint's default rules (tests/unit/catalog/test_scaffold.py
runs it) when the roles path holds the catalog's roles/ (ANSIBLE_ROLES_PATH, as the ansible
tool sets it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from chiffon.catalog.catalog import PLAYBOOKS_DIR, ROLES_DIR

TEMPLATES = Path(__file__).parent / "templates" / "scaffold"
MAX_SERVICE_CHARS = 64
#: template file -> where it goes (below the catalog), with {role} and {name} filled in.
FILES = {
    "tasks.yml.j2": f"{ROLES_DIR}/{{role}}/tasks/main.yml",
    "handlers.yml.j2": f"{ROLES_DIR}/{{role}}/handlers/main.yml",
    "defaults.yml.j2": f"{ROLES_DIR}/{{role}}/defaults/main.yml",
    "meta.yml.j2": f"{ROLES_DIR}/{{role}}/meta/main.yml",
    "README.md.j2": f"{ROLES_DIR}/{{role}}/README.md",
    "playbook.yml.j2": f"{PLAYBOOKS_DIR}/deploy-{{name}}.yml",
}


class ScaffoldError(ValueError):
    """The scaffold cannot be made: a name that normalises to nothing, or files in the way."""


@dataclass(frozen=True)
class Scaffold:
    service: str
    role: str
    name: str
    #: Where each file goes (relative to the catalog) and its text.
    files: dict[str, str]


def role_name(service: str) -> str:
    """`service` as an Ansible role name: lowercase, [a-z0-9_], not starting with a digit."""
    if len(service) > MAX_SERVICE_CHARS:
        raise ScaffoldError(f"the service name is longer than {MAX_SERVICE_CHARS} characters")
    name = re.sub(r"[^a-z0-9]+", "_", service.lower()).strip("_")
    if not name:
        raise ScaffoldError(f"{service!r} has no letter or digit to make a role name from")
    if name[0].isdigit():
        name = f"service_{name}"
    return name


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        variable_start_string="[[",
        variable_end_string="]]",
        block_start_string="[%",
        block_end_string="%]",
        comment_start_string="[#",
        comment_end_string="#]",
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - YAML and Markdown, from normalised names only
    )


def plan_scaffold(service: str) -> Scaffold:
    """The files for `service`, rendered, not yet written."""
    role = role_name(service)
    name = role.replace("_", "-")
    environment = _environment()
    values = {
        "role": role,
        "name": name,
        # The galaxy schema wants tags of [a-z0-9] only.
        "galaxy_tag": role.replace("_", ""),
        "command": f"chiffon infra scaffold {name}",
    }
    files = {
        target.format(role=role, name=name): environment.get_template(template).render(values)
        for template, target in FILES.items()
    }
    return Scaffold(service=service, role=role, name=name, files=files)


def write_scaffold(scaffold: Scaffold, out: Path, *, force: bool = False) -> list[Path]:
    """Write the files below `out`; ScaffoldError (and nothing written) if one exists and
    not `force`. The paths written, in order."""
    targets = [out / relative for relative in scaffold.files]
    existing = [path for path in targets if path.exists()]
    if existing and not force:
        shown = ", ".join(str(path) for path in existing)
        raise ScaffoldError(f"would overwrite {shown} (pass --force to replace them)")
    for path, text in zip(targets, scaffold.files.values(), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return targets
