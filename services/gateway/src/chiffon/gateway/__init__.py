"""The gateway service: the public REST, SSE and dashboard entry."""
