"""An llm node's structured output: the response format it asks for, the answer parsed."""

from __future__ import annotations

import json
from typing import Any

import pydantic

from chiffon.executor.nodes.context import NodeError
from chiffon.workflow import LlmNode, build_output_model, output_json_schema


def response_format_for(node: LlmNode) -> dict[str, Any] | None:
    """The JSON-schema response format of a node with ``output`` (None without)."""
    if not node.output:
        return None
    return {
        "type": "json_schema",
        "json_schema": {
            "name": f"{node.id}_output",
            "schema": output_json_schema(node.output),
            "strict": True,
        },
    }


def parse_output(node: LlmNode, text: str, output_model: Any = None) -> dict[str, Any]:
    """The node's state update from the model's answer; ``NodeError`` if it does not fit."""
    if not node.output:
        return {node.id: text}
    body = text.strip()
    if body.startswith("```"):  # a fenced answer: ```json ... ```
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    try:
        data = json.loads(body)
        model = output_model or build_output_model(node.id, node.output)
        result: dict[str, Any] = model.model_validate(data).model_dump(by_alias=True)
        return result
    except (json.JSONDecodeError, pydantic.ValidationError, TypeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, pydantic.ValidationError):
            detail = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                for e in error.errors(include_url=False)[:5]
            )
        raise NodeError(
            "invalid_output", f"the answer does not match the output schema: {detail}"
        ) from None
