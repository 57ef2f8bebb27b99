"""The agent protocol's generated gRPC stubs, shared by the executor and the agent.

Services never import each other, so the stubs live in this lib rather than in the agent
service. `v1` holds the modules generated from proto/chiffon/agentproto/v1/agent.proto by
`./taskw proto`; they are committed and must not be edited by hand.
"""
