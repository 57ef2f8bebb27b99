"""The key-creation body takes an expiry only as the RFC 3339 string its schema says."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from chiffon.gateway.schemas import KeyCreate


@pytest.mark.parametrize("expires_at", [0, 1_900_000_000, 1.5, True, [], {}])
def test_an_expiry_that_is_no_string_is_refused(expires_at: Any) -> None:
    # Pydantic alone would read 0 as 1970-01-01: a 201 for a body the schema forbids.
    with pytest.raises(ValidationError) as refused:
        KeyCreate.model_validate({"name": "bot", "role": "viewer", "expires_at": expires_at})
    assert refused.value.errors()[0]["loc"] == ("expires_at",)


def test_an_rfc3339_expiry_or_none_is_taken() -> None:
    body = {"name": "bot", "role": "viewer", "expires_at": "2030-01-01T00:00:00Z"}
    assert KeyCreate.model_validate(body).expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert KeyCreate.model_validate({"name": "bot", "role": "viewer"}).expires_at is None
