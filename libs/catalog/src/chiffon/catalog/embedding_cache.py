"""Playbook embeddings kept on disk between processes, by the text that was embedded.

Embedding a catalog is the slow part of a first search (500 playbooks: about 12 s on 2
cores; reading the cache back: a few ms), and `chiffon infra search` is a new process each
time. The cache maps each embedded text to its vector, so an edited playbook (a new text)
misses and is embedded again while the others are reused, and a stale entry can never be
served for a changed playbook. A missing, unreadable or foreign file is an empty cache,
never an error: the cache only saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from chiffon.catalog.embedding import DIMENSION, MODEL_ID

if TYPE_CHECKING:
    from chiffon.catalog.embedding import Vectors


def default_cache_file(root: Path, cache_dir: Path | None = None) -> Path:
    """`<cache_dir>/<hash of the catalog's path>.npz`: one file per catalog folder. The
    folder defaults to `$XDG_CACHE_HOME/chiffon/catalog` (~/.cache by default); an agent
    passes one under its own scratch folder."""
    if cache_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache_dir = Path(base) / "chiffon" / "catalog"
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]
    return cache_dir / f"{key}.npz"


def load_vectors(path: Path) -> dict[str, Vectors]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["model"]) != MODEL_ID:
                return {}
            texts, vectors = stored["texts"], stored["vectors"]
            if vectors.ndim != 2 or vectors.shape != (len(texts), DIMENSION):
                return {}
            return {str(t): v.astype(np.float32) for t, v in zip(texts, vectors, strict=True)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return {}


def save_vectors(path: Path, vectors: dict[str, Vectors]) -> None:
    """Write atomically (a temporary file renamed over the old one); a failure is ignored."""
    import numpy as np

    texts = list(vectors)
    stacked = (
        np.stack([vectors[t] for t in texts]) if texts else np.zeros((0, DIMENSION), np.float32)
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(
                out, model=np.array(MODEL_ID), texts=np.array(texts, dtype=str), vectors=stacked
            )
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
