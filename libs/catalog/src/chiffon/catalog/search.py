"""Catalog search: exact names and tags first, then meaning (embeddings)."""

from __future__ import annotations
