"""asyncio face of the SDK: the same client, awaited, with the same surface as :class:`AgentClient`.

Every method that only blocks on I/O is generated from its sync twin by
:class:`~eventstore.core.mirroring.offload` (same parameters and docstring, run in a worker thread),
so the two surfaces cannot drift; tests/test_surfaces.py fails if a sync method has no twin. Written by
hand: ``emit``/``emit_envelope``/``emit_many`` (producing never blocks, so they return handles at once)
and ``emit_and_wait``/``result``, which await the outcome future instead of parking a thread on it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from eventstore.core.errors import ClientClosedError, EmitTimeout
from eventstore.core.events import Event
from eventstore.core.mirroring import offload
from eventstore.core.outcomes import EmitResult
from eventstore.core.records import Envelope, LeaseRef
from eventstore.core.settings import Settings
from eventstore.sdk.client import AgentClient, EmitHandle, EmitOptions, HasLeaseRef

if TYPE_CHECKING:
    from consumers.views import LocalView


class AsyncAgentClient:
    """``async with AsyncAgentClient("agent") as c: await c.emit_and_wait(...)``."""

    def __init__(self, agent_id: str, settings: Settings | None = None, *, ensure_topic: bool = True,
                 credential: str | None = None) -> None:
        self._agent_id = agent_id
        self._settings = settings
        self._ensure_topic = ensure_topic
        self._credential = credential
        self._client: AgentClient | None = None

    async def open(self) -> AsyncAgentClient:
        """Connect (done by ``async with``); idempotent."""
        if self._client is None:
            self._client = await asyncio.to_thread(AgentClient, self._agent_id, self._settings,
                                                   ensure_topic=self._ensure_topic, credential=self._credential)
        return self

    async def __aenter__(self) -> AsyncAgentClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Flush pending emits and close the client (idempotent)."""
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    @property
    def sync(self) -> AgentClient:
        """The wrapped sync client (for code that runs in a thread)."""
        if self._client is None:
            raise ClientClosedError("the async client is not open: use 'async with AsyncAgentClient(...)' "
                                    "or 'await client.open()' before calling it")
        return self._client

    @property
    def agent_id(self) -> str:
        return self.sync.agent_id

    @property
    def view(self) -> LocalView | None:
        """The local view started by :meth:`follow`, if any."""
        return self.sync.view

    # -- written by hand: non-blocking produce, awaited outcomes ----------------------------------
    def emit(self, event: Event, stream: str, *, expected_version: int | None = None,
             idempotency_key: str | None = None, correlation_id: uuid.UUID | None = None,
             causation_id: uuid.UUID | None = None, lease: LeaseRef | HasLeaseRef | None = None) -> EmitHandle:
        """Send an event without waiting (producing does not block); ``await client.result(handle)``."""
        return self.sync.emit(event, stream, expected_version=expected_version, idempotency_key=idempotency_key,
                              correlation_id=correlation_id, causation_id=causation_id, lease=lease)

    def emit_envelope(self, env: Envelope) -> EmitHandle:
        """Send a prepared envelope (built by ``build_envelope``) without waiting."""
        return self.sync.emit_envelope(env)

    def emit_many(self, items: Iterable[tuple[Event, str] | tuple[Event, str, EmitOptions]]) -> list[EmitHandle]:
        """Send many events without waiting (see ``AgentClient.emit_many``); await each handle's result."""
        return self.sync.emit_many(items)

    async def result(self, handle: EmitHandle, timeout: float = 10.0) -> EmitResult:
        """Await the decision on an emitted event; EmitTimeout if none arrives in time."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(handle.future), timeout)
        except TimeoutError as e:
            raise EmitTimeout(f"no outcome for event {handle.event_id} within {timeout}s; is a projector "
                              f"running? Re-emit with idempotency_key={handle.idempotency_key!r}") from e

    async def emit_and_wait(self, event: Event, stream: str, *, expected_version: int | None = None,
                            idempotency_key: str | None = None, correlation_id: uuid.UUID | None = None,
                            causation_id: uuid.UUID | None = None,
                            lease: LeaseRef | HasLeaseRef | None = None, timeout: float = 10.0) -> EmitResult:
        """Emit and await the decision: COMMITTED, DUPLICATE, CONFLICT or REJECTED."""
        handle = self.emit(event, stream, expected_version=expected_version, idempotency_key=idempotency_key,
                           correlation_id=correlation_id, causation_id=causation_id, lease=lease)
        self.sync._send_now()  # as the sync twin: the caller waits for this event alone
        return await self.result(handle, timeout)

    # -- generated: the sync method in a worker thread ---------------------------------------------
    flush = offload(AgentClient.flush)
    follow = offload(AgentClient.follow)
    retry_on_conflict = offload(AgentClient.retry_on_conflict)
    wait_for_position = offload(AgentClient.wait_for_position)
    stream_version = offload(AgentClient.stream_version)
    read_stream = offload(AgentClient.read_stream)
    outcome = offload(AgentClient.outcome)
