"""A worker process of a parallel rebuild (started by ``parallel.start_workers``).

It folds the share of the stream that the rebuilding process hands it on stdin
(``handoff`` frames) into the side schema, and exits 0 once the end frame came and
everything is written; non-zero if the pipe ended early or a batch failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from chiffon.core.db import create_engine
from chiffon.core.runtime import tune_gc
from chiffon.events import CATALOG
from chiffon.projections import handoff
from chiffon.projections.parallel import ENV, fold
from chiffon.projections.plugins import projection_named

# Let the pipe be read on while a batch is written to PostgreSQL.
READ_BUFFER = 8 * 1024 * 1024


async def _work(job: dict[str, Any]) -> None:
    projection = projection_named(job["projection"])()
    engine = create_engine(job["dsn"], pool_size=1, max_overflow=0)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_BUFFER)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    try:
        while (batch := await handoff.read_frame(reader)) is not None:
            events = [message.decode(CATALOG, job["stream"]) for message in batch]
            await fold(engine, projection, job["schema"], events)
    finally:
        await engine.dispose()


def main() -> None:
    tune_gc()
    try:
        asyncio.run(_work(json.loads(os.environ[ENV])))
    except handoff.HandoffBroken as error:
        sys.exit(f"rebuild worker: {error}")


if __name__ == "__main__":
    main()
