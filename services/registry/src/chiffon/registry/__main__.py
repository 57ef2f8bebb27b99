"""Composition root of the registry: settings → telemetry → store → projections → servers."""

from __future__ import annotations

from chiffon.core.service import ServiceContext, run_service
from chiffon.core.settings import ChiffonSettings
from chiffon.projections.host import open_resources
from chiffon.registry.projections import AgentsProjection


async def serve(ctx: ServiceContext) -> None:
    async with open_resources(ctx) as resources:
        tasks = await resources.run_projections([AgentsProjection()])
        await ctx.stopping.wait()
        for task in tasks:
            task.cancel()


def main() -> None:
    run_service("registry", ChiffonSettings(), serve)


if __name__ == "__main__":
    main()
