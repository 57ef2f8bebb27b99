"""Profiles: where a run's time went, per node and across runs; run comparison."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["profiles"])
