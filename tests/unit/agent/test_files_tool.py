"""The files tool in process, on a real directory: what a task may reach, and what it sees."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest

from chiffon.agent.tools.base import ToolContext, ToolRefused
from chiffon.agent.tools.files_tool import FilesTool


def _tool(*roots: Path, max_bytes: int = 1024) -> FilesTool:
    return FilesTool(tuple(os.path.realpath(root) for root in roots), max_bytes)


async def _run(tool: FilesTool, **arguments: Any) -> dict[str, Any]:
    ctx = ToolContext(
        task_id="t",
        timeout=10.0,
        cancelled=asyncio.get_running_loop().create_future(),
        on_line=lambda _stream, _text: None,
        scratch_root=Path("/nonexistent"),
    )
    result = await tool.run(arguments, ctx)
    assert result.ok
    return dict(result.output)


async def _refused(tool: FilesTool, **arguments: Any) -> ToolRefused:
    with pytest.raises(ToolRefused) as caught:
        await _run(tool, **arguments)
    return caught.value


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


async def test_write_then_read_then_list_round_trips_text(root: Path) -> None:
    tool = _tool(root)
    written = await _run(tool, action="write", path="notes/today.txt", content="héllo\n")
    assert written == {"path": f"{root}/notes/today.txt", "size": 7, "created": True}
    read = await _run(tool, action="read", path=f"{root}/notes/today.txt")
    assert read == {"path": f"{root}/notes/today.txt", "size": 7, "content": "héllo\n"}
    listed = await _run(tool, action="list", path="notes")
    assert listed["entries"] == [{"name": "today.txt", "type": "file", "size": 7}]
    assert listed["truncated"] is False
    top = await _run(tool, action="list")
    assert top["entries"] == [{"name": "notes", "type": "directory", "size": 0}]


async def test_bytes_that_are_not_utf8_travel_as_base64(root: Path) -> None:
    tool = _tool(root)
    blob = bytes(range(256))
    encoded = base64.b64encode(blob).decode()
    await _run(tool, action="write", path="blob.bin", content_base64=encoded)
    assert (root / "blob.bin").read_bytes() == blob
    read = await _run(tool, action="read", path="blob.bin")
    assert read == {"path": f"{root}/blob.bin", "size": 256, "content_base64": encoded}


async def test_a_write_replaces_the_file_whole_and_keeps_its_mode(root: Path) -> None:
    tool = _tool(root)
    target = root / "config.ini"
    target.write_text("old")
    target.chmod(0o600)
    written = await _run(tool, action="write", path="config.ini", content="new")
    assert written["created"] is False
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(root)) == ["config.ini"]  # no temporary file left


async def test_dot_dot_and_absolute_paths_out_of_the_roots_are_forbidden(root: Path) -> None:
    tool = _tool(root)
    for path in ("../../etc/passwd", "a/../../x", "/etc/passwd", f"{root}-sibling/x"):
        refused = await _refused(tool, action="read", path=path)
        assert refused.error_type == "forbidden", path


async def test_a_symlink_is_never_followed_even_to_the_root_of_the_machine(
    root: Path, tmp_path: Path
) -> None:
    tool = _tool(root)
    (root / "escape").symlink_to("/")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (root / "link.txt").symlink_to(outside)
    for action, path in (
        ("read", "escape/etc/passwd"),
        ("list", "escape"),
        ("read", "link.txt"),
        ("write", "escape/tmp/planted"),
    ):
        refused = await _refused(
            tool, action=action, path=path, **({"content": "x"} if action == "write" else {})
        )
        assert refused.error_type == "forbidden", (action, path)
    assert outside.read_text() == "secret"
    assert not os.path.exists("/tmp/planted")  # noqa: ASYNC240
    listed = await _run(tool, action="list")
    assert {"name": "escape", "type": "symlink", "size": 0} in listed["entries"]


async def test_a_directory_swapped_for_a_symlink_after_the_check_is_still_refused(
    root: Path,
) -> None:
    # The walk opens each component with O_NOFOLLOW: whatever `sub` is when it is opened
    # is what is used, so the swap (a directory, then a symlink to /) cannot escape.
    tool = _tool(root)
    (root / "sub").mkdir()
    (root / "sub" / "file").write_text("inside")
    assert (await _run(tool, action="read", path="sub/file"))["content"] == "inside"
    (root / "sub" / "file").unlink()
    (root / "sub").rmdir()
    (root / "sub").symlink_to("/etc")
    refused = await _refused(tool, action="read", path="sub/passwd")
    assert refused.error_type == "forbidden"


async def test_reads_and_writes_over_the_cap_are_limit_exceeded(root: Path) -> None:
    tool = _tool(root, max_bytes=100)
    (root / "big").write_bytes(b"x" * 101)
    assert (await _refused(tool, action="read", path="big")).error_type == "limit_exceeded"
    refused = await _refused(tool, action="write", path="new", content="y" * 101)
    assert refused.error_type == "limit_exceeded"
    assert not (root / "new").exists()


async def test_a_second_root_is_reached_by_its_absolute_path(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("A")
    tool = _tool(root, other)
    assert (await _run(tool, action="read", path=f"{other}/a.txt"))["content"] == "A"


async def test_malformed_tasks_are_invalid_arguments(root: Path) -> None:
    tool = _tool(root)
    (root / "d").mkdir()
    for arguments in (
        {"action": "delete", "path": "x"},
        {"action": "read"},
        {"action": "read", "path": "d"},
        {"action": "write", "path": "x"},
        {"action": "write", "path": "x", "content": "a", "content_base64": "YQ=="},
        {"action": "write", "path": "x", "content_base64": "not base64!"},
        {"action": "write", "path": "d", "content": "a"},
        {"action": "read", "path": "x", "mode": "r"},
    ):
        refused = await _refused(tool, **arguments)
        assert refused.error_type == "invalid_arguments", arguments


async def test_a_missing_file_is_not_found_and_no_roots_refuses_everything(root: Path) -> None:
    assert (await _refused(_tool(root), action="read", path="nope")).error_type == "not_found"
    refused = await _refused(FilesTool((), 1024), action="list")
    assert refused.error_type == "forbidden"
