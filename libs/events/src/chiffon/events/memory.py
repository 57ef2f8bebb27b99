"""Agent memory: namespaced key/value that runs remember across runs, event-sourced.

A memory key is ``<namespace>:<workflow>:<node>:<name>``: the namespace is an agent's
name (or one a workflow node names explicitly), then the workflow and the node that
wrote it, then the field. Each namespace is one aggregate (``memory``, on the MEMORY
stream); every write is a ``memory.written`` event, never a row updated in place, and
what a namespace holds is the fold of its events (``MemoryState``), so memory is
rebuilt from events by construction.

A read names a *pattern*: the namespace and the name are literal, the workflow and the
node may be ``*`` (any). It sees the latest write to any key it matches (the one
highest in the stream). What a node read is recorded on its run (``run.memory.read``),
so a resumed or replayed run sees the values it read the first time.

Pure: no I/O. Each limit below is the one the workflow loader checks and the event
models hold, so a workflow that loads always writes events that store.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from chiffon.events.envelope import EventPayload
from chiffon.events.limits import (
    NODE_ID_MAX_CHARS,
    NODE_ID_PATTERN,
    VARIABLE_NAME_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
    WORKFLOW_NAME_PATTERN,
)

# -- limits -------------------------------------------------------------------------------

MEMORY_NAMESPACE_MAX_CHARS: Final = 63
"""A namespace: an agent's name (the registry's limit and pattern), or one a node names."""

MEMORY_NAMESPACE_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
"""The registry's agent-name pattern (``chiffon.events.agents.AGENT_NAME_PATTERN``)."""

MEMORY_NAME_MAX_CHARS: Final = VARIABLE_NAME_MAX_CHARS
"""The last part of a key: the node's output field it stores, so a state key's limit."""

MEMORY_NAME_PATTERN: Final = rf"^[A-Za-z_][A-Za-z0-9_]{{0,{MEMORY_NAME_MAX_CHARS - 1}}}$"

MEMORY_KEY_MAX_CHARS: Final = (
    MEMORY_NAMESPACE_MAX_CHARS + WORKFLOW_NAME_MAX_CHARS + NODE_ID_MAX_CHARS + 3
) + MEMORY_NAME_MAX_CHARS
"""A whole key or pattern: its four parts at their limits and three colons (329)."""

MEMORY_VALUE_MAX_BYTES: Final = 64 * 1024
"""One value, as compact JSON (UTF-8). Larger results belong in a node's outputs (which go
to the object store by reference), not in memory that every reader folds."""

MEMORY_ACCESS_MAX: Final = 8
"""Reads, and writes, one node may declare. A node's reads travel in one
``run.memory.read`` event: 8 values of 64 KiB stay well inside NATS's 1 MiB message."""

WILDCARD: Final = "*"

_NAMESPACE = re.compile(MEMORY_NAMESPACE_PATTERN)
_WORKFLOW = re.compile(WORKFLOW_NAME_PATTERN)
_NODE = re.compile(NODE_ID_PATTERN)
_NAME = re.compile(MEMORY_NAME_PATTERN)


class MemoryKeyError(ValueError):
    """A key or pattern that is not one: every reason names the part that is wrong."""


class MemoryKey(NamedTuple):
    """A key (every part literal) or a pattern (``workflow`` and ``node`` may be ``*``)."""

    namespace: str
    workflow: str
    node: str
    name: str

    def __str__(self) -> str:
        return ":".join(self)

    def matches(self, workflow: str, node: str, name: str) -> bool:
        return (
            name == self.name
            and self.workflow in (WILDCARD, workflow)
            and self.node in (WILDCARD, node)
        )


def _check(part: str, what: str, pattern: re.Pattern[str], limit: int, rule: str) -> None:
    if len(part) > limit:
        raise MemoryKeyError(
            f"the {what} is too long ({len(part)} characters; the limit is {limit})"
        )
    if not pattern.match(part):
        raise MemoryKeyError(f"invalid {what} {part!r}: {rule}")


def check_namespace(namespace: str) -> str:
    _check(
        namespace,
        "namespace",
        _NAMESPACE,
        MEMORY_NAMESPACE_MAX_CHARS,
        "use lowercase letters, digits, '_', '-' and '.', starting with a letter or digit",
    )
    return namespace


def check_name(name: str) -> str:
    _check(
        name,
        "key name",
        _NAME,
        MEMORY_NAME_MAX_CHARS,
        "use letters, digits and '_', not starting with a digit",
    )
    return name


def parse_key(text: str, *, wildcards: bool = False) -> MemoryKey:
    """``namespace:workflow:node:name`` as a ``MemoryKey``; with ``wildcards`` (a read
    pattern) the workflow and the node may be ``*``. ``MemoryKeyError`` says what is
    wrong: a hostile key (``../``, a NUL, 10,000 characters) never gets further."""
    if not isinstance(text, str):
        raise MemoryKeyError(f"a memory key is a string, not {type(text).__name__}")
    if len(text) > MEMORY_KEY_MAX_CHARS:
        raise MemoryKeyError(
            f"the key is too long ({len(text)} characters; the limit is {MEMORY_KEY_MAX_CHARS})"
        )
    parts = text.split(":")
    if len(parts) != 4:
        raise MemoryKeyError(
            f"invalid memory key {text!r}: expected namespace:workflow:node:name "
            f"(4 parts separated by ':', found {len(parts)})"
        )
    namespace, workflow, node, name = parts
    check_namespace(namespace)
    if not (wildcards and workflow == WILDCARD):
        _check(
            workflow,
            "workflow",
            _WORKFLOW,
            WORKFLOW_NAME_MAX_CHARS,
            "a workflow name" + (" or '*'" if wildcards else ""),
        )
    if not (wildcards and node == WILDCARD):
        _check(
            node, "node", _NODE, NODE_ID_MAX_CHARS, "a node id" + (" or '*'" if wildcards else "")
        )
    check_name(name)
    return MemoryKey(namespace, workflow, node, name)


def aggregate_id(namespace: str) -> str:
    """The namespace's aggregate id. An agent name may hold '.', which a NATS subject
    token cannot: it becomes 'D' (names are lowercase, so no two namespaces meet)."""
    return check_namespace(namespace).replace(".", "D")


def value_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (what the limit counts); ``MemoryKeyError`` if
    it is not JSON at all."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise MemoryKeyError(f"a memory value must be JSON: {error}") from None
    return len(text.encode("utf-8", "surrogatepass"))


def check_value(key: str, value: Any) -> None:
    size = value_size(value)
    if size > MEMORY_VALUE_MAX_BYTES:
        raise MemoryKeyError(
            f"the value for {key} is too large to remember ({size} bytes as JSON; "
            f"the limit is {MEMORY_VALUE_MAX_BYTES})"
        )


# -- events -----------------------------------------------------------------------------


class MemoryWritten(EventPayload):
    """A value remembered under ``namespace:workflow:node_id:name`` by one node execution
    (``run_id``, ``node_id``, ``iteration``). ``version`` counts the key's writes (1 for
    the first): the fold of the namespace before the append says what it is, and the
    append is checked against that fold's version, so two runs cannot both write one
    version; the later write wins."""

    event_type = "memory.written"
    aggregate = "memory"

    namespace: str = Field(pattern=MEMORY_NAMESPACE_PATTERN)
    workflow: str = Field(pattern=WORKFLOW_NAME_PATTERN)
    node_id: str = Field(pattern=NODE_ID_PATTERN)
    name: str = Field(pattern=MEMORY_NAME_PATTERN)
    value: JsonValue
    version: int = Field(ge=1)
    run_id: str = Field(min_length=1, max_length=200)
    iteration: int = Field(default=1, ge=1)

    @property
    def key(self) -> str:
        return f"{self.namespace}:{self.workflow}:{self.node_id}:{self.name}"

    @model_validator(mode="after")
    def _fits(self) -> MemoryWritten:
        check_value(self.key, self.value)
        return self


class MemoryValue(BaseModel):
    """One read of a node: the pattern it declared, the key it matched (None: nothing
    was remembered under it) with that key's version, and the value (None then)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pattern: str = Field(max_length=MEMORY_KEY_MAX_CHARS)
    key: str | None = Field(default=None, max_length=MEMORY_KEY_MAX_CHARS)
    value: JsonValue = None
    version: int = Field(default=0, ge=0)


class MemoryRead(EventPayload):
    """What a node's execution read from memory, recorded on its run before it used it:
    a resumed or replayed run uses these values instead of reading again."""

    event_type = "run.memory.read"
    aggregate = "run"

    node_id: str = Field(pattern=NODE_ID_PATTERN)
    iteration: int = Field(ge=1)
    values: tuple[MemoryValue, ...] = Field(default=(), max_length=MEMORY_ACCESS_MAX)


MEMORY_EVENTS: tuple[type[EventPayload], ...] = (MemoryWritten, MemoryRead)


# -- the fold -------------------------------------------------------------------------------


class Remembered(NamedTuple):
    """The latest write of one key, and where it stands in the stream."""

    value: Any
    version: int
    sequence: int
    run_id: str


@dataclass
class MemoryState:
    """One namespace as its events say it is.

    Folded in place (``evolve``): each process keeps one per namespace it reads and
    brings it up to date with the events that came since ``version`` (one batched read),
    so a read costs the new events, not the namespace's whole history. ``origins`` are the
    node executions that wrote, which makes a write replayed after a crash a no-op."""

    namespace: str
    version: int = 0  # stream sequence of the last event folded
    keys: dict[tuple[str, str, str], Remembered] = field(default_factory=dict)
    origins: set[tuple[str, str, int]] = field(default_factory=set)

    def evolve(self, payload: Any, sequence: int) -> None:
        if isinstance(payload, MemoryWritten) and sequence > self.version:
            self.keys[(payload.workflow, payload.node_id, payload.name)] = Remembered(
                payload.value, payload.version, sequence, payload.run_id
            )
            self.origins.add((payload.run_id, payload.node_id, payload.iteration))
        self.version = max(self.version, sequence)

    def lookup(self, pattern: MemoryKey) -> tuple[MemoryKey, Remembered] | None:
        """The latest write to a key ``pattern`` matches (the highest in the stream)."""
        best: tuple[MemoryKey, Remembered] | None = None
        for (workflow, node, name), entry in self.keys.items():
            if pattern.matches(workflow, node, name) and (
                best is None or entry.sequence > best[1].sequence
            ):
                best = (MemoryKey(self.namespace, workflow, node, name), entry)
        return best

    def read(self, pattern: MemoryKey) -> MemoryValue:
        found = self.lookup(pattern)
        if found is None:
            return MemoryValue(pattern=str(pattern))
        key, entry = found
        return MemoryValue(
            pattern=str(pattern), key=str(key), value=entry.value, version=entry.version
        )

    def writes(
        self,
        *,
        workflow: str,
        node_id: str,
        run_id: str,
        iteration: int,
        values: dict[str, Any],
    ) -> list[MemoryWritten]:
        """The events that remember ``values`` (name -> value) for one node execution:
        none when that execution wrote already (a replay, a retried append)."""
        if (run_id, node_id, iteration) in self.origins:
            return []
        return [
            MemoryWritten(
                namespace=self.namespace,
                workflow=workflow,
                node_id=node_id,
                name=name,
                value=value,
                version=self._version_of(workflow, node_id, name) + 1,
                run_id=run_id,
                iteration=iteration,
            )
            for name, value in values.items()
        ]

    def _version_of(self, workflow: str, node_id: str, name: str) -> int:
        entry = self.keys.get((workflow, node_id, name))
        return 0 if entry is None else entry.version
