"""Agent nodes on the executor's side: the directory of agents, routing, the gRPC client."""
