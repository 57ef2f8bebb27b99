"""Opening a path beneath a root, one component at a time, never following a symlink.

A check then an open (resolve the path, compare with the root, open it) leaves a window in
which a directory can be swapped for a symlink to /. Here every component is opened
relative to its parent's descriptor (openat) with O_NOFOLLOW, so what is opened is what was
checked: a symlink anywhere in the path fails the open itself (ELOOP, or ENOTDIR for an
O_PATH|O_DIRECTORY open), whatever it points at, even inside the root. `..` is refused
before anything is opened, and the root itself is the only absolute start.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import PurePosixPath

from chiffon.agent.tools.base import FORBIDDEN, INVALID_ARGUMENTS, ToolRefused

DIRECTORY_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Target:
    """A path the task named, split into its root and the components beneath it."""

    root: str
    parts: tuple[str, ...]

    @property
    def display(self) -> str:
        return str(PurePosixPath(self.root, *self.parts))


def locate(path: str, roots: tuple[str, ...]) -> Target:
    """The root `path` lies under and its components; ToolRefused if it lies under none.

    A relative path is taken under the first root. `..` is refused outright: a component
    that climbs is never needed to name a file beneath a root."""
    if not isinstance(path, str) or "\x00" in path:
        raise ToolRefused(INVALID_ARGUMENTS, "path must be a string without NUL characters")
    if not roots:
        raise ToolRefused(FORBIDDEN, "this agent has no files roots (CHIFFON_AGENT_FILES_ROOTS)")
    parts = tuple(part for part in path.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ToolRefused(FORBIDDEN, f"{path!r}: '..' is not allowed in a path")
    if not path.startswith("/"):
        return Target(roots[0], parts)
    for root in roots:
        root_parts = tuple(part for part in root.split("/") if part)
        if parts[: len(root_parts)] == root_parts:
            return Target(root, parts[len(root_parts) :])
    raise ToolRefused(FORBIDDEN, f"{path!r} is outside this agent's files roots")


def refusal(error: OSError, target: Target, component: str) -> ToolRefused:
    if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return ToolRefused(
            FORBIDDEN,
            f"{target.display}: {component!r} is a symlink or not a directory "
            "(symlinks are not followed beneath a files root)",
        )
    if error.errno == errno.ENOENT:
        return ToolRefused("not_found", f"{target.display}: {component!r} does not exist")
    if error.errno in (errno.EACCES, errno.EPERM):
        return ToolRefused(FORBIDDEN, f"{target.display}: permission denied at {component!r}")
    return ToolRefused("io_error", f"{target.display}: {error.strerror}")


def open_parent(target: Target, *, create: bool = False) -> int:
    """A descriptor (O_PATH, the caller closes it) of the directory holding `target`'s last
    component; with `create`, missing directories on the way are made (0755)."""
    return _walk(target, target.parts[:-1], create=create)


def open_directory(target: Target) -> int:
    """A descriptor (O_PATH, the caller closes it) of `target` itself as a directory."""
    return _walk(target, target.parts, create=False)


def _walk(target: Target, parts: tuple[str, ...], *, create: bool) -> int:
    try:
        # The root was resolved when the agent started; a symlink swapped in for it since
        # is refused like any other.
        fd = os.open(target.root, DIRECTORY_FLAGS)
    except OSError as error:
        raise ToolRefused("io_error", f"files root {target.root}: {error.strerror}") from None
    for part in parts:
        try:
            child = _open_child(fd, part, create=create)
        except OSError as error:
            os.close(fd)
            raise refusal(error, target, part) from None
        os.close(fd)
        fd = child
    return fd


def _open_child(fd: int, part: str, *, create: bool) -> int:
    try:
        return os.open(part, DIRECTORY_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
    try:
        os.mkdir(part, 0o755, dir_fd=fd)
    except FileExistsError:
        pass  # made meanwhile: the open below checks what it is
    return os.open(part, DIRECTORY_FLAGS, dir_fd=fd)
