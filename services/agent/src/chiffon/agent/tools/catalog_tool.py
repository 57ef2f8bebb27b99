"""The catalog tool: search the agent's playbook catalog (names and tags, then embeddings).

    task: {tool: catalog, query: "deploy uptime monitor", limit: 5, threshold: 0.85}
    -> {best: "deploy-uptime-kuma" | null, uncertain: false,
        matches: [{name, description, tags, confidence, uncertain, matched_by}, ...]}

`best` is the first match (null only for an empty catalog); `uncertain` is true when that
match is under the threshold, so a workflow asks before it runs it. The model loads on the
first task (about 2 s), once per agent process; the catalog's embeddings are computed once
(and kept in the agent's scratch folder across restarts), and again only for the playbooks
that change. A search runs in a worker thread, so the agent's event loop keeps serving
other tasks meanwhile (onnxruntime releases the GIL while it computes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chiffon.agent.tools.base import (
    INVALID_ARGUMENTS,
    TIMEOUT,
    Tool,
    ToolContext,
    ToolRefused,
    ToolResult,
)
from chiffon.catalog.embedding import ModelUnavailable
from chiffon.catalog.embedding_cache import default_cache_file
from chiffon.catalog.search import (
    DEFAULT_LIMIT,
    DEFAULT_THRESHOLD,
    CatalogSearch,
    InvalidQuery,
)

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings

ARGUMENTS = frozenset({"query", "limit", "threshold"})


def _consume(search: asyncio.Future[Any]) -> None:
    """Retrieve a late search's outcome, so its exception is not reported as never read."""
    if not search.cancelled():
        search.exception()


def _whole(value: Any) -> Any:
    # The task's arguments arrive through a protobuf Struct, where every number is a
    # double: 5.0 is the limit 5 (2.5 stays 2.5, and is refused).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class CatalogTool:
    name = "catalog"

    def __init__(self, catalog_dir: Path) -> None:
        self._catalog_dir = catalog_dir
        self._catalog: CatalogSearch | None = None

    def _search(self, scratch_root: Path) -> CatalogSearch:
        # Opened on the first task, whose context names the agent's scratch folder: the
        # vectors are cached there (an agent writes nowhere else), across restarts.
        if self._catalog is None:
            cache = default_cache_file(self._catalog_dir, scratch_root / "catalog-vectors")
            self._catalog = CatalogSearch(self._catalog_dir, cache_file=cache)
        return self._catalog

    async def run(self, arguments: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        unknown = sorted(set(arguments) - ARGUMENTS)
        if unknown:
            raise ToolRefused(
                INVALID_ARGUMENTS,
                f"unknown argument(s) {', '.join(repr(k[:40]) for k in unknown[:5])}: "
                "the catalog tool takes "
                "query, limit and threshold",
            )
        query = arguments.get("query")
        if not isinstance(query, str):
            raise ToolRefused(
                INVALID_ARGUMENTS, "query is missing or not text: say what the playbook should do"
            )
        limit = _whole(arguments.get("limit", DEFAULT_LIMIT))
        threshold = arguments.get("threshold", DEFAULT_THRESHOLD)
        started = time.perf_counter()
        search = asyncio.ensure_future(
            asyncio.to_thread(
                self._search(ctx.scratch_root).search, query, limit=limit, threshold=threshold
            )
        )
        # A thread cannot be stopped: on a timeout or a cancel the search finishes in the
        # background (and a first index it was building serves the next task).
        waited: set[asyncio.Future[Any]] = {search, ctx.cancelled}
        await asyncio.wait(waited, timeout=ctx.timeout, return_when=asyncio.FIRST_COMPLETED)
        if not search.done():
            search.add_done_callback(_consume)
            if ctx.cancelled.done():
                return ToolResult.failed("cancelled", "the task was cancelled")
            raise ToolRefused(
                TIMEOUT,
                f"no answer within {ctx.timeout:g} s (a catalog's first search embeds every "
                "playbook: about 25 ms of CPU each)",
            )
        try:
            result = search.result()
        except InvalidQuery as error:
            raise ToolRefused(INVALID_ARGUMENTS, str(error)) from None
        except ModelUnavailable as error:
            return ToolResult.failed("model_unavailable", str(error))
        return ToolResult(
            ok=True,
            output=result.as_dict(),
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    async def close(self) -> None:
        """Nothing to release: the model is the process's and ends with it."""


def build(settings: AgentSettings) -> Tool | None:
    """The catalog tool over settings.agent_catalog_dir; an agent offering `catalog`
    without a catalog folder refuses to start (a tool that refused every task would look
    healthy to the registry)."""
    if settings.agent_catalog_dir is None:
        raise ValueError(
            "the catalog capability needs CHIFFON_AGENT_CATALOG_DIR (--catalog): "
            "the folder of playbooks to search"
        )
    if not settings.agent_catalog_dir.is_dir():
        raise ValueError(f"CHIFFON_AGENT_CATALOG_DIR {settings.agent_catalog_dir} is not a folder")
    return CatalogTool(settings.agent_catalog_dir)
