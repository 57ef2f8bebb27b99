"""Model clients behind one interface (``ModelClient``): the offline model and LiteLLM,
chosen per model string by the ``ModelGateway``."""

from chiffon.executor.models.base import ModelClient, ModelReply, ModelRequest, ProviderError
from chiffon.executor.models.gateway import ModelGateway, Route

__all__ = [
    "ModelClient",
    "ModelGateway",
    "ModelReply",
    "ModelRequest",
    "ProviderError",
    "Route",
]
