"""Cutting a reply into messages the chat APIs accept: at most 4,096 characters each.

Both WhatsApp (a text message's ``body``) and Telegram (``sendMessage``'s ``text``) take
at most 4,096 characters. Telegram counts them in UTF-16 code units (an emoji outside the
Basic Multilingual Plane counts twice), so a chunk is measured that way: within the limit
for both. A chunk ends after the last line break in its second half if there is one, else
after the last space or tab there, else at the limit; never inside a character (a
surrogate pair is one Python character) and never just before a combining mark, a
variation selector or a skin tone (which belong to the character before them), nor on
either side of a zero-width joiner (an emoji sequence).
Joined again, the chunks are the text exactly.
"""

from __future__ import annotations

import unicodedata

MESSAGE_LIMIT = 4096
"""Characters (UTF-16 code units) per WhatsApp or Telegram text message."""

_JOINERS = frozenset({"\u200d", "\u034f", "\u20e3"})


def utf16_length(text: str) -> int:
    """The text's length as Telegram counts it (UTF-16 code units)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _clings(ch: str) -> bool:
    """Does ``ch`` belong with the character before it (a split must not come before it)?"""
    code = ord(ch)
    return (
        unicodedata.combining(ch) != 0
        or ch in _JOINERS
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF  # skin tone modifiers
        or unicodedata.category(ch) == "Mn"
    )


def _fitting(text: str, start: int, limit: int) -> int:
    """The end of the longest slice from ``start`` whose UTF-16 length is within ``limit``."""
    units = 0
    end = start
    size = len(text)
    while end < size:
        units += 2 if ord(text[end]) > 0xFFFF else 1
        if units > limit:
            break
        end += 1
    return end


def chunk_text(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """``text`` in chunks of at most ``limit`` UTF-16 code units, cut where a reader would
    (see the module's doc). An empty text is no chunk."""
    if limit < 2:
        raise ValueError("limit must be at least 2")
    chunks: list[str] = []
    start = 0
    size = len(text)
    while start < size:
        end = _fitting(text, start, limit)
        if end >= size:
            chunks.append(text[start:])
            break
        cut = _boundary(text, start, end)
        chunks.append(text[start:cut])
        start = cut
    return chunks


def _boundary(text: str, start: int, end: int) -> int:
    """Where to cut ``text[start:end]`` (which is too long to end the text): after a line
    break, else after a space, in the slice's second half; else at ``end``, moved back
    before any marks that cling to the character they follow."""
    half = start + (end - start) // 2
    newline = text.rfind("\n", half, end)
    if newline != -1:
        return newline + 1
    space = max(text.rfind(" ", half, end), text.rfind("\t", half, end))
    if space != -1:
        return space + 1
    cut = end
    while cut > start + 1 and (_clings(text[cut]) or text[cut - 1] == "\u200d"):
        cut -= 1
    return cut
