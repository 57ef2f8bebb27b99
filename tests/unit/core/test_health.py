"""Readiness: a service is not ready while it is still starting."""

from __future__ import annotations

from chiffon.core.service import Health


async def test_a_starting_service_is_unready_though_every_other_check_passes() -> None:
    health = Health()
    started = health.starting()
    health.add("nats", lambda: (True, None))

    ready, components = await health.report()
    assert not ready
    assert components["startup"] == {"ok": False, "detail": "starting"}

    started()
    ready, components = await health.report()
    assert ready
    assert components["startup"] == {"ok": True}


async def test_a_failing_check_still_makes_a_started_service_unready() -> None:
    health = Health()
    health.starting()()
    health.add("postgres", lambda: (False, "connection refused"))

    ready, components = await health.report()
    assert not ready
    assert components["postgres"] == {"ok": False, "detail": "connection refused"}
