"""The audit API: a run's audit record, the event search, failures."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["audit"])
