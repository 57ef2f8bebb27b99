"""An input with ``default: null`` takes null given as well as none given: inputs once
filled in check again, as the executor does when it starts a run from the stored ones."""

from __future__ import annotations

import pytest

from chiffon.workflow import InputError, load_spec


@pytest.mark.parametrize("kind", ["object", "string", "integer", "list[string]"])
def test_filled_inputs_with_a_null_default_check_again(kind: str) -> None:
    spec = load_spec(
        f"name: w\nversion: 1\ninputs: {{x: {{type: {kind}, default: null}}}}\n"
        "nodes:\n  - {id: a, type: set, values: {v: '1'}}\n"
    )

    filled = spec.validate_inputs({})

    assert filled == {"x": None}
    assert spec.validate_inputs(filled) == filled


def test_null_stays_refused_where_the_default_is_not_null_or_there_is_none() -> None:
    spec = load_spec(
        "name: w\nversion: 1\ninputs: {n: {type: integer, default: 5}, s: {type: string}}\n"
        "nodes:\n  - {id: a, type: set, values: {v: '1'}}\n"
    )

    with pytest.raises(InputError) as refused:
        spec.validate_inputs({"n": None, "s": None})

    assert len(refused.value.problems) == 2, refused.value.problems
