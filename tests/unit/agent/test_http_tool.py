"""The http tool in process against a real local server: fences, redirects, caps.

Names are resolved by a stand-in resolver (a dict), so a test can make `api.test` answer
any address, which is what a hostile DNS zone does. A real agent process runs the same
hostile requests in tests/integration/agent/test_tool_http.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chiffon.agent.tools.base import ToolContext, ToolRefused, ToolResult
from chiffon.agent.tools.http_fence import AddressFence, HostAllowList, parse_networks
from chiffon.agent.tools.http_tool import MAX_REDIRECTS, HttpTool
from tests.support.fixtures import eventually
from tests.support.http_standin import StandIn, certificate_authority, stand_in

REFUSED = [
    "127.0.0.1",
    "127.255.255.254",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT
    "169.254.169.254",  # metadata
    "169.254.1.1",  # link-local
    "168.63.129.16",  # Azure's wire server: a public address, still metadata
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "198.18.0.1",
    "192.0.2.1",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fd00:ec2::254",  # metadata over IPv6
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # IPv4-compatible (deprecated) loopback
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2001::1",  # Teredo
    "2001:db8::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert AddressFence().refusal(address) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert AddressFence().refusal(address) is None


def test_an_operator_network_opens_its_addresses_and_never_the_metadata_ones() -> None:
    fence = AddressFence(parse_networks(["127.0.0.1/32", "169.254.0.0/16", "fd00::/8"]))
    assert fence.refusal("127.0.0.1") is None
    assert fence.refusal("::ffff:127.0.0.1") is None
    assert fence.refusal("127.0.0.2") == "127.0.0.2 is a loopback address"
    assert fence.refusal("169.254.1.1") is None
    assert fence.refusal("169.254.169.254") == "169.254.169.254 is a cloud metadata address"
    assert fence.refusal("fd00:ec2::254") == "fd00:ec2::254 is a cloud metadata address"
    everything = AddressFence(parse_networks(["0.0.0.0/0", "::/0"]))
    assert everything.refusal("10.0.0.1") is None
    assert everything.refusal("169.254.169.254") is not None
    assert everything.refusal("::ffff:169.254.169.254") is not None


def test_the_host_allow_list_matches_names_and_subdomains_only() -> None:
    hosts = HostAllowList.of(["API.example.com", "*.internal.test"])
    assert hosts.allows("api.example.com")
    assert hosts.allows("Api.Example.Com.")
    assert hosts.allows("a.internal.test") and hosts.allows("a.b.internal.test")
    assert not hosts.allows("internal.test")  # *.domain is beneath the domain only
    assert not hosts.allows("xinternal.test")
    assert not hosts.allows("api.example.com.evil.test")
    assert not HostAllowList.of([]).allows("api.example.com")
    assert HostAllowList.of(["*"]).allows("anything.test")


class Resolver:
    """A DNS stand-in: name -> answers; counts the questions."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.answers.get(host, [host])


def _ctx(tmp_path: Path, timeout: float = 10.0) -> ToolContext:
    return ToolContext(
        task_id="t",
        timeout=timeout,
        cancelled=asyncio.get_running_loop().create_future(),
        on_line=lambda stream, text: None,
        scratch_root=tmp_path,
    )


def _tool(resolver: Resolver, *, networks: str = "127.0.0.1/32", **options: Any) -> HttpTool:
    settings: dict[str, Any] = {
        "allow_hosts": HostAllowList.of(["api.test", "other.test", "127.0.0.1", "127.0.0.2"]),
        "fence": AddressFence(parse_networks(networks.split(",") if networks else [])),
        "max_bytes": 1 << 20,
        "timeout": 10.0,
        "resolver": resolver,
    }
    settings.update(options)
    return HttpTool(**settings)


@pytest.fixture(scope="module")
def server() -> Iterator[StandIn]:
    with stand_in() as running:
        yield running


@pytest.fixture
async def resolver() -> Resolver:
    return Resolver({"api.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})


@pytest.fixture
async def tool(resolver: Resolver) -> AsyncIterator[HttpTool]:
    tool = _tool(resolver)
    yield tool
    await tool.close()


def _true_when(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return condition()

    return probe


async def _refusal(tool: HttpTool, tmp_path: Path, **arguments: Any) -> ToolRefused:
    with pytest.raises(ToolRefused) as raised:
        await tool.run(arguments, _ctx(tmp_path))
    return raised.value


async def test_a_request_goes_to_the_vetted_address_with_the_host_name_kept(
    tool: HttpTool, resolver: Resolver, server: StandIn, tmp_path: Path
) -> None:
    result = await tool.run(
        {"method": "POST", "url": server.url("/echo", "api.test"), "body": {"n": 3}},
        _ctx(tmp_path),
    )
    assert result.ok and result.output["status"] == 200
    echoed = result.output["json"]
    assert echoed["headers"]["host"] == f"api.test:{server.port}"
    assert echoed["headers"]["content-type"] == "application/json"
    assert echoed["body"] == '{"n":3}'  # a whole number stays whole after protobuf
    assert resolver.asked == ["api.test"]  # resolved once: the connect used that answer


async def test_https_to_the_vetted_address_asks_for_and_checks_the_host_name(
    resolver: Resolver, tmp_path: Path
) -> None:
    server_tls, client_tls = certificate_authority("api.test")
    tool = _tool(resolver, tls=client_tls)
    try:
        with stand_in(tls=server_tls) as server:
            result = await tool.run({"url": server.url("/echo", "api.test")}, _ctx(tmp_path))
            assert result.ok and result.output["json"]["headers"]["host"].startswith("api.test:")
            assert server.server_names == ["api.test"]
            # other.test resolves to the same address; the certificate does not name it.
            wrong = await tool.run({"url": server.url("/echo", "other.test")}, _ctx(tmp_path))
    finally:
        await tool.close()
    assert not wrong.ok and wrong.error_type == "connection_error"
    assert "CERTIFICATE_VERIFY_FAILED" in wrong.error_message


async def test_a_name_with_one_private_answer_among_public_ones_is_refused_unconnected(
    server: StandIn, tmp_path: Path
) -> None:
    resolver = Resolver({"api.test": ["8.8.8.8", "127.0.0.1"]})
    tool = _tool(resolver, networks="")
    before = server.connections
    try:
        refused = await _refusal(tool, tmp_path, url=server.url("/echo", "api.test"))
    finally:
        await tool.close()
    assert refused.error_type == "forbidden"
    assert refused.message == "api.test resolves to 127.0.0.1 is a loopback address"
    assert server.connections == before


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.1", "localhost", "[::ffff:7f00:1]"])
async def test_any_spelling_of_loopback_is_refused_by_its_address(
    server: StandIn, tmp_path: Path, host: str
) -> None:
    """With every name allowed (`*`) and the system's own resolver, which reads
    `2130706433` and `0x7f.1` as 127.0.0.1 as inet_aton does."""
    tool = HttpTool(
        allow_hosts=HostAllowList.of(["*"]),
        fence=AddressFence(),
        max_bytes=1 << 20,
        timeout=10.0,
    )
    before = server.connections
    try:
        refused = await _refusal(tool, tmp_path, url=f"http://{host}:{server.port}/echo")
    finally:
        await tool.close()
    assert refused.error_type == "forbidden"
    assert "loopback address" in refused.message
    assert server.connections == before


async def test_a_host_off_the_allow_list_is_refused_before_any_lookup(
    tool: HttpTool, resolver: Resolver, tmp_path: Path
) -> None:
    refused = await _refusal(tool, tmp_path, url="https://evil.test/")
    assert refused.error_type == "forbidden"
    assert "not on CHIFFON_AGENT_HTTP_ALLOW_HOSTS" in refused.message
    assert resolver.asked == []
    empty = _tool(resolver, allow_hosts=HostAllowList.of([]))
    refused = await _refusal(empty, tmp_path, url="https://api.test/")
    await empty.close()
    assert "no host is allowed" in refused.message


async def test_a_redirect_to_a_private_address_is_refused_at_the_hop(
    tool: HttpTool, server: StandIn, tmp_path: Path
) -> None:
    with stand_in("127.0.0.2") as private:
        target = private.url("/echo")
        refused = await _refusal(tool, tmp_path, url=server.url(f"/redirect?to={target}"))
        assert refused.error_type == "forbidden"
        assert refused.message == "127.0.0.2 is a loopback address"
        assert private.connections == 0


async def test_a_redirect_off_the_allow_list_is_refused(
    tool: HttpTool, server: StandIn, tmp_path: Path
) -> None:
    refused = await _refusal(
        tool, tmp_path, url=server.url("/redirect?to=http://169.254.169.254/latest/meta-data/")
    )
    assert refused.error_type == "forbidden"
    assert refused.message.startswith("host '169.254.169.254' refused")


async def test_redirects_are_capped(tool: HttpTool, server: StandIn, tmp_path: Path) -> None:
    refused = await _refusal(tool, tmp_path, url=server.url("/loop"))
    assert refused.error_type == "limit_exceeded"
    assert f"more than {MAX_REDIRECTS} redirects" in refused.message


async def test_a_303_turns_a_post_into_a_get_and_credentials_stay_with_their_origin(
    tool: HttpTool, server: StandIn, tmp_path: Path
) -> None:
    elsewhere = server.url("/echo", "other.test")
    result = await tool.run(
        {
            "method": "POST",
            "url": server.url(f"/redirect?status=303&to={elsewhere}", "api.test"),
            "headers": {"Authorization": "Bearer s3cret", "X-Trace": "1"},
            "body": "payload",
        },
        _ctx(tmp_path),
    )
    echoed = result.output["json"]
    assert echoed["method"] == "GET" and echoed["body"] == ""
    assert "authorization" not in echoed["headers"]
    assert echoed["headers"]["x-trace"] == "1"
    assert result.output["redirects"] == [elsewhere]
    assert result.output["url"] == elsewhere


async def test_a_body_over_the_cap_is_refused_whether_announced_or_streamed(
    resolver: Resolver, server: StandIn, tmp_path: Path
) -> None:
    tool = _tool(resolver, max_bytes=100_000)
    try:
        announced = await _refusal(tool, tmp_path, url=server.url("/bytes/100001"))
        streamed = await _refusal(tool, tmp_path, url=server.url("/stream/3000000"))
        at_cap = await tool.run({"url": server.url("/bytes/100000")}, _ctx(tmp_path))
    finally:
        await tool.close()
    assert announced.error_type == streamed.error_type == "limit_exceeded"
    assert "answers 100001 bytes, over the 100000-byte cap" in announced.message
    assert at_cap.ok and len(at_cap.output["body"]) == 100_000


async def test_a_server_that_does_not_answer_times_out_at_the_task_timeout(
    tool: HttpTool, server: StandIn, tmp_path: Path
) -> None:
    with pytest.raises(ToolRefused) as raised:
        await tool.run({"url": server.url("/hang")}, _ctx(tmp_path, timeout=0.3))
    assert raised.value.error_type == "timeout"
    assert raised.value.message == "no complete answer within 0.3 s"


async def test_a_cancelled_task_stops_its_request(
    tool: HttpTool, server: StandIn, tmp_path: Path
) -> None:
    ctx = _ctx(tmp_path)
    before = server.connections
    running = asyncio.create_task(tool.run({"url": server.url("/hang")}, ctx))
    await eventually(_true_when(lambda: server.connections > before), message="connected")
    ctx.cancelled.set_result(None)
    result = await running
    assert not result.ok and result.error_type == "cancelled"


async def test_an_error_status_fails_the_task_with_the_answer_kept(
    tool: HttpTool, server: StandIn, tmp_path: Path
) -> None:
    failed = await tool.run({"url": server.url("/status/503")}, _ctx(tmp_path))
    assert not failed.ok and failed.error_type == "http_status"
    assert failed.output["status"] == 503 and failed.output["json"] == {"status": 503}
    refused = await tool.run({"url": server.url("/status/404")}, _ctx(tmp_path))
    assert not refused.ok and refused.error_type == "http_client_error"
    assert refused.output["status"] == 404
    kept = await tool.run(
        {"url": server.url("/status/404"), "fail_on_status": False}, _ctx(tmp_path)
    )
    assert kept.ok and kept.output["status"] == 404


async def test_a_binary_body_comes_back_as_base64(
    tool: HttpTool, server: StandIn, tmp_path: Path
) -> None:
    result: ToolResult = await tool.run({"url": server.url("/binary")}, _ctx(tmp_path))
    assert result.output["body"] == "/wCA" and result.output["body_encoding"] == "base64"
    text = await tool.run({"url": server.url("/bytes/3")}, _ctx(tmp_path))
    assert text.output["body"] == "xxx" and text.output["body_encoding"] == "text"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"url": "file:///etc/passwd"}, "only http and https URLs are fetched"),
        ({"url": "gopher://api.test/"}, "only http and https URLs are fetched"),
        ({"url": "http://user:pw@api.test/"}, "credentials go in an Authorization header"),
        ({"url": "http://api.test/", "method": "TRACE"}, "method must be one of"),
        ({"url": "http://api.test/", "headers": {"Host": "evil.test"}}, "is set by the tool"),
        ({"url": "http://api.test/", "headers": {"X-A": "1\r\nX-B: 2"}}, "one line of text"),
        ({"url": "http://api.test/", "verify": False}, "unknown argument(s) ['verify']"),
        ({"url": "http://api.test/", "body": 3}, "body must be a text or a JSON object"),
        ({}, "url must be a text"),
    ],
)
async def test_malformed_tasks_are_refused_as_invalid(
    tool: HttpTool, tmp_path: Path, arguments: dict[str, Any], message: str
) -> None:
    refused = await _refusal(tool, tmp_path, **arguments)
    assert refused.error_type == "invalid_arguments"
    assert message in refused.message
