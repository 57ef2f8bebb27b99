"""Projections: consumers that fold events into PostgreSQL read models."""

from chiffon.projections.base import Projection
from chiffon.projections.runner import ProjectionFailed, ProjectionRunner, ProjectionStatus
from chiffon.projections.tables import MIGRATIONS, checkpoints, metadata

__all__ = [
    "MIGRATIONS",
    "Projection",
    "ProjectionFailed",
    "ProjectionRunner",
    "ProjectionStatus",
    "checkpoints",
    "metadata",
]
