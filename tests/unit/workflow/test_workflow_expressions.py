from typing import Any

import pytest

from chiffon.workflow import ExpressionError, compile_expression


def ev(src: str, **variables: Any) -> Any:
    return compile_expression(src).evaluate(variables)


@pytest.mark.parametrize(
    ("src", "variables", "expected"),
    [
        ("score >= 7", {"score": 7}, True),
        ("1 < x <= 3", {"x": 3}, True),
        ("1 < x <= 3", {"x": 4}, False),
        ("a == b != c", {"a": 1, "b": 1, "c": 1}, False),
        ("'ok' in status", {"status": "all ok"}, True),
        ("tag not in tags", {"tag": "x", "tags": ["a", "b"]}, True),
        ("k in {'a': 1}", {"k": "a"}, True),
        ("comment is None", {"comment": None}, True),
        ("comment is not None and approved", {"comment": "", "approved": False}, False),
        ("not approved or score > 9", {"approved": False, "score": 0}, True),
        ("x or 'default'", {"x": ""}, "default"),
        ("x and y", {"x": 0, "y": 1}, 0),
        ("(a + b) * 2 - c / 4", {"a": 1, "b": 2, "c": 2}, 5.5),
        ("7 // 2 + 7 % 2 + 2 ** 3", {}, 12),
        ("-n", {"n": 3}, -3),
        ("'big' if n > 10 else 'small'", {"n": 11}, "big"),
        ("items + [4]", {"items": [1, 2, 3]}, [1, 2, 3, 4]),
        ("name + '!'", {"name": "hi"}, "hi!"),
        ("done == true and missing == null", {"done": True, "missing": None}, True),
        ("'ab' * 3", {}, "ababab"),
        ("(1, 2) == (1, 2)", {}, True),
        ("{1, 2} == {2, 1}", {}, True),
    ],
)
def test_semantics(src: str, variables: dict[str, Any], expected: Any) -> None:
    assert ev(src, **variables) == expected


def test_names_are_the_variables_read() -> None:
    assert compile_expression("a < b and c in [d, 1] and x is None and true").names == frozenset(
        {"a", "b", "c", "d", "x"}
    )


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("len(x)", "function calls are not allowed: 'len(x)' at column 1"),
        ("__import__('os')", "function calls are not allowed: \"__import__('os')\" at column 1"),
        (
            "a.b",
            "attribute access is not allowed: 'a.b' at column 1 "
            "(only plain variable names are available)",
        ),
        (
            "a[0] > 1",
            "indexing is not allowed: 'a[0]' at column 1 (only plain variable names are available)",
        ),
        ("(lambda: 1)", "lambda is not allowed: 'lambda: 1' at column 2"),
        ("[x for x in y]", "comprehensions are not allowed: '[x for x in y]' at column 1"),
        ("f'{x}'", "f-strings are not allowed: \"f'{x}'\" at column 1"),
        ("(y := 1)", "assignment expressions (:=) are not allowed: 'y := 1' at column 2"),
        ("[*xs]", "starred expressions (*x) are not allowed: '*xs' at column 2"),
        (
            "x is 1",
            "'is' is only allowed as 'is None' / 'is not None' (use '==' or '!=') at column 1",
        ),
        ("a & b", "'&' is not allowed (use 'and') at column 1"),
        ("x ==", "invalid syntax at the end"),
        ("a b", "invalid syntax at column 3"),
        ("(1", "invalid syntax at column 1 ('(' was never closed)"),
        ("", "expression is empty"),
        ("x + 1" * 300, "expression is too long (1500 characters; max 1000)"),
        ("-" * 500 + "1", "expression is nested too deeply (max 64 levels)"),
    ],
)
def test_rejected_at_compile_time(src: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(src)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("src", "variables", "message"),
    [
        ("scroe > 1", {"score": 1}, "unknown variable 'scroe'"),
        ("'a' < 1", {}, "cannot compare string and integer with '<'"),
        ("x in 5", {"x": 1}, "cannot compare integer and integer with 'in'"),
        ("'a' - 1", {}, "cannot apply '-' to string and integer"),
        ("1 / n", {"n": 0}, "division by zero in '/'"),
        ("2 ** 1000", {}, "exponent 1000 is too large (max 100)"),
        ("9 ** 99 ** 99", {}, "exponent is too large (max 100)"),
        ("(10 ** 100) ** 100", {}, "integer result of '**' is too large"),
        ("'x' * 200000", {}, "repetition would produce 200000 items (max 100000)"),
        ("[0] * n", {"n": 10**9}, "repetition would produce 1000000000 items (max 100000)"),
        ("'%s' % x", {"x": 1}, "string formatting with '%' is not supported"),
        ("-s", {"s": "a"}, "cannot apply unary '-' to string"),
    ],
)
def test_errors_at_run_time(src: str, variables: dict[str, Any], message: str) -> None:
    expr = compile_expression(src)
    with pytest.raises(ExpressionError) as caught:
        expr.evaluate(variables)
    assert str(caught.value) == message
