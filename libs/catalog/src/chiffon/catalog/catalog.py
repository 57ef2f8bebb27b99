"""A catalog: a folder of Ansible playbooks (and roles) an agent serves, with each
playbook's name, tags and description."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Playbook:
    name: str
    path: Path
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def load_catalog(root: Path) -> list[Playbook]:
    """Every playbook in the catalog folder (to be built)."""
    raise NotImplementedError
