"""Which client answers a model string: the offline model or LiteLLM.

``chiffon/*`` models are answered in-process by the offline model, without LiteLLM: it
stands in for a provider so examples and tests run offline, and it must cost
microseconds, not LiteLLM's milliseconds, or it would hide Chiffon's own overhead. In
development (``offline_mode="auto"``), a model whose provider has no key in the
environment is answered offline too, with a warning; ``always`` answers everything
offline, ``never`` calls the provider whatever happens. The real provider path is tested
against an OpenAI-compatible HTTP server.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, replace

from chiffon.core.logging import get_logger
from chiffon.executor.models import offline
from chiffon.executor.models.base import ModelClient, ModelReply, ModelRequest
from chiffon.executor.models.litellm_client import LiteLlmClient
from chiffon.executor.models.offline import OfflineClient

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """How calls to one model string are made, worked out once per model."""

    client: ModelClient
    target: str  # the model the client calls (``chiffon/echo`` when offline stands in)
    provider: str
    in_process: bool


class ModelGateway:
    """Routes each call to the client that answers its model (see the module docstring)."""

    def __init__(self, *, offline_mode: str = "auto", environment: str = "development") -> None:
        self.offline_mode = offline_mode
        self.environment = environment
        self.offline = OfflineClient()
        self.litellm = LiteLlmClient()
        self._routes: dict[str, Route] = {}

    def setup(self) -> None:
        """Import and configure LiteLLM (seconds, once per process)."""
        self.litellm.setup()

    # -- which client answers --------------------------------------------------------

    def route(self, model: str) -> Route:
        found = self._routes.get(model)
        if found is None:
            found = self._routes[model] = self._route(model)
        return found

    def _route(self, model: str) -> Route:
        if model.startswith(f"{offline.PROVIDER}/"):
            return Route(self.offline, model, offline.PROVIDER, in_process=True)
        if self.offline_mode == "always":
            return self._offline_route()
        provider = self.litellm.provider_of(model)
        if (
            self.offline_mode == "auto"
            and self.environment != "production"
            and not self.litellm.has_credentials(model)
        ):
            log.warning(
                "llm.offline_model",
                model=model,
                answered_by=offline.MODEL,
                reason=f"no key for provider {provider!r} in the environment",
            )
            return self._offline_route()
        return Route(self.litellm, model, provider, in_process=False)

    def _offline_route(self) -> Route:
        return Route(self.offline, offline.MODEL, offline.PROVIDER, in_process=True)

    def resolve(self, model: str) -> tuple[str, str]:
        """(model to call, its provider): ``chiffon/echo`` when offline applies."""
        route = self.route(model)
        return route.target, route.provider

    def in_process(self, model: str) -> bool:
        """Whether the offline model answers ``model``: in microseconds, in this process."""
        return self.route(model).in_process

    # -- one call ---------------------------------------------------------------------

    def complete(self, request: ModelRequest) -> Awaitable[ModelReply]:
        """One call to one model by the client that answers it; ``ProviderError`` on any
        provider failure. Not a coroutine itself: the caller awaits the client's call
        directly, so routing adds no await to a node."""
        route = self.route(request.model)
        if route.target != request.model:
            request = replace(request, model=route.target)
        return route.client.complete(request)
