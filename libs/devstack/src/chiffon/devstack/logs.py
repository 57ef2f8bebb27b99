"""``chiffon logs``: the last lines of the stack's log files, and following them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from chiffon.devstack.servers import tail


def log_files(logs_dir: Path, name: str | None = None) -> dict[str, Path]:
    """Log files by label: all of them, or those of one name.

    ``executor`` matches every replica (executor-0, executor-1, ...); ``executor-1``
    matches one.
    """
    found = {path.stem: path for path in sorted(logs_dir.glob("*.log"))}
    if name is None:
        return found
    return {
        label: path
        for label, path in found.items()
        if label == name or (label.rsplit("-", 1)[0] == name and label.rsplit("-", 1)[-1].isdigit())
    }


def show(files: dict[str, Path], lines: int, say: Callable[[str], None]) -> None:
    prefix = len(files) > 1
    width = max((len(label) for label in files), default=0)
    for label, path in files.items():
        for line in tail(path, lines).splitlines():
            say(f"{label:<{width}} | {line}" if prefix else line)


def follow(
    files: dict[str, Path],
    say: Callable[[str], None],
    *,
    poll: float = 0.25,
    until: Callable[[], bool] = lambda: False,
) -> None:
    """Print lines appended to ``files`` as they come (like ``tail -F``), until ``until()``.

    A file that shrinks (truncated or replaced) is read again from its start.
    """
    prefix = len(files) > 1
    width = max((len(label) for label in files), default=0)
    offsets = {
        label: (path.stat().st_size if path.exists() else 0) for label, path in files.items()
    }
    partial = dict.fromkeys(files, "")
    while not until():
        for label, path in files.items():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size < offsets[label]:
                offsets[label] = 0
            if size == offsets[label]:
                continue
            with path.open("rb") as file:
                file.seek(offsets[label])
                chunk = file.read()
            offsets[label] += len(chunk)
            text = partial[label] + chunk.decode("utf-8", errors="replace")
            *complete, partial[label] = text.split("\n")
            for line in complete:
                say(f"{label:<{width}} | {line}" if prefix else line)
        time.sleep(poll)
