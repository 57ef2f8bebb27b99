"""Composition root of the cost service: settings → telemetry → store → servers."""

from __future__ import annotations

from chiffon.core.service import ServiceContext, run_service
from chiffon.core.settings import ChiffonSettings
from chiffon.projections.host import open_resources


async def serve(ctx: ServiceContext) -> None:
    async with open_resources(ctx):
        await ctx.stopping.wait()


def main() -> None:
    run_service("cost", ChiffonSettings(), serve)


if __name__ == "__main__":
    main()
