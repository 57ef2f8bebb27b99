"""NATS's wire protocol read by offset, and raw subscriptions that skip nats-py's messages.

nats-py's parser matches each message's control line with a regular expression and then
deletes it, and then its payload, from the front of one bytearray: a copy of the rest of
the buffer per message, which grows with the size of a read. Each message then becomes a
``Msg`` (its header block parsed into a dict, whether anyone reads it or not), goes
through the subscription's queue and a task hop before a callback sees it. On the cost
service's pricer that path and the ack publish after it were 35-50 us of the ~110 us of
CPU a priced call cost.

``FastParser`` reads the same protocol by offset and compacts the buffer once per read;
every message goes on to nats-py's own ``_process_msg`` as before, except those of a
*raw* subscription (``raw_subscribe``): those are handed, on the read loop, to a plain
function with the subject, reply, header block and payload as bytes. ``send_raw`` puts
protocol commands (acks, many at once) on the connection's pending buffer as
``publish`` does, without building each one through ``publish``.

Installed before the connection is made (``new_client``): swapping the parser of a
connected client could lose the part of a message its old buffer held. It relies on
nats-py's parser interface (``parse``, ``reset``, ``buf``) and the client's
``_process_msg``, ``_pending`` and ``_flush_pending``, which the pinned nats-py has; the
integration tests run every store path through it against a real server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import ProtocolError
from nats.protocol.parser import (
    AWAITING_CONTROL_LINE,
    AWAITING_MSG_PAYLOAD,
    ERR_RE,
    INFO_RE,
    MAX_CONTROL_LINE_SIZE,
    OK_RE,
    PING_RE,
    PONG_RE,
    Parser,
)

RawHandler = Callable[[bytes, bytes, bytes | None, bytes], None]
"""``(subject, reply, header block or None, payload)``, called on the read loop."""

_CRLF = b"\r\n"
_M = ord("M")
_H = ord("H")


class FastParser(Parser):
    """nats-py's parser, reading by offset, with raw subscriptions (see the module)."""

    def __init__(self, nc: Any = None) -> None:
        self.raw: dict[int, RawHandler] = {}
        super().__init__(nc)

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        pos = 0
        try:
            while pos < len(buf):
                if self.state == AWAITING_MSG_PAYLOAD:
                    needed = self.needed
                    if len(buf) - pos < needed + 2:
                        break
                    split = self.header_needed
                    if split:
                        headers: bytes | None = bytes(buf[pos : pos + split])
                        payload = bytes(buf[pos + split : pos + needed])
                    else:
                        headers = None
                        payload = bytes(buf[pos : pos + needed])
                    pos += needed + 2
                    self.header_needed = 0
                    self.state = AWAITING_CONTROL_LINE
                    args = self.msg_arg
                    sid = args["sid"]
                    handler = self.raw.get(sid)
                    if handler is not None:
                        handler(args["subject"], args["reply"], headers, payload)
                    else:
                        await self.nc._process_msg(
                            sid, args["subject"], args["reply"], payload, headers
                        )
                        if self.buf is not buf:  # reset while the message was processed
                            return
                    continue
                first = buf[pos]
                if first == _M or first == _H:
                    eol = buf.find(_CRLF, pos)
                    if eol < 0:
                        if len(buf) - pos > MAX_CONTROL_LINE_SIZE:
                            raise ProtocolError("nats: malformed MSG")
                        break
                    self._message_line(bytes(buf[pos:eol]))
                    pos = eol + 2
                    continue
                # Anything else (+OK, -ERR, PING, PONG, INFO): rare, nats-py's way.
                del buf[:pos]
                pos = 0
                if not await self._control(buf):
                    break
                if self.buf is not buf:
                    return
        finally:
            if pos:
                del buf[:pos]

    def _message_line(self, line: bytes) -> None:
        parts = line.split()
        op, count = parts[0] if parts else b"", len(parts)
        try:
            if op == b"MSG" and count in (4, 5):
                reply = parts[3] if count == 5 else b""
                self.needed, self.header_needed = int(parts[-1]), 0
            elif op == b"HMSG" and count in (5, 6):
                reply = parts[3] if count == 6 else b""
                self.needed, self.header_needed = int(parts[-1]), int(parts[-2])
            else:
                raise ValueError(op)
            self.msg_arg = {"subject": parts[1], "sid": int(parts[2]), "reply": reply}
        except ValueError:
            raise ProtocolError("nats: malformed MSG") from None
        self.state = AWAITING_MSG_PAYLOAD

    async def _control(self, buf: bytearray) -> bool:
        """One control line at the front of ``buf``, as nats-py's parser takes it; False
        when it has not fully arrived."""
        nc = self.nc
        if ok := OK_RE.match(buf):
            del buf[: ok.end()]
        elif err := ERR_RE.match(buf):
            message = err.groups()[0].decode().lower()
            del buf[: err.end()]
            await nc._process_err(message)
        elif ping := PING_RE.match(buf):
            del buf[: ping.end()]
            await nc._process_ping()
        elif pong := PONG_RE.match(buf):
            del buf[: pong.end()]
            await nc._process_pong()
        elif info := INFO_RE.match(buf):
            server_info = json.loads(info.groups()[0].decode())
            del buf[: info.end()]
            await nc._process_info(server_info)
        elif len(buf) < MAX_CONTROL_LINE_SIZE and _CRLF in buf:
            raise ProtocolError("nats: unknown protocol")
        else:
            return False
        return True


_WHITESPACE = re.compile(r"\s")  # the characters ``str.isspace`` accepts, in one C call


class Client(NATS):
    """nats-py's client with its header parsing made cheaper and otherwise unchanged.

    nats-py tests each character of each header name for whitespace in a Python
    generator: on a replay reading thousands of events that was 12% of its CPU, since
    every stored event carries a few headers. The rules are nats-py's own, line by
    line (a unit test compares the two on hostile header blocks)."""

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(_CRLF):
            if not line:
                continue
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if _WHITESPACE.search(key):
                continue
            out[key] = value.strip().decode("utf-8", "replace")
        return out


def new_client() -> NATS:
    """A nats-py client reading with ``FastParser`` (connect it with ``connect``)."""
    nc = Client()
    nc._ps = FastParser(nc)
    return nc


def fast_parser(nc: NATS) -> FastParser | None:
    parser = getattr(nc, "_ps", None)
    return parser if isinstance(parser, FastParser) else None


class RawSubscription:
    """A subscription whose messages go to a ``RawHandler`` (see ``raw_subscribe``)."""

    def __init__(self, parser: FastParser, sub: Any) -> None:
        self._parser = parser
        self._sub = sub

    async def unsubscribe(self) -> None:
        self._parser.raw.pop(self._sub._id, None)
        await self._sub.unsubscribe()


async def raw_subscribe(nc: NATS, subject: str, handler: RawHandler) -> RawSubscription:
    """Subscribe ``handler`` to ``subject`` (the client must read with ``FastParser``):
    the subscription is nats-py's (its sid, its re-subscription after a reconnect), its
    messages never reach nats-py's queue."""
    parser = fast_parser(nc)
    if parser is None:
        raise TypeError("raw subscriptions need a client made by chiffon.eventstore.wire")
    sub = await nc.subscribe(subject)
    parser.raw[sub._id] = handler
    return RawSubscription(parser, sub)


async def send_raw(nc: NATS, commands: bytes) -> None:
    """Put protocol commands (``PUB subject size\\r\\npayload\\r\\n`` ...) on the
    connection's pending buffer and wake its flusher, as ``publish`` does for one."""
    await nc._send_command(commands)
    await nc._flush_pending()


def ack_commands(replies: list[bytes]) -> bytes:
    """JetStream acks (``+ACK`` to each message's reply subject), as one write."""
    return b"".join([b"PUB " + reply + b" 4\r\n+ACK\r\n" for reply in replies])


# -- JetStream's pull replies, read off the wire ------------------------------------

PULL_HEARTBEAT = "100"
NO_RESPONDERS = "503"


def ack_position(reply: bytes) -> tuple[int, int]:
    """(delivered, stream sequence) from a ``$JS.ACK`` reply subject."""
    tokens = reply.split(b".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<n>
        return int(tokens[4]), int(tokens[5])
    if len(tokens) >= 11:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>...
        return int(tokens[6]), int(tokens[7])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


def pull_status(headers: bytes | None, payload: bytes) -> str | None:
    """A pull's status message (``NATS/1.0 408 Request Timeout``): its code, else None (a
    stored message's own header block starts ``NATS/1.0\\r\\n``)."""
    if headers is None or payload or headers[8:9] != b" ":
        return None
    return headers[9:12].decode()
