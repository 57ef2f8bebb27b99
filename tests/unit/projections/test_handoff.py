"""The frames a parallel rebuild hands its workers: what goes in comes out, and a pipe
that ends early is told apart from the end of the stream."""

from __future__ import annotations

import asyncio

import pytest

from chiffon.eventstore import StoredMessage
from chiffon.projections import handoff

MESSAGES = [
    StoredMessage(1, "chiffon.agent.a-1.agent.registered", "0195-msg-id", b'{"type":"x"}'),
    StoredMessage(2**40, "chiffon.agent.\u00e9t\u00e9.agent.came_back", None, b""),
    StoredMessage(7, "s", "", b"\x00\xff" * 70_000),
]


def _reader(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


async def test_frames_carry_every_field_and_the_end_frame_ends_the_stream() -> None:
    reader = _reader(handoff.encode(MESSAGES[:2]), handoff.encode(MESSAGES[2:]), handoff.END)
    assert await handoff.read_frame(reader) == MESSAGES[:2]
    assert await handoff.read_frame(reader) == MESSAGES[2:]
    assert await handoff.read_frame(reader) is None


async def test_a_pipe_that_closes_before_the_end_frame_is_an_error_not_the_end() -> None:
    whole = handoff.encode(MESSAGES)
    with pytest.raises(handoff.HandoffBroken):
        await handoff.read_frame(_reader(whole[: len(whole) // 2]))
    with pytest.raises(handoff.HandoffBroken):
        await handoff.read_frame(_reader(handoff.encode(MESSAGES[:1])[:2]))
    reader = _reader(handoff.encode(MESSAGES))
    assert await handoff.read_frame(reader) == MESSAGES
    with pytest.raises(handoff.HandoffBroken):
        await handoff.read_frame(reader)


def test_an_empty_share_makes_no_frame() -> None:
    assert handoff.encode([]) == b""
