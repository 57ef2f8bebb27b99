"""A catalog: a folder of Ansible playbooks (and roles) an agent serves, with each
playbook's name, tags and description.

The format (documented in docs/tools.md, `## ansible`):

    CATALOG/
      playbooks/deploy-uptime-kuma.yml    one playbook per file (.yml or .yaml)
      roles/uptime_kuma/...               roles the playbooks use (Ansible finds them
                                          beside the playbooks' folder: see ROLES_DIR)

- name: the file's stem (`deploy-uptime-kuma`); letters, digits, `.`, `_`, `-`, starting
  with a letter or digit (NAME_PATTERN), so a name can never be a path.
- description: a `# description: ...` line in the comment header at the top of the file,
  else the first play's `name:`.
- tags: a `# tags: a, b` line in the header, else the first play's `vars: {catalog_tags: [...]}`
  (both are merged when both are given), lowercased, duplicates dropped.

A file that is not a playbook (bad YAML, not a list of plays, too large, a symlink out of the
catalog, a name that is not a NAME_PATTERN) is skipped with a reason `scan_catalog` returns,
never an exception: one bad file must not take the whole catalog down.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# types-PyYAML is not among the dev dependencies: yaml is untyped here.
import yaml  # type: ignore[import-untyped]

PLAYBOOKS_DIR = "playbooks"
ROLES_DIR = "roles"
PLAYBOOK_SUFFIXES = (".yml", ".yaml")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A playbook is a few KiB; a cap keeps one huge (or hostile) file from stalling a scan.
MAX_PLAYBOOK_BYTES = 1024 * 1024
_HEADER_FIELD = re.compile(r"#\s*(description|tags)\s*:\s*(.*)", re.IGNORECASE)


@dataclass(frozen=True)
class Playbook:
    name: str
    path: Path
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    # The names of the plays in the file, in order: what "the plan" of a run shows.
    plays: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class CatalogScan:
    playbooks: list[Playbook]
    skipped: list[SkippedFile]


class PlaybookNotFound(LookupError):
    """The name is not a playbook of the catalog (or is not a name at all)."""


class _AnsibleYamlLoader(yaml.SafeLoader):  # type: ignore[misc]
    """A safe loader that also reads Ansible's own tags (`!unsafe`, `!vault`, ...) as plain
    values: the catalog needs the play names and vars, not what the tags mean."""


def _construct_tagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return None


_AnsibleYamlLoader.add_multi_constructor("!", _construct_tagged)


def is_playbook_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


def scan_catalog(root: Path) -> CatalogScan:
    """Every playbook in `root/playbooks`, sorted by name, and the files skipped with why."""
    folder = root / PLAYBOOKS_DIR
    if not folder.is_dir():
        return CatalogScan([], [SkippedFile(folder, "the catalog has no playbooks/ folder")])
    real_folder = folder.resolve()
    playbooks: dict[str, Playbook] = {}
    skipped: list[SkippedFile] = []
    for path in sorted(folder.iterdir()):
        if path.suffix not in PLAYBOOK_SUFFIXES:
            continue
        try:
            playbook = _read_playbook(path, real_folder)
        except _Skip as skip:
            skipped.append(SkippedFile(path, str(skip)))
            continue
        if playbook.name in playbooks:
            other = playbooks[playbook.name].path.name
            skipped.append(
                SkippedFile(path, f"another file ({other}) has the name {playbook.name!r}")
            )
            continue
        playbooks[playbook.name] = playbook
    return CatalogScan(sorted(playbooks.values(), key=lambda p: p.name), skipped)


def load_catalog(root: Path) -> list[Playbook]:
    """Every readable playbook of the catalog (see `scan_catalog` for the skipped files)."""
    return scan_catalog(root).playbooks


def find_playbook(root: Path, name: str) -> Playbook:
    """The playbook called `name`; a path, a name with `..` or `/`, or an unknown name raise
    PlaybookNotFound. The file is read again, so an edit to the catalog is seen at once."""
    if not is_playbook_name(name) or ".." in name:
        raise PlaybookNotFound(f"{name!r} is not a playbook name (letters, digits, '.', '_', '-')")
    folder = root / PLAYBOOKS_DIR
    real_folder = folder.resolve()
    for suffix in PLAYBOOK_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if path.is_file():
            try:
                return _read_playbook(path, real_folder)
            except _Skip as skip:
                raise PlaybookNotFound(f"playbook {name!r} cannot be used: {skip}") from None
    raise PlaybookNotFound(f"no playbook {name!r} in the catalog")


class _Skip(Exception):
    pass


def _read_playbook(path: Path, real_folder: Path) -> Playbook:
    name = path.stem
    if not is_playbook_name(name) or ".." in name:
        raise _Skip(f"{name!r} is not a playbook name (letters, digits, '.', '_', '-')")
    real = path.resolve()
    if real.parent != real_folder:
        raise _Skip("a link that leads out of the catalog's playbooks/ folder")
    if not real.is_file():
        raise _Skip("not a regular file")
    if real.stat().st_size > MAX_PLAYBOOK_BYTES:
        raise _Skip(f"larger than {MAX_PLAYBOOK_BYTES} bytes")
    try:
        text = real.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise _Skip(f"unreadable: {error}") from None
    try:
        document = yaml.load(text, Loader=_AnsibleYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise _Skip(f"not valid YAML: {_one_line(str(error))}") from None
    plays = _plays(document)
    header = _header(text)
    first_vars = plays[0].get("vars")
    vars_tags = first_vars.get("catalog_tags") if isinstance(first_vars, Mapping) else None
    description = header.get("description") or _text(plays[0].get("name"))
    tags = _tags(header.get("tags", "").split(",")) + _tags(vars_tags)
    return Playbook(
        name=name,
        path=path,
        description=description,
        tags=tuple(dict.fromkeys(tags)),
        plays=tuple(_text(play.get("name")) for play in plays),
    )


def _plays(document: object) -> list[Mapping[str, Any]]:
    if not isinstance(document, list) or not document:
        raise _Skip("not a playbook: the file must be a list of plays")
    if not all(isinstance(play, Mapping) for play in document):
        raise _Skip("not a playbook: every item of the list must be a play (a mapping)")
    plays: list[Mapping[str, Any]] = document
    if not any(("hosts" in play or "import_playbook" in play) for play in plays):
        raise _Skip("not a playbook: no play has `hosts:`")
    return plays


def _header(text: str) -> dict[str, str]:
    """`# description:` and `# tags:` lines of the comment block at the top of the file."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in ("", "---"):
            continue
        if not stripped.startswith("#"):
            break
        match = _HEADER_FIELD.fullmatch(stripped)
        if match:
            fields.setdefault(match.group(1).lower(), match.group(2).strip())
    return fields


def _tags(raw: object) -> list[str]:
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list):
        return []
    return [tag for tag in (_text(item).strip().lower() for item in raw) if tag]


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
