"""The audit projections a gateway hosts: the index of every audited stream always, the
git export when ``CHIFFON_AUDIT_GIT_DIR`` names a folder."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from chiffon.audit.index import AuditIndexProjection
from chiffon.audit.streams import STREAM_PROJECTIONS
from chiffon.eventstore import EventStore
from chiffon.projections import Projection


class AuditSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHIFFON_AUDIT_", extra="ignore")

    git_dir: Path | None = None
    """A folder for the git export of finished runs (created, as a bare repository, when
    empty). Unset: no export."""


def audit_projections(store: EventStore, settings: AuditSettings | None = None) -> list[Projection]:
    chosen = settings or AuditSettings()
    hosted: list[Projection] = [AuditIndexProjection()]
    hosted += [projection() for projection in STREAM_PROJECTIONS]
    if chosen.git_dir is not None:
        # Imported only for an export: the audit record and dulwich are about 0.15 s of
        # CPU that every gateway start would pay otherwise.
        from chiffon.audit.gitexport import GitAuditTrail, GitExportProjection

        hosted.append(GitExportProjection(store, GitAuditTrail(chosen.git_dir)))
    return hosted
