"""The catalog mechanism: event types, their payload models, and upcasters.

Changing a payload means a new ``schema_version`` on the model and an upcaster from
the previous version, so events written years ago still load as today's model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import pydantic

from chiffon.events.envelope import Envelope, EventPayload, RawEnvelope

_ENVELOPE_FIELDS = tuple(name for name in RawEnvelope.model_fields if name != "payload")

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# The start of an envelope as ``model_dump_json`` writes it (fields in declaration order).
_HEAD = re.compile(
    rb'^\{"event_id":"[0-9a-f-]{36}","type":"([a-z0-9_.]{1,100})","schema_version":(\d{1,9}),'
)


class UnknownEventType(LookupError):
    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}: not in the catalog")
        self.event_type = event_type


class EventValidationError(ValueError):
    """A payload or envelope that does not match its model. Nothing was written."""

    def __init__(self, event_type: str, detail: str) -> None:
        super().__init__(f"invalid {event_type} event: {detail}")
        self.event_type = event_type
        self.detail = detail


def _describe(error: pydantic.ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


class Catalog:
    """Every event type Chiffon knows, with its current payload model and upcasters."""

    def __init__(self, payloads: Iterable[type[EventPayload]] = ()) -> None:
        self._models: dict[str, type[EventPayload]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._envelopes: dict[str, type[Envelope[Any]]] = {}
        for model in payloads:
            self.register(model)

    def register(self, model: type[EventPayload]) -> type[EventPayload]:
        existing = self._models.get(model.event_type)
        if existing is not None and existing is not model:
            raise ValueError(f"event type {model.event_type!r} registered twice")
        self._models[model.event_type] = model
        return model

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function that turns a ``from_version`` payload into the next version."""

        def register(function: Upcaster) -> Upcaster:
            self._upcasters[(event_type, from_version)] = function
            return function

        return register

    def model(self, event_type: str) -> type[EventPayload]:
        try:
            return self._models[event_type]
        except KeyError:
            raise UnknownEventType(event_type) from None

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._models

    def types(self) -> list[str]:
        return sorted(self._models)

    def check(self, envelope: Envelope[Any]) -> None:
        """Refuse an envelope whose payload is not its type's current model."""
        model = self.model(envelope.type)
        payload = envelope.payload
        if type(payload) is not model:
            raise EventValidationError(
                envelope.type,
                f"payload is {type(payload).__name__}, expected {model.__name__}",
            )
        if envelope.schema_version != model.schema_version:
            raise EventValidationError(
                envelope.type,
                f"schema_version {envelope.schema_version} is not the current {model.schema_version}",
            )
        if envelope.aggregate != model.aggregate:
            raise EventValidationError(
                envelope.type, f"aggregate {envelope.aggregate!r}, expected {model.aggregate!r}"
            )

    def upcast(self, raw: RawEnvelope) -> RawEnvelope:
        model = self.model(raw.type)
        payload, version = raw.payload, raw.schema_version
        while version < model.schema_version:
            step = self._upcasters.get((raw.type, version))
            if step is None:
                raise EventValidationError(raw.type, f"no upcaster from schema_version {version}")
            payload, version = step(dict(payload)), version + 1
        if version > model.schema_version:
            raise EventValidationError(
                raw.type,
                f"schema_version {version} is newer than this code knows ({model.schema_version})",
            )
        return raw.model_copy(update={"payload": payload, "schema_version": version})

    def decode(self, data: bytes | str) -> Envelope[Any]:
        """Parse a stored event, upcast it to the current version, validate its payload.

        The common case (current version) is one JSON parse and one validation into
        the typed envelope; only old events take the upcasting path.
        """
        head = _HEAD.match(data if isinstance(data, bytes) else data.encode())
        if head is not None:
            # As written by the store: the type and version are at the start, so the
            # document goes to pydantic's JSON parser in one pass.
            model = self._models.get(head.group(1).decode())
            if model is not None and int(head.group(2)) == model.schema_version:
                try:
                    envelope = self._adapter(model).model_validate_json(data)
                except pydantic.ValidationError as error:
                    raise EventValidationError(model.event_type, _describe(error)) from None
                if envelope.type == model.event_type:  # a repeated "type" key lands here
                    return envelope
        try:
            document = json.loads(data)
        except ValueError as error:
            raise EventValidationError("(envelope)", f"not JSON: {error}") from None
        if not isinstance(document, dict):
            raise EventValidationError("(envelope)", "not a JSON object")
        event_type = document.get("type")
        model = self.model(event_type) if isinstance(event_type, str) else None
        if model is None or document.get("schema_version") != model.schema_version:
            try:
                raw = RawEnvelope.model_validate(document)
            except pydantic.ValidationError as error:
                raise EventValidationError("(envelope)", _describe(error)) from None
            return self.from_raw(raw)
        try:
            return self._adapter(model).model_validate(document)
        except pydantic.ValidationError as error:
            raise EventValidationError(model.event_type, _describe(error)) from None

    def _adapter(self, model: type[EventPayload]) -> type[Envelope[Any]]:
        adapter = self._envelopes.get(model.event_type)
        if adapter is None:
            adapter = self._envelopes[model.event_type] = Envelope[model]  # type: ignore[valid-type]
        return adapter

    def from_raw(self, raw: RawEnvelope) -> Envelope[Any]:
        current = self.upcast(raw)
        model = self.model(current.type)
        try:
            payload = model.model_validate(current.payload)
        except pydantic.ValidationError as error:
            raise EventValidationError(current.type, _describe(error)) from None
        fields = {name: getattr(current, name) for name in _ENVELOPE_FIELDS}
        return self._adapter(model).model_construct(**fields, payload=payload)

    def build(self, event_type: str, payload: dict[str, Any]) -> EventPayload:
        """Validate a payload given as a mapping (e.g. from a command) into its model."""
        model = self.model(event_type)
        try:
            return model.model_validate(payload)
        except pydantic.ValidationError as error:
            raise EventValidationError(event_type, _describe(error)) from None
