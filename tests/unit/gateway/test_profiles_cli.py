"""``chiffon profile`` and ``chiffon compare``'s tables, on the JSON the gateway answers
(made here by the same functions the routes call), and their usage errors."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner

from chiffon.cli.cost_cmd import render
from chiffon.cli.main import app
from chiffon.cli.profile_cmd import compare_table, duration, profile_table, workflow_table
from chiffon.gateway.comparison import NodeCost, RunFacts, compare_runs, node_outputs
from chiffon.gateway.profiles import profile_run, profile_workflow
from tests.unit.gateway.test_profiles import three_nodes


def answer(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json")  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("ms", "shown"),
    [(None, "-"), (850.4, "850 ms"), (12_400, "12.4 s"), (185_000, "3 min 05 s"), (-40, "-40 ms")],
)
def test_durations_read_at_a_glance(ms: Any, shown: str) -> None:
    assert duration(ms) == shown


def test_the_run_table_shows_each_node_and_names_the_bottleneck_in_red() -> None:
    profile = answer(profile_run("run-1", three_nodes().events))
    text = render(profile_table(profile), color=False)
    assert "run-1" in text and "triage v2" in text and "bottleneck: build" in text
    build = next(line for line in text.splitlines() if " build " in line)
    assert "5000 ms" in build and "75%" in build and "4000 ms" in build
    coloured = render(profile_table(profile), color=True)
    assert "\x1b[1;31m" in coloured  # bold red: the bottleneck's row
    per_attempt = render(profile_table(profile, attempts=True), color=False)
    assert "ATTEMPT" in per_attempt and per_attempt.count(" plan ") == 1


def test_a_wait_no_node_had_is_not_a_column() -> None:
    profile = answer(profile_run("run-1", three_nodes().events))
    header = next(
        line for line in render(profile_table(profile), color=False).splitlines() if "NODE" in line
    )
    shown = {name for name in ("MODEL", "AGENT", "PERSON", "PAUSED", "CHIFFON") if name in header}
    waited = {
        name
        for field, name in (("model_ms", "MODEL"), ("agent_ms", "AGENT"), ("human_ms", "PERSON"))
        if any(node.get(field) for node in profile["nodes"])
    }
    assert shown - {"PAUSED"} == waited | {"CHIFFON"}
    for node in profile["nodes"]:
        node["agent_ms"] = node["human_ms"] = node["paused_ms"] = 0
    bare = render(profile_table(profile), color=False)
    assert "AGENT" not in bare and "PERSON" not in bare and "PAUSED" not in bare
    assert "CHIFFON" in bare


def test_a_stored_node_id_is_printed_not_obeyed() -> None:
    profile = answer(profile_run("run-1", three_nodes().events))
    profile["nodes"][0]["node_id"] = "[bold]x\x1b[2J"
    text = render(profile_table(profile), color=False)
    assert "[bold]x\\x1b[2J" in text


def test_the_workflow_table_shows_percentiles_per_node() -> None:
    runs = [
        profile_run(f"r{i}", three_nodes(f"r{i}", agent_ms=ms).events)
        for i, ms in enumerate((1000, 2000, 3000))
    ]
    text = render(workflow_table(answer(profile_workflow("triage", 100, runs))), color=False)
    assert "triage: 3 finished runs" in text
    build = next(line for line in text.splitlines() if " build " in line)
    assert "3000 ms" in build and "3980 ms" in build  # p50 and p99 of 2, 3 and 4 s


def test_the_comparison_table_marks_nodes_whose_outputs_differ() -> None:
    a_events = three_nodes("run-a", answer="hello").events
    b_events = three_nodes("run-b", answer="bonjour").events
    diff = compare_runs(
        RunFacts(profile_run("run-a", a_events), node_outputs(a_events), {}),
        RunFacts(
            profile_run("run-b", b_events), node_outputs(b_events), {"plan": NodeCost(Decimal(1))}
        ),
    )
    text = render(compare_table(answer(diff)), color=False)
    plan = next(line for line in text.splitlines() if " plan " in line)
    assert '{"text":"hello"}' in plan and '{"text":"bonjour"}' in plan and "+1" in plan
    assert "outputs differ" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["profile"], "give a RUN_ID or --workflow NAME"),
        (["profile", "run-1", "--workflow", "triage"], "give a RUN_ID or --workflow NAME"),
        (["profile", "--workflow", "triage", "--last", "0"], "--last must be from 1 to 1000"),
        (["profile", "--workflow", "triage", "--last", "5000"], "--last must be from 1 to 1000"),
    ],
)
def test_bad_arguments_are_usage_errors_before_any_request(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args, env={"CHIFFON_GATEWAY_URL": "http://127.0.0.1:9"})
    assert result.exit_code == 2
    assert message in result.output
