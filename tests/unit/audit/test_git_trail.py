"""The git audit trail: one commit per run, never two."""

from __future__ import annotations

from pathlib import Path

from dulwich.repo import Repo

from chiffon.audit.gitexport import GitAuditTrail, record_path
from chiffon.audit.record import audit_record

from .sample import run_events


def test_a_run_is_committed_once_and_reads_back_as_its_record(tmp_path: Path) -> None:
    trail = GitAuditTrail(tmp_path / "audit.git")
    first = audit_record("run-a", run_events("run-a"))
    second = audit_record("run-b", run_events("run-b", fail_with="timeout", start=30))
    assert trail.commit(first) is True
    assert trail.commit(second) is True
    assert trail.commit(first) is False  # already there: nothing written
    assert trail.count_commits() == 2
    assert record_path(first) == b"runs/2026/12/01/run-a.json"
    assert trail.read(record_path(first)) == first
    trail.close()

    # Another process opens the same repository and sees the same history.
    reopened = GitAuditTrail(tmp_path / "audit.git")
    assert reopened.commit(second) is False
    repo = Repo(str(tmp_path / "audit.git"))
    head = repo[repo.refs[b"HEAD"]]
    assert head.message.decode().startswith("run run-b: deploy-kuma v3 failed")
    assert head.author == b"Chiffon audit <audit@chiffon.invalid>"
    repo.close()
    reopened.close()


def test_a_batch_commits_each_new_run_once_in_order(tmp_path: Path) -> None:
    trail = GitAuditTrail(tmp_path / "audit.git")
    records = [audit_record(f"run-{i}", run_events(f"run-{i}", start=i)) for i in range(5)]
    assert trail.commit_many(records[:2]) == 2
    assert trail.commit_many(records + records) == 3  # the first two, and repeats, skipped
    assert trail.count_commits() == 5
    assert all(trail.read(record_path(r)) == r for r in records)
    trail.close()
