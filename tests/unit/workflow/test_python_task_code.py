"""A python task's ``code`` is code, never a template: Python's braces need no doubling
and a run's value cannot become code by being spliced in; the other fields render."""

from __future__ import annotations

from chiffon.workflow import AgentNode, load_spec, render_task

WORKFLOW = """
name: py-literal
version: 1
inputs: {host: {type: string}}
nodes:
  - id: check
    type: agent
    requires: [python]
    task:
      tool: python
      code: |
        counts = {"hosts": 1}
        result = {**counts, "name": inputs["host"], "raw": "{host}"}
      inputs: {host: "{host}"}
"""


def test_python_code_loads_with_its_braces_and_is_sent_as_written() -> None:
    spec = load_spec(WORKFLOW)
    node = spec.nodes[0]
    assert isinstance(node, AgentNode)
    task = render_task(node.task, {"host": 'kuma.lan"}; import os #'})
    assert task["code"] == node.task["code"]  # not rendered: the value stays data
    assert task["inputs"] == {"host": 'kuma.lan"}; import os #'}
    assert task["tool"] == "python"


def test_other_tools_render_every_field() -> None:
    task = {"tool": "shell", "command": "echo {host}", "env": {"H": "{host}"}}
    assert render_task(task, {"host": "nas"}) == {
        "tool": "shell",
        "command": "echo nas",
        "env": {"H": "nas"},
    }
