"""Batches of stored events passed from a parallel rebuild to its workers, over a pipe.

One process reads the stream and hands each worker its share, still undecoded: the
stream is read and parsed once rather than once per process. A frame is a 4-byte
length and that many bytes of records; each record is a fixed header (sequence,
subject, message id and data lengths) and the three byte strings. A frame of length
0 ends the stream, so a worker can tell the end from its parent going away.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

from chiffon.eventstore import StoredMessage

_LENGTH = struct.Struct(">I")
_RECORD = struct.Struct(">QHHI")  # sequence, subject, message id, data lengths
_NO_ID = 0xFFFF
END = _LENGTH.pack(0)


class HandoffBroken(Exception):
    """The pipe ended without the end frame: the rebuilding process went away."""


def encode(messages: Sequence[StoredMessage]) -> bytes:
    """One frame holding ``messages`` (an empty batch makes no frame)."""
    if not messages:
        return b""
    parts: list[bytes] = [b""]
    for sequence, subject, msg_id, data in messages:
        subject_bytes = subject.encode()
        id_bytes = b"" if msg_id is None else msg_id.encode()
        id_length = _NO_ID if msg_id is None else len(id_bytes)
        parts += (
            _RECORD.pack(sequence, len(subject_bytes), id_length, len(data)),
            subject_bytes,
            id_bytes,
            data,
        )
    body_length = sum(len(p) for p in parts)
    parts[0] = _LENGTH.pack(body_length)
    return b"".join(parts)


def decode(body: bytes) -> list[StoredMessage]:
    messages = []
    view = memoryview(body)
    offset = 0
    while offset < len(body):
        sequence, subject_length, id_length, data_length = _RECORD.unpack_from(view, offset)
        offset += _RECORD.size
        subject = str(view[offset : offset + subject_length], "utf-8")
        offset += subject_length
        msg_id = None
        if id_length != _NO_ID:
            msg_id = str(view[offset : offset + id_length], "utf-8")
            offset += id_length
        data = bytes(view[offset : offset + data_length])
        offset += data_length
        messages.append(StoredMessage(sequence, subject, msg_id, data))
    return messages


async def read_frame(reader: asyncio.StreamReader) -> list[StoredMessage] | None:
    """The next batch, or None at the end frame. ``HandoffBroken`` if the pipe ends
    before the end frame."""
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if length == 0:
            return None
        return decode(await reader.readexactly(length))
    except asyncio.IncompleteReadError:
        raise HandoffBroken("the pipe closed before the end of the stream") from None
