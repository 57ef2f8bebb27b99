"""A reply's token counts from LiteLLM's usage: cached input read and written, reasoning."""

from __future__ import annotations

import pytest

from chiffon.executor.models.litellm_client import UsageCounts, usage_counts

litellm_utils = pytest.importorskip("litellm.types.utils")


def test_openai_shape_cached_and_reasoning_tokens() -> None:
    usage = litellm_utils.Usage(
        prompt_tokens=1200,
        completion_tokens=300,
        total_tokens=1500,
        prompt_tokens_details={"cached_tokens": 1024},
        completion_tokens_details={"reasoning_tokens": 256},
    )
    assert usage_counts(usage) == UsageCounts(
        prompt=1200, completion=300, cached_read=1024, cache_write=0, reasoning=256
    )


def test_anthropic_shape_through_litellm_cache_read_and_creation() -> None:
    usage = litellm_utils.Usage(
        prompt_tokens=3000,
        completion_tokens=100,
        total_tokens=3100,
        cache_read_input_tokens=1000,
        cache_creation_input_tokens=1500,
    )
    assert usage_counts(usage) == UsageCounts(
        prompt=3000, completion=100, cached_read=1000, cache_write=1500, reasoning=0
    )


def test_plain_usage_and_no_usage() -> None:
    usage = litellm_utils.Usage(prompt_tokens=11, completion_tokens=7, total_tokens=18)
    assert usage_counts(usage) == UsageCounts(prompt=11, completion=7)
    assert usage_counts(None) == UsageCounts()


def test_a_dict_usage_and_inconsistent_counts_are_clamped() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 50},
        "completion_tokens_details": {"reasoning_tokens": None},
    }
    assert usage_counts(usage) == UsageCounts(prompt=10, completion=5, cached_read=10)
