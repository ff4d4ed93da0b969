"""asyncio face of the SDK: the same client, awaited.

Producing never blocks and outcomes arrive on the client's listener thread, so awaiting a
concurrent future is all that is needed; reads run in a worker thread.
"""

from __future__ import annotations

import asyncio
import uuid

from eventstore.core.errors import EmitTimeout
from eventstore.core.events import Event
from eventstore.core.outcomes import EmitResult
from eventstore.core.records import LeaseRef, RecordedEvent
from eventstore.core.settings import Settings
from eventstore.sdk.client import AgentClient, EmitHandle, HasLeaseRef


class AsyncAgentClient:
    """``async with AsyncAgentClient("agent") as c: await c.emit_and_wait(...)``."""

    def __init__(self, agent_id: str, settings: Settings | None = None, *, credential: str | None = None) -> None:
        self._agent_id = agent_id
        self._settings = settings
        self._credential = credential
        self._client: AgentClient | None = None

    async def __aenter__(self) -> AsyncAgentClient:
        self._client = await asyncio.to_thread(AgentClient, self._agent_id, self._settings,
                                               credential=self._credential)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    @property
    def sync(self) -> AgentClient:
        if self._client is None:
            raise RuntimeError("use 'async with AsyncAgentClient(...)' before calling it")
        return self._client

    def emit(self, event: Event, stream: str, *, expected_version: int | None = None,
             idempotency_key: str | None = None, correlation_id: uuid.UUID | None = None,
             causation_id: uuid.UUID | None = None, lease: LeaseRef | HasLeaseRef | None = None) -> EmitHandle:
        return self.sync.emit(event, stream, expected_version=expected_version, idempotency_key=idempotency_key,
                              correlation_id=correlation_id, causation_id=causation_id, lease=lease)

    async def result(self, handle: EmitHandle, timeout: float = 10.0) -> EmitResult:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(handle.future), timeout)
        except TimeoutError as e:
            raise EmitTimeout(f"no outcome for event {handle.event_id} within {timeout}s; re-emit with "
                              f"idempotency_key={handle.idempotency_key!r}") from e

    async def emit_and_wait(self, event: Event, stream: str, *, expected_version: int | None = None,
                            idempotency_key: str | None = None, correlation_id: uuid.UUID | None = None,
                            causation_id: uuid.UUID | None = None,
                            lease: LeaseRef | HasLeaseRef | None = None, timeout: float = 10.0) -> EmitResult:
        handle = self.emit(event, stream, expected_version=expected_version, idempotency_key=idempotency_key,
                           correlation_id=correlation_id, causation_id=causation_id, lease=lease)
        return await self.result(handle, timeout)

    async def stream_version(self, stream: str) -> int:
        return await asyncio.to_thread(self.sync.stream_version, stream)

    async def read_stream(self, stream: str, from_version: int = 0) -> list[RecordedEvent]:
        return await asyncio.to_thread(self.sync.read_stream, stream, from_version)
