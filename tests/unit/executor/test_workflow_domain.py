"""The workflow aggregate: its fold, parsing, registration and choosing a version."""

from __future__ import annotations

import pytest

from chiffon.commands import RegisterWorkflow
from chiffon.events.limits import WORKFLOW_MAX_BYTES
from chiffon.executor.domain import (
    InvalidWorkflow,
    VersionAlreadyRegistered,
    VersionNotFound,
    WorkflowNotFound,
    WorkflowState,
    WorkflowTooLarge,
    decide_register,
    evolve_workflow,
    parse_workflow,
    require_version,
)

from .support import ALICE, at

SOURCE = """\
name: brief
version: {version}
nodes:
  - {{id: write, type: llm, model: chiffon/echo, prompt: "{prompt}", output: {{text: string}}}}
"""


def register(version: int = 1, prompt: str = "Write") -> RegisterWorkflow:
    return RegisterWorkflow(actor=ALICE, source=SOURCE.format(version=version, prompt=prompt))


def registered(*commands: RegisterWorkflow) -> WorkflowState:
    """The workflow after registering each command in turn (sequences 1, 2, …)."""
    state = WorkflowState("brief")
    for command in commands:
        spec = parse_workflow(command)
        for payload in decide_register(state, spec, command, at(0)):
            state = evolve_workflow(state, payload, state.version + 1)
    return state


def test_a_new_version_is_registered_with_its_canonical_spec_and_source() -> None:
    command = register()
    spec = parse_workflow(command)
    (event,) = decide_register(WorkflowState("brief"), spec, command, at(0))
    assert (event.name, event.version, event.digest) == ("brief", 1, spec.digest())
    assert event.source == command.source and event.source_format == "yaml"
    assert event.spec["nodes"][0]["id"] == "write"


def test_the_fold_keeps_every_version_in_order() -> None:
    state = registered(register(1), register(3), register(2))
    assert [p.version for p in state.versions] == [1, 3, 2]
    assert state.known_versions() == [1, 2, 3]
    assert state.version == 3
    latest = state.get()
    assert latest is not None and latest.version == 3


def test_registering_the_same_content_again_registers_nothing() -> None:
    state = registered(register())
    command = register()
    assert decide_register(state, parse_workflow(command), command, at(1)) == []


def test_other_content_under_a_taken_version_is_refused_with_the_next_free_one() -> None:
    state = registered(register(1), register(2))
    command = register(1, prompt="Rewrite")
    with pytest.raises(VersionAlreadyRegistered) as refused:
        decide_register(state, parse_workflow(command), command, at(1))
    message = str(refused.value)
    assert message.startswith("workflow 'brief' version 1 is already registered with different")
    assert message.endswith("immutable: register it as version 3")
    assert refused.value.details == [
        {"path": "version", "line": None, "message": "version already registered"}
    ]


def test_an_invalid_source_is_refused_with_every_problem_and_its_line() -> None:
    command = RegisterWorkflow(actor=ALICE, source="name: brief\nversion: 0\nnodes: []\n")
    with pytest.raises(InvalidWorkflow) as refused:
        parse_workflow(command)
    assert refused.value.code == "invalid"
    assert str(refused.value).startswith("the workflow has ")
    assert all({"path", "line", "message"} <= set(d) for d in refused.value.details)
    assert any(d["line"] == 2 for d in refused.value.details)


def test_a_workflow_too_large_for_an_event_is_refused() -> None:
    # The loader refuses such a file before parsing it; the decision still guards the
    # event itself: source and canonical form together must fit in one message.
    spec = parse_workflow(register())
    source = register().source
    padded = RegisterWorkflow(actor=ALICE, source=source + "#" * (WORKFLOW_MAX_BYTES - len(source)))
    with pytest.raises(WorkflowTooLarge, match=f"the limit is {WORKFLOW_MAX_BYTES} bytes"):
        decide_register(WorkflowState("brief"), spec, padded, at(0))


def test_a_start_gets_the_version_asked_for_or_the_latest() -> None:
    state = registered(register(1), register(2))
    assert require_version(state, None).version == 2
    assert require_version(state, 1).version == 1


def test_a_start_of_an_unknown_workflow_or_version_is_refused() -> None:
    with pytest.raises(WorkflowNotFound, match="no workflow named 'brief' is registered"):
        require_version(WorkflowState("brief"), None)
    with pytest.raises(VersionNotFound) as refused:
        require_version(registered(register(1), register(2)), 7)
    assert refused.value.code == "not_found"
    assert str(refused.value) == "workflow 'brief' has no version 7 (versions: 1, 2)"
