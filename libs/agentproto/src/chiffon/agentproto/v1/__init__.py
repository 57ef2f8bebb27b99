"""Version 1 of the agent protocol (`chiffon.agent.v1` on the wire).

`agent_pb2` holds the messages, `agent_pb2_grpc` the client stub and the servicer base;
both are generated (see libs/agentproto/generate.py), with `.pyi` types from mypy-protobuf.
"""
