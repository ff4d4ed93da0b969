"""Limits on what an intake message may carry, and the no-silent-skip rule for stored offsets (pure).

Every hop applies the same limits, so a message that passes the SDK also passes the projector:

- ``MAX_JSON_DEPTH``: JSON nested deeper than this is refused before any parser sees it. Python's
  ``json`` module raises RecursionError near 1,000 levels, pydantic's parser stops at about 200 and
  PostgreSQL's jsonb functions recurse too; an event payload is a domain record, for which 64 levels
  are far more than enough.
- Byte sizes (``Settings.max_event_bytes`` / ``max_committed_bytes``) are checked by the callers that
  know the encoded size; the defaults and their reasons are in docs/faults.md.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from eventstore.core.errors import InvalidEventError

MAX_JSON_DEPTH = 64
# Defaults of Settings.max_event_bytes / max_committed_bytes. Kafka's default message.max.bytes is
# 1,048,588 and librdkafka's producer refuses messages over 1,000,000: both stay below, with room for
# the key, the headers and the fields the committed form adds.
DEFAULT_MAX_EVENT_BYTES = 900_000
DEFAULT_MAX_COMMITTED_BYTES = 990_000
# Strings (with their escapes) are removed before brackets are counted: a "[" inside a string is no nesting.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (a plain text scan, no recursion)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return raw.count(b"[") + raw.count(b"{")  # an upper bound that is already within the limit
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(_DEPTH_STEP[b] for b in brackets), default=0)


def check_json_depth(raw: bytes, what: str = "message") -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH, before a recursive parser can fail on it."""
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise InvalidEventError(f"{what} is JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} levels "
                                "are allowed (deeper nesting exhausts parsers' recursion limits); flatten it")


def check_size(size: int, limit: int, what: str, setting: str) -> None:
    """Refuse an encoded message over ``limit`` bytes, naming both numbers and the setting that sets it."""
    if size > limit:
        raise InvalidEventError(f"{what} is {size:,} bytes; the limit is {limit:,} bytes ({setting}); "
                                "store large content elsewhere and put a reference in the event")


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def check_values(event_type: str, payload: Any) -> None:
    """Values PostgreSQL or UTF-8 cannot hold: lone surrogates in strings (keys too), NaN and infinities."""
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                raise InvalidEventError(f"{event_type} payload contains a lone UTF-16 surrogate, which is not "
                                        "valid Unicode text; fix the encoding of the value")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidEventError(f"{event_type} payload contains {item!r}, which JSON and PostgreSQL "
                                        "cannot store; use null or a finite number")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_timestamp(what: str, value: datetime | None) -> None:
    """A timestamp that stays within the representable range once converted to UTC."""
    if value is None:
        return
    try:
        value.astimezone(UTC)
    except (OverflowError, ValueError) as e:
        raise InvalidEventError(f"{what} {value.isoformat()} is out of range once converted to UTC ({e}); "
                                "send a timestamp between years 1 and 9999 in UTC") from e


def check_key(key: bytes | None, stream: str) -> None:
    """The message key must be the envelope's stream: the key picks the partition, and per-stream
    order holds only if all of a stream's events land in the same one."""
    if key != stream.encode():
        shown = "no key" if key is None else f"key {key[:100]!r}"
        raise InvalidEventError(f"message has {shown} but its envelope's stream is {stream!r}; the key must be "
                                "the stream name in UTF-8 (the SDK does this), or per-stream order breaks")


def offset_problem(topic: str, partition: int, stored: int, low: int, high: int) -> str | None:
    """Why a stored next offset cannot be trusted against the topic's watermarks, or None.

    Ahead of the end: the topic was recreated (or lost its data), and new messages at lower offsets
    would be taken as applied. Behind the start: messages the projector never applied were deleted
    (retention, truncation). Either way an operator must decide; nothing may be skipped silently.
    """
    if high < 0 or low < 0:  # the broker did not say
        return None
    if stored > high:
        return (f"stored offset {stored} of {topic}[{partition}] is beyond the topic's end offset {high}: the "
                f"topic was recreated or lost data; messages below {stored} would be skipped. Check what was "
                "lost, then run `eventstore offsets reset --topic intake --reason \"...\"`")
    if stored < low:
        return (f"stored offset {stored} of {topic}[{partition}] is before the topic's start offset {low}: "
                f"messages {stored}..{low - 1} were deleted (retention or truncation) before they were applied. "
                "Recover them if you can, then run `eventstore offsets reset --topic intake --reason \"...\"`")
    return None
