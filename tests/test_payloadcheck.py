"""The compiled payload check (core/payloadcheck.py) accepts only what pydantic accepts and dumps unchanged,
and everything else reaches pydantic with its own refusal text (no servers; hypothesis, differential)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eventstore.core.errors import InvalidEventError
from eventstore.core.events import Event, EventRegistry
from eventstore.core.hashing import canonical_json
from eventstore.core.payloadcheck import compile_check

CONFIG = ConfigDict(extra="forbid", frozen=True)


class Plain(BaseModel):
    model_config = CONFIG
    name: str = Field(min_length=1, max_length=5)
    count: int = Field(ge=-3, lt=1000)
    ratio: float = Field(gt=-1.5, le=2**40)
    flag: bool
    free: str
    big: int


class ProbeEvent(Event):
    event_type = "PayloadCheckProbe"
    sku: str = Field(min_length=1, max_length=100)
    quantity: int = Field(ge=0)


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["", "a\ud800", "\udfff", "é", "12", "1.5", "true"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
KEYS = st.sampled_from(["name", "count", "ratio", "flag", "free", "big", "other"])


def _pydantic(cls: type[BaseModel], payload: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return cls.model_validate(payload).model_dump(mode="json")
    except ValidationError:
        return None


def _same(a: Any, b: Any) -> bool:
    """Equal including types (1, 1.0 and True are equal in Python, not on the wire)."""
    return canonical_json(a) == canonical_json(b) and type(a) is type(b) and (
        not isinstance(a, dict) or all(type(a[k]) is type(b[k]) for k in a))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_accepts_only_what_pydantic_dumps_unchanged(payload: dict[str, Any]) -> None:
    check = compile_check(Plain)
    assert check is not None
    got = check(dict(payload))
    if got is not None:
        assert _same(got, _pydantic(Plain, payload))


@settings(max_examples=300, deadline=None)
@given(name=st.text(min_size=1, max_size=5).filter(lambda s: s.isascii()),
       count=st.integers(-3, 999), ratio=st.floats(-1.4, 2**40), flag=st.booleans(), free=st.text(max_size=20),
       big=st.integers(-(2**63), 2**63 - 1))
def test_accepts_every_plain_valid_payload(name: str, count: int, ratio: float, flag: bool, free: str,
                                          big: int) -> None:
    payload = {"name": name, "count": count, "ratio": ratio, "flag": flag, "free": free, "big": big}
    check = compile_check(Plain)
    assert check is not None
    expected = _pydantic(Plain, payload)
    if expected is None:  # a lone surrogate in free: pydantic refuses, so must the check
        assert check(payload) is None
    else:
        assert check(payload) is payload and _same(payload, expected)


@pytest.mark.parametrize("payload", [
    {"name": "", "count": 0, "ratio": 0.0, "flag": True, "free": "", "big": 0},  # too short
    {"name": "abcdef", "count": 0, "ratio": 0.0, "flag": True, "free": "", "big": 0},  # too long
    {"name": "a", "count": -4, "ratio": 0.0, "flag": True, "free": "", "big": 0},  # below ge
    {"name": "a", "count": 1000, "ratio": 0.0, "flag": True, "free": "", "big": 0},  # not lt
    {"name": "a", "count": 0, "ratio": -1.5, "flag": True, "free": "", "big": 0},  # not gt
    {"name": "a", "count": 0, "ratio": 0, "flag": True, "free": "", "big": 0},  # int for float: converted
    {"name": "a", "count": True, "ratio": 0.0, "flag": True, "free": "", "big": 0},  # bool for int
    {"name": "a", "count": 0, "ratio": math.inf, "flag": True, "free": "", "big": 0},  # non-finite
    {"name": "a", "count": 0, "ratio": 0.0, "flag": 1, "free": "", "big": 0},  # int for bool
    {"name": "a", "count": 0, "ratio": 0.0, "flag": True, "free": "a\ud800", "big": 0},  # lone surrogate
    {"name": "a", "count": 0, "ratio": 0.0, "flag": True, "free": "", "big": 2**63},  # beyond 64 bits
    {"name": "a", "count": 0, "ratio": 0.0, "flag": True, "free": ""},  # missing
    {"name": "a", "count": 0, "ratio": 0.0, "flag": True, "free": "", "big": 0, "x": 1},  # extra
])
def test_declines_what_pydantic_must_decide(payload: dict[str, Any]) -> None:
    check = compile_check(Plain)
    assert check is not None
    assert check(payload) is None


def test_classes_not_plain_get_no_check() -> None:
    class Optionally(BaseModel):
        model_config = CONFIG
        x: str | None

    class Pattern(BaseModel):
        model_config = CONFIG
        x: str = Field(pattern="^a")

    class Aliased(BaseModel):
        model_config = CONFIG
        x: str = Field(alias="y")

    class Validated(BaseModel):
        model_config = CONFIG
        x: str

        @field_validator("x")
        @classmethod
        def upper(cls, v: str) -> str:
            return v.upper()

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
        x: int

    class Lenient(BaseModel):
        model_config = ConfigDict(frozen=True)
        x: int

    class PostInit(BaseModel):
        model_config = CONFIG
        x: int

        def model_post_init(self, context: Any) -> None:
            raise ValueError("no")

    class Excluded(BaseModel):
        model_config = CONFIG
        x: int = Field(exclude=True)

    class Inherited(Validated):  # the parent's validator still applies
        y: int

    class ModelValidated(BaseModel):
        model_config = CONFIG
        x: int

        @model_validator(mode="after")
        def same(self) -> ModelValidated:
            return self

    class StrictField(BaseModel):
        model_config = CONFIG
        x: int = Field(strict=True)

    class Multiple(BaseModel):
        model_config = CONFIG
        x: int = Field(multiple_of=2)

    class FiniteOnly(BaseModel):
        model_config = CONFIG
        x: float = Field(allow_inf_nan=False)

    for cls in (Optionally, Pattern, Aliased, Validated, Strict, Lenient, PostInit, Excluded, Inherited,
                ModelValidated, StrictField, Multiple, FiniteOnly):
        assert compile_check(cls) is None, cls.__name__


def test_registry_takes_the_fast_path_and_keeps_refusal_texts() -> None:
    types = EventRegistry()
    types.register(ProbeEvent)
    good = {"quantity": 3, "sku": "x"}
    cls, payload = types.decode_payload("PayloadCheckProbe", 1, good)
    assert cls is ProbeEvent and payload is good
    for bad in ({"sku": "", "quantity": 1}, {"sku": "x", "quantity": -1}, {"sku": "x"},
                {"sku": "x", "quantity": 1, "extra": 2}, {"sku": 5, "quantity": 1}, {"sku": "x", "quantity": [1]}):
        with pytest.raises(InvalidEventError) as fast:
            types.decode_payload("PayloadCheckProbe", 1, bad)
        with pytest.raises(InvalidEventError) as slow:
            types.decode("PayloadCheckProbe", 1, bad)
        assert str(fast.value) == str(slow.value)
    # a value pydantic converts (2.0 or "2" for an int) is converted exactly as before
    for lax in (2.0, "2"):
        _, converted = types.decode_payload("PayloadCheckProbe", 1, {"sku": "x", "quantity": lax})
        assert converted == {"sku": "x", "quantity": 2} and type(converted["quantity"]) is int
