"""How a CLI command reaches Chiffon: through the gateway, with an API key.

There is no other way in: the gateway checks the key and its role, sizes and errors in
one place, for the CLI as for every other client. Where the gateway is and which key to
use is ``http_client.gateway_config``'s to find (flags, CHIFFON_* variables, the dev
stack's config file).
"""

from __future__ import annotations

from chiffon.cli.client import ChiffonClient, Unavailable
from chiffon.cli.http_client import gateway_client


async def open_client() -> ChiffonClient:
    """The gateway's client, or a clear refusal saying how to name a gateway and a key."""
    client = gateway_client(required=True)
    if client is None:  # required=True raises first; this keeps the type honest
        raise Unavailable("no gateway configured")
    return client
