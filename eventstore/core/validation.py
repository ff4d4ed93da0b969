"""Checks on names and values that every hop applies the same way (pure): stream names, agent ids,
idempotency keys, NUL characters, reserved streams. Each failure names what was wrong."""

from __future__ import annotations

import re

from eventstore.core.errors import InvalidEventError

MAX_NAME = 200
MAX_BIGINT = 2**63 - 1  # PostgreSQL bigint: larger numbers would fail in the projector's transaction
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# Streams written only by the server (the coordinator's lock history, operator actions such as an
# offsets reset); agents may not forge them.
RESERVED_STREAM_PREFIXES = ("lease-", "agent-", "ops-")


def check_name(what: str, value: object) -> str:
    """A stream, agent id, resource or idempotency key: a non-empty string of at most ``MAX_NAME``
    characters without control characters."""
    if not isinstance(value, str) or not value:
        raise InvalidEventError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME:
        raise InvalidEventError(f"{what} is {len(value)} characters long; at most {MAX_NAME} are allowed")
    # printable ASCII holds no control character: the regex runs only for other text
    if not (value.isascii() and value.isprintable()) and CONTROL_CHARS.search(value):
        raise InvalidEventError(f"{what} {value!r} contains control characters")
    return value


def check_stream(value: object) -> str:
    """A stream name an agent may write: valid, and not one of the server's own history streams."""
    stream = check_name("stream", value)
    if stream.startswith(RESERVED_STREAM_PREFIXES):
        raise InvalidEventError(f"stream {stream!r} is reserved for the server's own history "
                                f"(prefixes {', '.join(RESERVED_STREAM_PREFIXES)}); use another name")
    return stream


def check_no_nul(event_type: str, payload: object) -> None:
    """PostgreSQL cannot store a NUL character in jsonb or text; refuse it with a clear reason."""
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidEventError(f"{event_type} payload contains a NUL character, which PostgreSQL "
                                        "cannot store; remove it or encode the value")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def printable(text: str) -> str:
    """A reason safe to store and show: control characters (NUL included) written as escapes."""
    return CONTROL_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
