"""Safe expressions for edge conditions and ``set`` nodes.

The source is parsed with ``ast.parse(mode="eval")`` and checked against a whitelist;
evaluation walks the tree. Nothing is ever compiled to bytecode or passed to ``eval``.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from chiffon.events.storable import unstorable

MAX_LENGTH = 1000
MAX_DEPTH = 64
MAX_EXPONENT = 100
MAX_SEQUENCE_ITEMS = 100_000
MAX_INT_BITS = 4096
JSON_CONSTANTS: dict[str, Any] = {"true": True, "false": False, "null": None}


class ExpressionError(ValueError):
    """An expression is invalid (at compile time) or cannot be evaluated (at run time)."""


_BINOPS: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", operator.pow),
}
_REJECTED_BINOPS: dict[type[ast.operator], str] = {
    ast.BitAnd: "'&' is not allowed (use 'and')",
    ast.BitOr: "'|' is not allowed (use 'or')",
    ast.BitXor: "'^' is not allowed (use '**' for powers)",
    ast.LShift: "'<<' is not allowed",
    ast.RShift: "'>>' is not allowed",
    ast.MatMult: "'@' is not allowed",
}
_CMPOPS: dict[type[ast.cmpop], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
    ast.In: ("in", lambda a, b: a in b),
    ast.NotIn: ("not in", lambda a, b: a not in b),
    ast.Is: ("is", operator.is_),
    ast.IsNot: ("is not", operator.is_not),
}
_PLAIN_NAMES = " (only plain variable names are available)"
_REJECTED_NODES: dict[type[ast.AST], str] = {
    ast.Call: "function calls are not allowed",
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "indexing is not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "generator expressions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.Starred: "starred expressions (*x) are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Slice: "slicing is not allowed",
}


def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type, as users see it in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (set, frozenset)):
        return "set"
    return type(value).__name__


def _where(node: ast.AST) -> str:
    col = getattr(node, "col_offset", None)
    return "" if col is None else f" at column {col + 1}"


def _check(tree: ast.Expression, src: str) -> frozenset[str]:
    """Walk the tree (iteratively) against the whitelist; return the variable names."""
    names: set[str] = set()
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExpressionError(f"expression is nested too deeply (max {MAX_DEPTH} levels)")
        rejected = _REJECTED_NODES.get(type(node))
        if rejected is not None:
            snippet = ast.get_source_segment(src, node) or ""
            shown = f": {snippet!r}" if snippet and len(snippet) <= 60 else ""
            hint = _PLAIN_NAMES if isinstance(node, (ast.Attribute, ast.Subscript)) else ""
            raise ExpressionError(f"{rejected}{shown}{_where(node)}{hint}")
        children: list[ast.AST]
        match node:
            case ast.Constant(value=value):
                if value is not None and not isinstance(value, (str, int, float, bool)):
                    raise ExpressionError(
                        f"literal of type {type(value).__name__} is not allowed{_where(node)}"
                    )
                # The text check sees only the escape (\0, \x00, \N{NULL}, ...); the parsed
                # constant holds the character itself, which no store accepts (issue 16).
                if isinstance(value, str) and (reason := unstorable(value)) is not None:
                    raise ExpressionError(f"a string constant {reason}{_where(node)}")
                children = []
            case ast.Name(id=name):
                if name not in JSON_CONSTANTS:
                    names.add(name)
                children = []
            case ast.BoolOp(values=values):
                children = list(values)
            case ast.UnaryOp(op=op, operand=operand):
                if isinstance(op, ast.Invert):
                    raise ExpressionError(f"'~' is not allowed{_where(node)}")
                children = [operand]
            case ast.BinOp(left=left, op=op, right=right):
                if type(op) in _REJECTED_BINOPS:
                    raise ExpressionError(f"{_REJECTED_BINOPS[type(op)]}{_where(node)}")
                children = [left, right]
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                for cmp_op, right in zip(ops, comparators, strict=True):
                    if isinstance(cmp_op, (ast.Is, ast.IsNot)) and not (
                        isinstance(right, ast.Constant) and right.value is None
                    ):
                        raise ExpressionError(
                            f"'is' is only allowed as 'is None' / 'is not None' "
                            f"(use '==' or '!='){_where(node)}"
                        )
                children = [left, *comparators]
            case ast.IfExp(test=test, body=body, orelse=orelse):
                children = [test, body, orelse]
            case ast.List(elts=elts) | ast.Tuple(elts=elts) | ast.Set(elts=elts):
                children = list(elts)
            case ast.Dict(keys=keys, values=values):
                if any(k is None for k in keys):
                    raise ExpressionError(f"'**' unpacking is not allowed{_where(node)}")
                children = [*(k for k in keys if k is not None), *values]
            case _:
                raise ExpressionError(
                    f"{type(node).__name__} is not allowed in expressions{_where(node)}"
                )
        stack.extend((child, depth + 1) for child in children)
    return frozenset(names)


@dataclass(frozen=True)
class Expression:
    """A checked expression. ``names`` are the variables it reads."""

    source: str
    names: frozenset[str]
    _tree: ast.Expression

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """Evaluate over ``variables``; any failure is an :class:`ExpressionError`."""
        try:
            return _Evaluator(variables).eval(self._tree.body)
        except ExpressionError:
            raise
        except RecursionError:
            raise ExpressionError("expression is nested too deeply") from None
        except (TypeError, ValueError, ArithmeticError, MemoryError) as exc:
            raise ExpressionError(f"cannot evaluate {self.source!r}: {exc}") from None

    def __str__(self) -> str:
        return self.source


@lru_cache(maxsize=2048)
def compile_expression(src: str) -> Expression:
    """Parse and check ``src``; raise :class:`ExpressionError` with a precise message."""
    if not isinstance(src, str):
        raise ExpressionError(f"an expression must be a string, not {type_name(src)}")
    if len(src) > MAX_LENGTH:
        raise ExpressionError(f"expression is too long ({len(src)} characters; max {MAX_LENGTH})")
    if not src.strip():
        raise ExpressionError("expression is empty")
    try:
        tree = ast.parse(src.strip(), mode="eval")
    except SyntaxError as exc:
        where = f"column {exc.offset}" if exc.offset else "the end"
        if (exc.lineno or 1) > 1:
            where = f"line {exc.lineno}, {where}"
        detail = "" if exc.msg == "invalid syntax" else f" ({exc.msg})"
        raise ExpressionError(f"invalid syntax at {where}{detail}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError("expression is nested too deeply") from None
    names = _check(tree, src.strip())
    return Expression(source=src, names=names, _tree=tree)


class _Evaluator:
    def __init__(self, variables: Mapping[str, Any]) -> None:
        self._vars = variables

    def eval(self, node: ast.AST) -> Any:
        match node:
            case ast.Constant(value=value):
                return value
            case ast.Name(id=name):
                if name in JSON_CONSTANTS:
                    return JSON_CONSTANTS[name]
                if name not in self._vars:
                    raise ExpressionError(f"unknown variable {name!r}")
                return self._vars[name]
            case ast.BoolOp(op=ast.And(), values=values):
                result: Any = True
                for value_node in values:
                    result = self.eval(value_node)
                    if not result:
                        return result
                return result
            case ast.BoolOp(values=values):  # Or
                result = False
                for value_node in values:
                    result = self.eval(value_node)
                    if result:
                        return result
                return result
            case ast.UnaryOp(op=op, operand=operand):
                value = self.eval(operand)
                if isinstance(op, ast.Not):
                    return not value
                if not isinstance(value, (int, float)):
                    sign = "-" if isinstance(op, ast.USub) else "+"
                    raise ExpressionError(f"cannot apply unary '{sign}' to {type_name(value)}")
                return -value if isinstance(op, ast.USub) else +value
            case ast.BinOp(left=left, op=op, right=right):
                return self._binop(op, self.eval(left), self.eval(right))
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                current = self.eval(left)
                for cmp_op, right_node in zip(ops, comparators, strict=True):
                    right = self.eval(right_node)
                    symbol, fn = _CMPOPS[type(cmp_op)]
                    try:
                        ok = fn(current, right)
                    except TypeError:
                        raise ExpressionError(
                            f"cannot compare {type_name(current)} and {type_name(right)} "
                            f"with '{symbol}'"
                        ) from None
                    if not ok:
                        return False
                    current = right
                return True
            case ast.IfExp(test=test, body=body, orelse=orelse):
                return self.eval(body) if self.eval(test) else self.eval(orelse)
            case ast.List(elts=elts):
                return [self.eval(e) for e in elts]
            case ast.Tuple(elts=elts):
                return tuple(self.eval(e) for e in elts)
            case ast.Set(elts=elts):
                try:
                    return {self.eval(e) for e in elts}
                except TypeError:
                    raise ExpressionError(
                        "set items must be strings, numbers or booleans"
                    ) from None
            case ast.Dict(keys=keys, values=values):
                out: dict[Any, Any] = {}
                for key_node, value_node in zip(keys, values, strict=True):
                    assert key_node is not None  # rejected by _check
                    key = self.eval(key_node)
                    try:
                        out[key] = self.eval(value_node)
                    except TypeError:
                        raise ExpressionError(f"a {type_name(key)} cannot be a key") from None
                return out
        raise ExpressionError(f"{type(node).__name__} is not allowed in expressions")

    def _binop(self, op: ast.operator, left: Any, right: Any) -> Any:
        symbol, fn = _BINOPS[type(op)]
        if isinstance(op, ast.Pow):
            _check_power(left, right)
        elif isinstance(op, ast.Mult):
            _check_repeat(left, right)
        elif isinstance(op, ast.Mod) and isinstance(left, str):
            raise ExpressionError("string formatting with '%' is not supported")
        try:
            result = fn(left, right)
        except ZeroDivisionError:
            raise ExpressionError(f"division by zero in '{symbol}'") from None
        except TypeError:
            raise ExpressionError(
                f"cannot apply '{symbol}' to {type_name(left)} and {type_name(right)}"
            ) from None
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise ExpressionError(f"integer result of '{symbol}' is too large")
        if isinstance(result, complex):
            raise ExpressionError(f"'{symbol}' gives a complex number")
        return result


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_power(base: Any, exponent: Any) -> None:
    if _is_number(exponent) and abs(exponent) > MAX_EXPONENT:
        shown = f" {exponent}" if abs(exponent) < 10**9 else ""
        raise ExpressionError(f"exponent{shown} is too large (max {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if base.bit_length() * exponent > MAX_INT_BITS:
            raise ExpressionError("integer result of '**' is too large")


def _check_repeat(left: Any, right: Any) -> None:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
            if len(seq) * count > MAX_SEQUENCE_ITEMS:
                raise ExpressionError(
                    f"repetition would produce {len(seq) * count} items (max {MAX_SEQUENCE_ITEMS})"
                )
