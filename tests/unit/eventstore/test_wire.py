"""FastParser reads what nats-py's parser reads, whatever the reads' boundaries, and the client
parses header blocks as nats-py does.

The same wire bytes (messages with and without headers and replies, a status message,
PING, PONG, +OK, INFO, -ERR) are fed to nats-py's Parser and to FastParser, whole and
cut into every split point of a message and in pieces of 1 and 7 bytes: both must hand
the client the same calls, in the same order. Raw subscriptions get their messages as
bytes and nats-py's path never sees them.
"""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from chiffon.eventstore.wire import Client, FastParser, ack_commands, ack_position, pull_status


def hmsg(subject: bytes, sid: int, reply: bytes, headers: bytes, data: bytes) -> bytes:
    args = b" ".join(part for part in (subject, str(sid).encode(), reply) if part)
    sizes = f" {len(headers)} {len(headers) + len(data)}\r\n".encode()
    return b"HMSG " + args + sizes + headers + data + b"\r\n"


WIRE = (
    b'INFO {"server_id":"x","max_payload":1048576}\r\n'
    b"MSG a.b 1 5\r\nhello\r\n"
    b"MSG a.b 1 _INBOX.r 0\r\n\r\n"
    b"PING\r\n"
    + hmsg(
        b"ns.run.r1.run.llm.called",
        2,
        b"$JS.ACK.S.C.1.42.7.1700000000.3",
        b"NATS/1.0\r\nA: b\r\n\r\n",
        b"hello",
    )
    + hmsg(b"_INBOX.p", 2, b"", b"NATS/1.0 408 Request Timeout\r\n\r\n", b"")
    + b"+OK\r\n"
    b"PONG\r\n"
    b"MSG big 3 12\r\nline\r\n\r\nmore\r\n"
    b"-ERR 'Slow Consumer'\r\n"
)


class Recorder:
    """A stand-in for nats-py's client: records what the parser hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.calls.append(("msg", sid, bytes(subject), bytes(reply), data, headers))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, message: str) -> None:
        self.calls.append(("err", message))


async def feed(parser_type: type[Parser], pieces: list[bytes]) -> list[tuple[Any, ...]]:
    client = Recorder()
    parser = parser_type(client)
    for piece in pieces:
        await parser.parse(piece)
    assert not parser.buf, "everything sent was consumed"
    return client.calls


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_fast_parser_hands_the_client_what_nats_py_parser_does() -> None:
    expected = await feed(Parser, [WIRE])
    assert [call[0] for call in expected] == [
        "info", "msg", "msg", "ping", "msg", "msg", "pong", "msg", "err",
    ]  # fmt: skip
    assert await feed(FastParser, [WIRE]) == expected
    for size in (1, 7, 64):
        assert await feed(FastParser, cut(WIRE, size)) == expected
    for split in range(1, len(WIRE)):
        assert await feed(FastParser, [WIRE[:split], WIRE[split:]]) == expected


async def test_raw_subscriptions_get_bytes_and_skip_nats_py() -> None:
    client = Recorder()
    parser = FastParser(client)
    raw: list[tuple[bytes, bytes, bytes | None, bytes]] = []
    parser.raw[2] = lambda subject, reply, headers, data: raw.append(
        (subject, reply, headers, data)
    )
    for piece in cut(WIRE, 5):
        await parser.parse(piece)
    assert raw == [
        (
            b"ns.run.r1.run.llm.called",
            b"$JS.ACK.S.C.1.42.7.1700000000.3",
            b"NATS/1.0\r\nA: b\r\n\r\n",
            b"hello",
        ),
        (b"_INBOX.p", b"", b"NATS/1.0 408 Request Timeout\r\n\r\n", b""),
    ]
    assert [call[1] for call in client.calls if call[0] == "msg"] == [1, 1, 3]
    # What the work intake reads of them: a status, a position, nothing for an item.
    assert pull_status(raw[1][2], raw[1][3]) == "408"
    assert pull_status(raw[0][2], raw[0][3]) is None
    assert ack_position(raw[0][1]) == (1, 42)


async def test_a_malformed_message_line_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        await feed(FastParser, [b"MSG a.b notanumber 5\r\nhello\r\n"])
    with pytest.raises(ProtocolError):
        await feed(FastParser, [b"BOGUS\r\n"])


def test_acks_are_one_write() -> None:
    assert ack_commands([b"$JS.ACK.a", b"$JS.ACK.b"]) == (
        b"PUB $JS.ACK.a 4\r\n+ACK\r\nPUB $JS.ACK.b 4\r\n+ACK\r\n"
    )


@pytest.mark.parametrize(
    "block",
    [
        b"NATS/1.0\r\nNats-Msg-Id: a:0\r\nChiffon-Type: run.node.started\r\n\r\n",
        b"Name:Value\r\nName2:\tValue2\r\n  Spaced  :  kept  \r\n",
        b"Bad Name: skipped\r\nTab\tName: skipped\r\nno colon here\r\n:empty name\r\n",
        b"Caf\xc3\xa9: non-ascii name\r\nOk: caf\xc3\xa9 \xff\xfe broken utf-8\r\n",
        b"Repeated: one\r\nRepeated: two\r\n\r\n\r\n",
        b"Vt\x0bName: x\r\nFs\x1cName: x\r\nNul\x00Name: x\r\nEnd:",
        b"",
    ],
)
def test_header_blocks_parse_as_nats_py_parses_them(block: bytes) -> None:
    assert Client._parse_header_lines(block) == NATS._parse_header_lines(block)


def test_every_ascii_character_is_whitespace_to_both_or_to_neither() -> None:
    for code in range(128):
        block = b"A" + bytes([code]) + b"B: value\r\n"
        assert Client._parse_header_lines(block) == NATS._parse_header_lines(block), code
