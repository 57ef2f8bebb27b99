"""Which loop steps each run of a many-run check: the first run of each workflow version
goes through LangGraph's own loop (the one the executor really uses), the others are
stepped by the replay; ``--through-langgraph`` sends every run through LangGraph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chiffon.events import CATALOG
from chiffon.eventstore import InMemoryEventStore
from chiffon.executor.replay import driver
from chiffon.executor.replay.batch import default_processes, verify_runs
from tests.support.workflows import store_workflow
from tests.unit.executor.test_replay_verify import USER, record

EXAMPLES = Path(__file__).parents[3] / "examples"


async def stored_runs(store: InMemoryEventStore, count: int) -> list[str]:
    source = (EXAMPLES / "linear.yaml").read_text()
    workflow = await store_workflow(store, source, USER)
    runs = [f"run-{n}" for n in range(count)]
    for run_id in runs:
        assert await record(store, workflow, run_id, {"topic": run_id}) == "succeeded"
    return runs


@pytest.mark.parametrize(("through_langgraph", "stepped"), [(False, 2), (True, 0)])
async def test_the_first_run_of_a_version_goes_through_langgraphs_loop(
    monkeypatch: pytest.MonkeyPatch, through_langgraph: bool, stepped: int
) -> None:
    store = InMemoryEventStore(CATALOG)
    runs = await stored_runs(store, 3)
    steppers: list[Any] = []

    def counted(graph: Any) -> Any:
        stepper = direct(graph)
        steppers.append(stepper)
        return stepper

    direct = driver.direct
    monkeypatch.setattr(driver, "direct", counted)
    results = [r async for r in verify_runs(store, runs, through_langgraph=through_langgraph)]
    assert [(r.run_id, r.verdict is not None and r.verdict.same) for r in results] == [
        (run_id, True) for run_id in runs
    ]
    # The replay steps the runs after the first itself (it can step this graph).
    assert len(steppers) == stepped and all(s is not None for s in steppers)


def test_a_few_hundred_runs_are_checked_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert [default_processes(n) for n in (1, 399, 400, 1000, 1600, 100_000)] == [1, 1, 1, 2, 4, 4]
