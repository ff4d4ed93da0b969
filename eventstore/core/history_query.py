"""Audit queries on the event log, validated before any SQL runs (pure).

A :class:`HistoryQuery` holds the filters an auditor may combine (stream, agent, type, database-time
range on ``recorded_at``, global position range, correlation id) and the page size. Pages are keyset
paginated on the global position: a cursor names the last position shown and a digest of the
filters, so a page never repeats or skips rows while writes continue (new events only ever get
higher positions) and a cursor cannot be replayed against other filters.

Resources in the write map are *stream categories*: the stream name up to its last ``-``
(``inventory-sku-42`` -> ``inventory-sku``; a stream without ``-`` is its own category).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta

from eventstore.core.errors import InvalidQueryError
from eventstore.core.validation import CONTROL_CHARS, MAX_BIGINT, MAX_NAME

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_TIME_SPAN = timedelta(days=3660)  # ten years: anything wider is a typo, not an audit question


def stream_category(stream: str) -> str:
    """The resource a stream belongs to: its name up to the last ``-`` (or the whole name)."""
    head, sep, _ = stream.rpartition("-")
    return head if sep and head else stream


def _name(what: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_NAME or CONTROL_CHARS.search(value):
        raise InvalidQueryError(f"{what} must be 1 to {MAX_NAME} printable characters, got {value[:40]!r}")
    return value


def _position(what: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > MAX_BIGINT:
        raise InvalidQueryError(f"{what} must be a whole number from 0 to {MAX_BIGINT}, got {value!r}")
    return value


def parse_time(what: str, value: str | None) -> datetime | None:
    """An ISO 8601 timestamp with a time zone (database time is compared, never the agent's)."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError as e:
        raise InvalidQueryError(f"{what} {value[:40]!r} is not an ISO 8601 timestamp "
                                "(e.g. 2026-11-28T07:00:00+00:00)") from e
    if t.tzinfo is None:
        raise InvalidQueryError(f"{what} {value[:40]!r} has no time zone; add +00:00 or Z")
    return t


def parse_uuid(what: str, value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError) as e:
        raise InvalidQueryError(f"{what} {str(value)[:40]!r} is not a UUID") from e


@dataclass(frozen=True)
class HistoryQuery:
    """Validated filters of one history query; build it with :meth:`create`."""

    stream: str | None = None
    agent: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    from_position: int | None = None
    to_position: int | None = None
    correlation: uuid.UUID | None = None
    limit: int = DEFAULT_LIMIT
    after: int = 0  # the last position of the previous page (from the cursor)

    @classmethod
    def create(cls, *, stream: str | None = None, agent: str | None = None, type: str | None = None,
               since: str | datetime | None = None, until: str | datetime | None = None,
               from_position: int | None = None, to_position: int | None = None,
               correlation: str | uuid.UUID | None = None, limit: int = DEFAULT_LIMIT,
               after: str | None = None) -> HistoryQuery:
        """Check every parameter; an InvalidQueryError names the first one that is wrong."""
        since_t = parse_time("since", since) if isinstance(since, str) else since
        until_t = parse_time("until", until) if isinstance(until, str) else until
        if since_t is not None and until_t is not None:
            if until_t < since_t:
                raise InvalidQueryError(f"until ({until_t.isoformat()}) is before since ({since_t.isoformat()})")
            if until_t - since_t > MAX_TIME_SPAN:
                raise InvalidQueryError(f"the time range spans more than {MAX_TIME_SPAN.days} days; narrow it")
        lo = _position("from_position", from_position)
        hi = _position("to_position", to_position)
        if lo is not None and hi is not None and hi < lo:
            raise InvalidQueryError(f"to_position ({hi}) is below from_position ({lo})")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidQueryError(f"limit must be from 1 to {MAX_LIMIT}, got {limit!r}")
        corr = parse_uuid("correlation", correlation) if isinstance(correlation, str) else correlation
        q = cls(stream=_name("stream", stream), agent=_name("agent", agent), type=_name("type", type),
                since=since_t, until=until_t, from_position=lo, to_position=hi, correlation=corr, limit=limit)
        if after is not None:
            q = replace(q, after=decode_cursor(after, q))
        return q

    def digest(self) -> str:
        """A short digest of the filters (not the page), bound into every cursor."""
        fields = asdict(self)
        fields.pop("limit")
        fields.pop("after")
        text = json.dumps(fields, default=str, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def next_cursor(self, last_position: int) -> str:
        return encode_cursor(last_position, self)


def encode_cursor(last_position: int, query: HistoryQuery) -> str:
    """An opaque token: the last position shown and the digest of the filters it belongs to."""
    raw = f"{last_position}:{query.digest()}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, query: HistoryQuery) -> int:
    """The position a cursor continues after; InvalidQueryError if it is malformed or belongs to
    another query."""
    if not token or len(token) > 100:
        raise InvalidQueryError("after: not a cursor from a previous page of this query")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        pos_text, digest = raw.split(":", 1)
        position = int(pos_text)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidQueryError("after: not a cursor from a previous page of this query") from e
    if digest != query.digest():
        raise InvalidQueryError("after: the cursor belongs to a query with other filters; start again without it")
    if not 0 <= position <= MAX_BIGINT:
        raise InvalidQueryError("after: the cursor's position is out of range")
    return position
