"""A compiled acceptance check for event classes whose fields are plain scalars.

The projector decodes each payload with msgspec and then had pydantic validate it and dump it again
(about 2 to 4 µs per event). For a class whose fields are only ``str``, ``int``, ``float`` or ``bool``, with
at most length bounds (strings) and ``ge``/``gt``/``le``/``lt`` (numbers), no aliases, validators,
serializers or other configuration, a decoded dict whose values have exactly those types and meet the
bounds is what pydantic would accept and dump unchanged, so this check takes it as it is. It only ever
accepts: anything else (a missing or extra key, another type, a bound not met, a non-finite float, an
integer beyond 64 bits, a string that is not valid UTF-8) returns None and the caller runs pydantic,
which refuses or converts with its own text. The differential tests hold it to pydantic's result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import annotated_types as at
from pydantic import BaseModel

PayloadCheck = Callable[[dict[str, Any]], "dict[str, Any] | None"]

_CONFIG_KEYS = frozenset({"extra", "frozen"})
# Methods through which a class could change what validation accepts or what the dump returns.
_OVERRIDES = ("model_validate", "model_dump", "model_post_init", "__get_pydantic_core_schema__")
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_FLOAT_BOUND = 2**53  # bounds an f64 holds exactly, so Python's comparison equals pydantic's


class _Field:
    """One field's compiled test: its type and bounds (None: no bound)."""

    __slots__ = ("ge", "gt", "kind", "le", "lt", "max_len", "min_len", "name")

    def __init__(self, name: str, kind: type) -> None:
        self.name = name
        self.kind: Any = kind
        self.min_len: int | None = None
        self.max_len: int | None = None
        self.ge: float | None = None
        self.gt: float | None = None
        self.le: float | None = None
        self.lt: float | None = None


def _bound_ok(kind: type, bound: object) -> bool:
    if kind is int:
        return type(bound) is int and _INT_MIN <= bound <= _INT_MAX
    return type(bound) in (int, float) and math.isfinite(bound) and abs(bound) <= _FLOAT_BOUND  # type: ignore[arg-type]


def _compile_field(name: str, info: Any) -> _Field | None:
    kind = info.annotation
    if kind not in (str, int, float, bool):
        return None
    if info.alias is not None or info.validation_alias is not None or info.serialization_alias is not None:
        return None
    if info.exclude or info.discriminator is not None:
        return None
    f = _Field(name, kind)
    for m in info.metadata:
        if kind is str and type(m) is at.MinLen and type(m.min_length) is int:
            f.min_len = m.min_length
        elif kind is str and type(m) is at.MaxLen and type(m.max_length) is int:
            f.max_len = m.max_length
        elif kind in (int, float) and type(m) in (at.Ge, at.Gt, at.Le, at.Lt):
            attr = type(m).__name__.lower()
            bound = getattr(m, attr)
            if not _bound_ok(kind, bound):
                return None
            setattr(f, attr, bound)
        else:
            return None  # any other constraint (pattern, strict, multiple_of, ...): pydantic decides
    return f


def compile_check(cls: type[BaseModel]) -> PayloadCheck | None:
    """The acceptance check of ``cls``, or None when the class is not plain enough for one."""
    config = dict(cls.model_config)
    if not set(config) <= _CONFIG_KEYS or config.get("extra") != "forbid":
        return None
    d = cls.__pydantic_decorators__
    if (d.validators or d.field_validators or d.root_validators or d.field_serializers or d.model_serializers
            or d.model_validators or d.computed_fields):
        return None
    for klass in cls.__mro__:
        if klass is BaseModel:
            break
        if any(attr in klass.__dict__ for attr in _OVERRIDES):
            return None
    compiled = []
    for name, info in cls.model_fields.items():
        f = _compile_field(name, info)
        if f is None:
            return None
        compiled.append(f)
    fields = tuple(compiled)
    count = len(fields)

    def check(payload: dict[str, Any]) -> dict[str, Any] | None:
        if len(payload) != count:
            return None
        for f in fields:
            try:
                v: Any = payload[f.name]
            except KeyError:
                return None
            if type(v) is not f.kind:
                return None
            if f.kind is str:
                if not v.isascii() and not _utf8(v):
                    return None
                if (f.min_len is not None and len(v) < f.min_len) or (f.max_len is not None and len(v) > f.max_len):
                    return None
            elif f.kind is not bool:
                if f.kind is int:
                    if not _INT_MIN <= v <= _INT_MAX:
                        return None
                elif not math.isfinite(v):
                    return None
                if ((f.ge is not None and not v >= f.ge) or (f.gt is not None and not v > f.gt)
                        or (f.le is not None and not v <= f.le) or (f.lt is not None and not v < f.lt)):
                    return None
        return payload

    return check


def _utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogate), as pydantic requires of a string."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
