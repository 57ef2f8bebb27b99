"""Replies cut at 4,096 characters (UTF-16 code units, as Telegram counts): on a line,
else a word boundary, never inside a character or an emoji sequence; the chunks joined
are the text."""

from __future__ import annotations

import pytest

from chiffon.trigger.chunking import MESSAGE_LIMIT, chunk_text, utf16_length


def _check(text: str, chunks: list[str], limit: int = MESSAGE_LIMIT) -> None:
    assert "".join(chunks) == text
    assert all(chunks)
    assert all(utf16_length(c) <= limit for c in chunks)


def test_a_short_text_is_one_chunk_and_an_empty_one_none() -> None:
    assert chunk_text("hello") == ["hello"]
    assert chunk_text("x" * MESSAGE_LIMIT) == ["x" * MESSAGE_LIMIT]
    assert chunk_text("") == []


def test_a_long_text_is_cut_after_the_last_line_break_in_the_second_half() -> None:
    lines = [f"line {i:04d} " + "w" * 40 for i in range(300)]
    text = "\n".join(lines)
    chunks = chunk_text(text)
    _check(text, chunks)
    assert len(chunks) == 4
    assert all(c.endswith("\n") for c in chunks[:-1])
    assert chunks[1].startswith("line ")


def test_without_line_breaks_it_is_cut_after_a_space() -> None:
    text = " ".join(f"word{i}" for i in range(2000))
    chunks = chunk_text(text)
    _check(text, chunks)
    assert len(chunks) >= 3
    assert all(c.endswith(" ") for c in chunks[:-1])
    assert all(c[0] == "w" for c in chunks)


def test_a_line_break_in_the_first_half_only_is_not_used() -> None:
    text = "short\n" + "y " * 4000
    chunks = chunk_text(text)
    _check(text, chunks)
    assert len(chunks[0]) > MESSAGE_LIMIT // 2


def test_one_long_word_is_cut_at_the_limit() -> None:
    text = "z" * 10_000
    chunks = chunk_text(text)
    _check(text, chunks)
    assert [len(c) for c in chunks] == [4096, 4096, 1808]


def test_characters_outside_the_bmp_count_twice_and_are_never_split() -> None:
    text = "😀" * 3000  # 6,000 UTF-16 code units
    chunks = chunk_text(text)
    _check(text, chunks)
    assert [len(c) for c in chunks] == [2048, 952]
    assert utf16_length(chunks[0]) == MESSAGE_LIMIT


def test_combining_marks_and_emoji_sequences_stay_with_their_character() -> None:
    accented = "a" + "e\u0301" * 3000  # é as e + combining acute, shifted by one
    chunks = chunk_text(accented)
    _check(accented, chunks)
    assert all(not c.startswith("\u0301") for c in chunks)

    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one family emoji: 8 units
    text = "a" + family * 600
    chunks = chunk_text(text)
    _check(text, chunks)
    for chunk in chunks:
        assert not chunk.startswith("\u200d") and not chunk.endswith("\u200d")

    toned = "a" + "\U0001f44d\U0001f3fd" * 1500  # thumbs up + skin tone, shifted
    chunks = chunk_text(toned)
    _check(toned, chunks)
    assert all(not c.startswith("\U0001f3fd") for c in chunks)


def test_a_small_limit_still_makes_progress() -> None:
    assert chunk_text("abcdef", limit=2) == ["ab", "cd", "ef"]
    with pytest.raises(ValueError):
        chunk_text("abc", limit=1)
