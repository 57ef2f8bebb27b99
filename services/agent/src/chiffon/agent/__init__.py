"""The agent service: the agent runtime: executes tasks sent over gRPC."""
