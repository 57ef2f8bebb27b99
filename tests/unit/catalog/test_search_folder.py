"""A catalog folder kept searchable: embedded once, again only for the playbooks that
change (an edit, a new file, a removal), and the vectors kept on disk between processes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from chiffon.catalog.embedding import Embedder, shared_embedder
from chiffon.catalog.embedding_cache import default_cache_file, load_vectors
from chiffon.catalog.search import CatalogSearch

HOMELAB = Path(__file__).resolve().parents[2] / "fixtures" / "homelab_catalog"

MINECRAFT = """\
# description: Deploy a Minecraft Java server for friends, with nightly world backups
# tags: games
- name: Minecraft
  hosts: homelab
  tasks: []
"""


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return shared_embedder()


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    root = tmp_path / "catalog"
    shutil.copytree(HOMELAB, root)
    return root


def _touch_later(path: Path) -> None:
    """Move the file's modification time on: a filesystem with coarse timestamps could
    otherwise give an edit within the same tick the old time."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_the_catalog_is_embedded_once_for_many_searches(catalog: Path, embedder: Embedder) -> None:
    search = CatalogSearch(catalog, embedder)
    for query in ("deploy uptime monitor", "harden-ssh", "backup", "bake a cake"):
        search.search(query)

    assert search.builds == 1 and search.embedded == 16


def test_an_edited_playbook_is_embedded_again_and_only_it(
    catalog: Path, embedder: Embedder
) -> None:
    search = CatalogSearch(catalog, embedder)
    assert search.search("run a minecraft server").uncertain

    pihole = catalog / "playbooks" / "deploy-pihole.yml"
    pihole.write_text(MINECRAFT)
    _touch_later(pihole)
    result = search.search("run a minecraft server")

    assert result.best is not None and result.best.playbook.name == "deploy-pihole"
    assert not result.uncertain
    assert search.builds == 2 and search.embedded == 16 + 1


def test_a_new_playbook_is_found_and_a_removed_one_is_gone(
    catalog: Path, embedder: Embedder
) -> None:
    search = CatalogSearch(catalog, embedder)
    search.search("deploy uptime monitor")

    (catalog / "playbooks" / "deploy-minecraft.yml").write_text(MINECRAFT)
    (catalog / "playbooks" / "deploy-uptime-kuma.yml").unlink()

    found = search.search("run a minecraft server for my friends")
    assert found.best is not None and found.best.playbook.name == "deploy-minecraft"
    names = {m.playbook.name for m in search.search("deploy uptime monitor", limit=100).matches}
    assert "deploy-uptime-kuma" not in names and len(names) == 16
    assert search.embedded == 16 + 1


def test_the_vectors_outlive_the_process_in_the_cache_file(
    catalog: Path, tmp_path: Path, embedder: Embedder
) -> None:
    cache = tmp_path / "cache" / "catalog.npz"
    first = CatalogSearch(catalog, embedder, cache_file=cache)
    expected = first.search("deploy uptime monitor").as_dict()
    assert len(load_vectors(cache)) == 16

    second = CatalogSearch(catalog, embedder, cache_file=cache)
    assert second.search("deploy uptime monitor").as_dict() == expected
    assert second.embedded == 0


@pytest.mark.parametrize("content", [b"", b"not an npz file", b"PK\x03\x04 broken zip"])
def test_a_damaged_cache_file_only_costs_time(
    catalog: Path, tmp_path: Path, embedder: Embedder, content: bytes
) -> None:
    cache = tmp_path / "catalog.npz"
    cache.write_bytes(content)
    search = CatalogSearch(catalog, embedder, cache_file=cache)

    best = search.search("deploy uptime monitor").best
    assert best is not None and best.playbook.name == "deploy-uptime-kuma"
    assert search.embedded == 16
    assert len(load_vectors(cache)) == 16  # rewritten whole


def test_an_unwritable_cache_folder_only_costs_time(
    catalog: Path, tmp_path: Path, embedder: Embedder
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    search = CatalogSearch(catalog, embedder, cache_file=blocker / "catalog.npz")

    best = search.search("deploy uptime monitor").best
    assert best is not None and best.playbook.name == "deploy-uptime-kuma"


def test_the_default_cache_file_is_per_catalog_under_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    one, other = default_cache_file(tmp_path / "a"), default_cache_file(tmp_path / "b")

    assert one.parent == tmp_path / "xdg" / "chiffon" / "catalog"
    assert one != other and one == default_cache_file(tmp_path / "a")


def test_a_folder_without_playbooks_answers_no_best(tmp_path: Path, embedder: Embedder) -> None:
    result = CatalogSearch(tmp_path, embedder).search("deploy uptime monitor")

    assert result.as_dict() == {"best": None, "uncertain": True, "matches": []}
