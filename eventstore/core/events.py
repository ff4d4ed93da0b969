"""Typed domain events: subclass :class:`Event` and the type registers itself.

The type name (default: the class name) and the schema version travel with every event, so a
projector in another process decodes it with the class registered under the same pair. A projector
learns an application's classes by importing the modules named in ``EVENTSTORE_APP_MODULES``.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from eventstore.core.errors import ConfigurationError, InvalidEventError, UnknownEventTypeError
from eventstore.core.payloadcheck import PayloadCheck, compile_check
from eventstore.core.validation import check_no_nul


class Event(BaseModel):
    """Base class of domain events. Fields are the payload; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1
    # Appended only by the server (lock history, rejection records); the projector refuses them from agents.
    server_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__ or not cls.__dict__["event_type"]:
            cls.event_type = cls.__name__

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if not cls.__dict__.get("abstract_event", False):  # a shared base class is no event type
            registry.register(cls)


class EventRegistry:
    """Maps (type name, schema version) to the Event class; one per process."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, int], type[Event]] = {}
        # Per class: the compiled acceptance check (core/payloadcheck.py), or None: pydantic validates.
        self._checks: dict[type[Event], PayloadCheck | None] = {}
        self._lock = threading.Lock()

    def register(self, cls: type[Event]) -> None:
        key = (cls.event_type, cls.schema_version)
        with self._lock:
            existing = self._types.get(key)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise ConfigurationError(
                    f"event type {cls.event_type!r} v{cls.schema_version} is defined twice "
                    f"({existing.__module__}.{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}); "
                    "give one of them another event_type"
                )
            self._types[key] = cls

    def lookup(self, event_type: str, schema_version: int) -> type[Event]:
        cls = self._types.get((event_type, schema_version))
        if cls is None:
            raise UnknownEventTypeError(
                f"unknown event type {event_type!r} schema version {schema_version}: no imported module "
                "defines it; add its module to EVENTSTORE_APP_MODULES of the projector"
            )
        return cls

    def decode(self, event_type: str, schema_version: int, payload: dict[str, Any]) -> Event:
        cls = self.lookup(event_type, schema_version)
        try:
            return cls.model_validate(payload)
        except ValidationError as e:
            raise InvalidEventError(f"invalid {event_type} v{schema_version} payload: {_summary(e)}") from e

    def decode_payload(self, event_type: str, schema_version: int,
                       payload: dict[str, Any]) -> tuple[type[Event], dict[str, Any]]:
        """The registered class and the payload as its ``model_dump(mode="json")`` gives it. A payload the
        class's compiled check accepts is taken as it is; any other goes through pydantic (``decode``), so
        a refusal is pydantic's, with the same text."""
        cls = self.lookup(event_type, schema_version)
        check = self.check_for(cls)
        if check is not None:
            accepted = check(payload)
            if accepted is not None:
                return cls, accepted
        return cls, self.decode(event_type, schema_version, payload).model_dump(mode="json")

    def check_for(self, cls: type[Event]) -> PayloadCheck | None:
        """The compiled acceptance check of ``cls`` (core/payloadcheck.py; made once per class), or None when
        only pydantic can decide for it."""
        try:
            return self._checks[cls]
        except KeyError:
            check = self._checks[cls] = compile_check(cls)
            return check

    def known(self) -> list[tuple[str, int]]:
        return sorted(self._types)


def _summary(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(payload)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validate_event(event: Event) -> dict[str, Any]:
    """The event's payload as JSON-ready data, re-validated so that ``model_construct`` cannot smuggle
    an invalid event past the SDK."""
    if not isinstance(event, Event) or type(event) is Event:
        raise InvalidEventError(f"expected an instance of an eventstore.Event subclass, got {type(event).__name__}")
    if event.server_only:
        raise InvalidEventError(f"{event.event_type} events are written by the server only; agents cannot emit them")
    return _validated(event, event.model_dump(mode="json"))


def _validated(event: Event, payload: dict[str, Any]) -> dict[str, Any]:
    check_no_nul(event.event_type, payload)
    try:
        type(event).model_validate(payload)
    except ValidationError as e:
        raise InvalidEventError(f"invalid {event.event_type} event: {_summary(e)}") from e
    return payload


def emit_payload(event: Event, dumped: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
    """:func:`validate_event` for the SDK's hot path: the payload, and whether its NUL walk still has to run.

    A payload the class's compiled check (core/payloadcheck.py) accepts is one pydantic accepts, so it is
    not validated a second time, and its NUL walk is left to the caller (True), who tests the JSON it
    writes for ``\\u0000`` instead and walks only on a hit (:func:`check_written_nul`). Any other payload
    takes :func:`validate_event`'s own steps in its order (False: walked), so every refusal is the same.
    ``dumped``: the event's ``model_dump(mode="json")`` if the caller has it (:func:`dump_payloads`)."""
    cls = type(event)
    if not isinstance(event, Event) or cls is Event or event.server_only:
        return validate_event(event), False  # raises, with validate_event's reason
    payload = event.model_dump(mode="json") if dumped is None else dumped
    check = registry.check_for(cls)
    if check is not None and check(payload) is not None:
        return payload, True
    return _validated(event, payload), False


_LIST_ADAPTERS: dict[type[Event], TypeAdapter[list[Any]]] = {}


def dump_payloads(events: list[Any]) -> list[dict[str, Any]] | None:
    """Each event's ``model_dump(mode="json")``, made by one pydantic call for a batch of one Event class (a
    call per event costs more than the dump itself); None when the events are not all of one exact class or
    the call fails: the caller then dumps each event itself, so its refusal is the usual one."""
    if len(events) < 2:
        return None
    cls = type(events[0])
    if not issubclass(cls, Event) or cls is Event or any(type(e) is not cls for e in events):
        return None
    adapter = _LIST_ADAPTERS.get(cls)
    if adapter is None:
        adapter = _LIST_ADAPTERS[cls] = TypeAdapter(list[cls])  # type: ignore[valid-type]
    try:
        dumped: list[dict[str, Any]] = adapter.dump_python(events, mode="json")
    except Exception:  # anything: the caller dumps each event and refuses as validate_event does
        return None
    return dumped


def check_written_nul(event_type: str, payload: dict[str, Any], written: bytes) -> None:
    """The NUL check of :func:`validate_event` on a payload already written as JSON: JSON writes a NUL as
    ``\\u0000``, so JSON without that text holds none and the walk runs only when it is there (the text
    may also be an escaped backslash followed by ``u0000``: the walk decides)."""
    if b"\\u0000" in written:
        check_no_nul(event_type, payload)


def import_app_modules(modules: tuple[str, ...] | list[str]) -> None:
    """Import the modules that define an application's events and read models."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigurationError(f"EVENTSTORE_APP_MODULES names {name!r}, which cannot be imported: {e}") from e


registry = EventRegistry()
