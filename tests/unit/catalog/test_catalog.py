"""The catalog format: names, descriptions and tags read from a folder of playbooks; bad
files skipped with a reason, never a crash; a name is never a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from chiffon.catalog.catalog import PlaybookNotFound, find_playbook, load_catalog, scan_catalog

HEADER_PLAYBOOK = """\
---
# description: Deploy Uptime Kuma, a self-hosted uptime monitor
# tags: monitoring, Uptime
- name: Uptime Kuma
  hosts: all
  vars:
    catalog_tags: [docker, monitoring]
  tasks: []
- name: Check it answers
  hosts: all
  tasks: []
"""

VARS_PLAYBOOK = """\
- name: Back up the NAS
  hosts: nas
  vars:
    catalog_tags: [backup, storage]
    secret: !unsafe "{{ not a template }}"
  tasks: []
"""


def _catalog(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return tmp_path


def test_header_and_first_play_give_description_tags_and_plays(tmp_path: Path) -> None:
    root = _catalog(
        tmp_path, {"deploy-uptime-kuma.yml": HEADER_PLAYBOOK, "backup.yaml": VARS_PLAYBOOK}
    )

    kuma, backup = sorted(load_catalog(root), key=lambda p: p.name, reverse=True)

    assert kuma.name == "deploy-uptime-kuma"
    assert kuma.description == "Deploy Uptime Kuma, a self-hosted uptime monitor"
    assert kuma.tags == ("monitoring", "uptime", "docker")
    assert kuma.plays == ("Uptime Kuma", "Check it answers")
    assert backup.description == "Back up the NAS"
    assert backup.tags == ("backup", "storage")
    assert backup.path == root / "playbooks" / "backup.yaml"


def test_bad_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    root = _catalog(
        tmp_path,
        {
            "good.yml": VARS_PLAYBOOK,
            "broken.yml": "- name: [unclosed\n",
            "mapping.yml": "name: not a list\n",
            "no-hosts.yml": "- name: tasks file\n  debug: {msg: hi}\n",
            "good.yaml": VARS_PLAYBOOK,
            "notes.txt": "ignored: not a playbook suffix",
        },
    )
    (root / "playbooks" / "escape.yml").symlink_to("/etc/hostname")

    scan = scan_catalog(root)

    assert [p.name for p in scan.playbooks] == ["good"]
    reasons = {skipped.path.name: skipped.reason for skipped in scan.skipped}
    assert set(reasons) == {"broken.yml", "mapping.yml", "no-hosts.yml", "good.yml", "escape.yml"}
    assert reasons["broken.yml"].startswith("not valid YAML")
    assert "list of plays" in reasons["mapping.yml"]
    assert "hosts" in reasons["no-hosts.yml"]
    assert "another file (good.yaml)" in reasons["good.yml"]
    assert "out of the catalog" in reasons["escape.yml"]


def test_a_folder_without_playbooks_is_an_empty_catalog_with_a_reason(tmp_path: Path) -> None:
    scan = scan_catalog(tmp_path)
    assert scan.playbooks == []
    assert "no playbooks/ folder" in scan.skipped[0].reason


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "..", "a/b", "/etc/passwd", "", "x..y", "good.yml"]
)
def test_find_playbook_refuses_anything_but_a_catalog_name(tmp_path: Path, name: str) -> None:
    root = _catalog(tmp_path, {"good.yml": VARS_PLAYBOOK})
    assert find_playbook(root, "good").name == "good"
    with pytest.raises(PlaybookNotFound):
        find_playbook(root, name)
