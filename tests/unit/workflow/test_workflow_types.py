import pytest
from pydantic import ValidationError

from chiffon.workflow import (
    FieldTypeError,
    build_output_model,
    output_json_schema,
    parse_field_type,
    validate_value,
)


def test_output_json_schema() -> None:
    schema = output_json_schema(
        {
            "facts": "list[string]",
            "grid": "list[list[number]]",
            "ok": "boolean",
            "meta": "object",
            "n": "integer",
        }
    )

    assert schema == {
        "type": "object",
        "properties": {
            "facts": {"type": "array", "items": {"type": "string"}},
            "grid": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "ok": {"type": "boolean"},
            "meta": {"type": "object"},
            "n": {"type": "integer"},
        },
        "required": ["facts", "grid", "ok", "meta", "n"],
        "additionalProperties": False,
    }


def test_output_model_coerces_and_rejects() -> None:
    model = build_output_model(
        "review", {"score": "integer", "notes": "list[string]", "json": "boolean"}
    )

    assert model.__name__ == "ReviewOutput"
    out = model.model_validate({"score": "8", "notes": ["good"], "json": "true"})
    assert out.model_dump(by_alias=True) == {"score": 8, "notes": ["good"], "json": True}
    with pytest.raises(ValidationError) as caught:
        model.model_validate({"score": "eight", "notes": "x", "json": True, "extra": 1})
    assert {e["loc"][0] for e in caught.value.errors()} == {"score", "notes", "extra"}


def test_type_names() -> None:
    assert str(parse_field_type(" list[ list[string] ] ")) == "list[list[string]]"
    with pytest.raises(FieldTypeError, match="unknown type 'str' \\(did you mean 'string'\\?\\)"):
        parse_field_type("str")
    with pytest.raises(FieldTypeError, match="'list' needs an item type"):
        parse_field_type("list")
    assert validate_value("list[integer]", ["1", 2]) == [1, 2]
    with pytest.raises(
        ValueError, match=r"expected list\[integer\] \(at \[1\]\): should be a valid integer"
    ):
        validate_value("list[integer]", [1, "x"])
