"""Fresh event ids for the SDK's hot path: random (version 4) UUIDs, made from the same source as
``uuid.uuid4()`` (``os.urandom``: event ids must stay unguessable, or another agent could claim them first)
but many at a time, as their canonical text. The ``uuid.UUID`` object is made only where it is needed
(:func:`uuid_of`): an emit needs the text (it is written into the message and keys the pending table)."""

from __future__ import annotations

import os
import uuid

_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))  # byte 6: version 4 in the high nibble
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))  # byte 8: the RFC 4122 variant bits 10
_UUID = uuid.UUID
_UNKNOWN = uuid.SafeUUID.unknown
_new = object.__new__
_set = object.__setattr__
# uuid.UUID.__init__ itself fills exactly these two slots with object.__setattr__; where the class is laid
# out otherwise (another Python), the public constructor is used.
_FAST = getattr(_UUID, "__slots__", None) == ("int", "is_safe", "__weakref__")
POOL = 256  # ids drawn per refill of the shared pool (4 KiB from os.urandom)


def event_id_texts(n: int) -> list[str]:
    """``n`` random version-4 UUIDs as canonical text, from one ``os.urandom`` read (122 random bits each)."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = raw[6::16].translate(_VERSION)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    h = raw.hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]


def uuid_of(text: str) -> uuid.UUID:
    """The ``uuid.UUID`` of an id's canonical text (as made by this module), without the general parser."""
    if _FAST:
        u = _new(_UUID)
        _set(u, "int", int(text.replace("-", ""), 16))
        _set(u, "is_safe", _UNKNOWN)
        return u
    return _UUID(text)  # pragma: no cover - other Python implementations


class _Pool:
    """Ids drawn ahead for single emits. ``list.pop`` hands each id to exactly one caller, also across
    threads (two threads refilling at once only waste ids); a forked child starts with an empty pool, so a
    parent and its child never hand out the same ids."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def take(self) -> str:
        try:
            return self.ids.pop()
        except IndexError:
            fresh = event_id_texts(POOL)
            text = fresh.pop()
            self.ids = fresh
            return text

    def clear(self) -> None:
        self.ids = []


_POOL = _Pool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.clear)


def next_event_id() -> str:
    """One fresh event id's canonical text, from the process's pool (see :class:`_Pool`)."""
    return _POOL.take()


def new_event_id() -> tuple[uuid.UUID, str]:
    """A random UUID (version 4, 122 random bits from os.urandom) and its canonical string."""
    text = _POOL.take()
    return uuid_of(text), text
