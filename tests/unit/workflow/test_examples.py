"""Every example the docs point users at is a valid workflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from chiffon.workflow import load_spec

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("*.yaml"))


def test_the_examples_are_found() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_loads(path: Path) -> None:
    spec = load_spec(path.read_text(), filename=str(path))
    assert spec.nodes, f"{path.name} has no nodes"
