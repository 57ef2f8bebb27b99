"""The http tool in a real agent process, over gRPC: SSRF refused, a local stand-in served.

Two agents for the module: `fenced` as an operator starts one (allow-listed hosts only,
no private network opened), for the hostile requests; `homelab` with 127.0.0.1/32 opened
(CHIFFON_AGENT_HTTP_ALLOW_NETWORKS), for the success path and the redirect that tries to
leave it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from tests.integration.agent.conftest import AgentProcess, start_agent, stop_agent
from tests.support.http_standin import StandIn, stand_in

ALLOW_HOSTS = "127.0.0.1,127.0.0.2,localhost,169.254.169.254,10.0.0.1,[fd00:ec2::254]"


def _stop(agent: AgentProcess) -> None:
    stop_agent(agent)


@pytest.fixture(scope="module")
def fenced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = start_agent(
        tmp_path_factory.mktemp("fenced"),
        CHIFFON_AGENT_CAPABILITIES="shell,http",
        CHIFFON_AGENT_HTTP_ALLOW_HOSTS=ALLOW_HOSTS,
    )
    yield agent
    _stop(agent)


@pytest.fixture(scope="module")
def homelab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = start_agent(
        tmp_path_factory.mktemp("homelab"),
        CHIFFON_AGENT_CAPABILITIES="http",
        CHIFFON_AGENT_HTTP_ALLOW_HOSTS=ALLOW_HOSTS,
        CHIFFON_AGENT_HTTP_ALLOW_NETWORKS="127.0.0.1/32",
    )
    yield agent
    _stop(agent)


@pytest.fixture(scope="module")
def server() -> Iterator[StandIn]:
    with stand_in() as running:
        yield running


@pytest.fixture(scope="module")
def private_server() -> Iterator[StandIn]:
    """A server on 127.0.0.2: loopback, outside the homelab agent's 127.0.0.1/32."""
    with stand_in("127.0.0.2") as running:
        yield running


class Caller:
    def __init__(self, agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub) -> None:
        self.agent = agent
        self.stub = stub

    async def __call__(
        self, tool: str, timeout: float = 0.0, **arguments: Any
    ) -> agent_pb2.TaskResult:
        task_id = f"http-test:{tool}:{uuid.uuid4().hex}"
        struct = struct_pb2.Struct()
        struct.update(arguments)
        request = agent_pb2.ExecuteRequest(
            task_id=task_id, tool=tool, arguments=struct, timeout_seconds=timeout
        )
        async for update in self.stub.Execute(
            request, metadata=self.agent.token(task_id), timeout=30
        ):
            if update.WhichOneof("update") == "result":
                return update.result
        raise AssertionError("the stream ended without a result")


@pytest.fixture
async def fenced_call(fenced: AgentProcess) -> AsyncIterator[Caller]:
    async with grpc.aio.insecure_channel(fenced.address) as channel:
        yield Caller(fenced, agent_pb2_grpc.AgentStub(channel))


@pytest.fixture
async def homelab_call(homelab: AgentProcess) -> AsyncIterator[Caller]:
    async with grpc.aio.insecure_channel(homelab.address) as channel:
        yield Caller(homelab, agent_pb2_grpc.AgentStub(channel))


def _output(result: agent_pb2.TaskResult) -> dict[str, Any]:
    return json_format.MessageToDict(result.output)


async def _still_serving(call: Caller) -> None:
    result = await call("shell", command="echo still here")
    assert result.ok and _output(result)["stdout"] == "still here\n"


async def test_the_metadata_address_is_refused(fenced_call: Caller) -> None:
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"):
        result = await fenced_call("http", url=url)
        assert not result.ok and result.error_type == "forbidden", result
        assert result.error_message.endswith("is a cloud metadata address")
    await _still_serving(fenced_call)


async def test_loopback_is_refused_and_never_connected(
    fenced_call: Caller, server: StandIn
) -> None:
    result = await fenced_call("http", url="http://127.0.0.1:4222/")
    assert (result.error_type, result.error_message) == (
        "forbidden",
        "127.0.0.1 is a loopback address",
    )
    before = server.connections
    for url in (server.url("/echo"), server.url("/echo", "localhost")):
        result = await fenced_call("http", url=url)
        assert not result.ok and result.error_type == "forbidden", result
    assert server.connections == before
    await _still_serving(fenced_call)


async def test_a_host_off_the_allow_list_is_refused(fenced_call: Caller) -> None:
    result = await fenced_call("http", url="http://example.com/")
    assert result.error_type == "forbidden"
    assert result.error_message == (
        "host 'example.com' refused: it is not on CHIFFON_AGENT_HTTP_ALLOW_HOSTS"
    )


async def test_an_opened_network_is_served(homelab_call: Caller, server: StandIn) -> None:
    result = await homelab_call(
        "http", method="POST", url=server.url("/echo"), body={"service": "uptime-kuma"}
    )
    assert result.ok, result
    output = _output(result)
    assert output["status"] == 200.0
    assert output["json"]["method"] == "POST"
    assert output["json"]["body"] == '{"service":"uptime-kuma"}'


async def test_a_redirect_to_a_private_address_is_refused_at_the_hop(
    homelab_call: Caller, server: StandIn, private_server: StandIn
) -> None:
    hops = {
        private_server.url("/echo"): "127.0.0.2 is a loopback address",
        "http://10.0.0.1/admin": "10.0.0.1 is a private address",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a cloud metadata address",
    }
    for target, reason in hops.items():
        result = await homelab_call("http", url=server.url(f"/redirect?to={target}"))
        assert (result.error_type, result.error_message) == ("forbidden", reason)
    assert private_server.connections == 0
    result = await homelab_call("http", url=server.url("/echo"))
    assert result.ok


async def test_caps_on_size_and_time_hold_in_the_agent(
    homelab_call: Caller, server: StandIn
) -> None:
    big = await homelab_call("http", url=server.url(f"/stream/{2 << 20}"))
    assert big.error_type == "limit_exceeded"
    assert big.error_message.endswith("answered over the 1048576-byte cap")
    hung = await homelab_call("http", timeout=0.5, url=server.url("/hang"))
    assert (hung.error_type, hung.error_message) == ("timeout", "no complete answer within 0.5 s")
    result = await homelab_call("http", url=server.url("/echo"))
    assert result.ok
