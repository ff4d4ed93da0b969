"""asyncio variants of the coordinator: the same requests, polled without blocking the event loop.

Each poll is one short transaction run in a worker thread; the sleeps between polls are
``asyncio.sleep``, so a waiting task can be cancelled (it then leaves the queue, recorded).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from eventstore.coordination.acquisition import Lease
from eventstore.coordination.coordinator import Coordinator
from eventstore.core.errors import CoordinationError, LeaseTimeout
from eventstore.core.lockrules import Mode
from eventstore.core.settings import Settings


class AsyncCoordinator:
    """``async with acoord.lease(...) as lease:``; wraps a :class:`Coordinator` (or builds one)."""

    def __init__(self, settings: Settings | str | Coordinator | None = None, **options: Any) -> None:
        self.sync = settings if isinstance(settings, Coordinator) else Coordinator(settings, **options)

    async def acquire(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                      ttl: float = 30.0, wait: float = 10.0, expected_duration: float | None = None,
                      keep_alive: bool = False) -> Lease:
        """Take a lease, waiting up to ``wait`` seconds without blocking the loop."""
        acq = self.sync.acquisition(resource, agent_id=agent_id, mode=mode, ttl=ttl, wait=wait,
                                    expected_duration=expected_duration)
        try:
            while True:
                r = await asyncio.to_thread(acq.step)
                if isinstance(r, Lease):
                    if keep_alive:
                        r.keep_alive()
                    return r
                if r is None:
                    raise LeaseTimeout(f"{resource!r} is busy and wait=0 was given; use try_acquire()")
                await asyncio.sleep(r)
        except BaseException as e:  # cancellation included: leave the queue, recorded
            if acq.queued and not isinstance(e, CoordinationError):
                await asyncio.shield(asyncio.to_thread(acq.abandon, f"interrupted: {type(e).__name__}"))
            raise
        finally:
            acq.done()

    async def try_acquire(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                          ttl: float = 30.0) -> Lease | None:
        """The lease if it is free now, else None."""
        return await asyncio.to_thread(self.sync.try_acquire, resource, agent_id=agent_id, mode=mode, ttl=ttl)

    @asynccontextmanager
    async def lease(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                    ttl: float = 30.0, wait: float = 10.0, expected_duration: float | None = None,
                    keep_alive: bool = False) -> AsyncIterator[Lease]:
        """Acquire, yield, release (also on error or cancellation)."""
        held = await self.acquire(resource, agent_id=agent_id, mode=mode, ttl=ttl, wait=wait,
                                  expected_duration=expected_duration, keep_alive=keep_alive)
        try:
            yield held
        finally:
            if not held.released:
                await asyncio.to_thread(self.sync.release, held)

    @asynccontextmanager
    async def lease_many(self, resources: Sequence[str], *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                         ttl: float = 30.0, wait: float = 10.0,
                         expected_duration: float | None = None) -> AsyncIterator[list[Lease]]:
        """Several leases in the global lock order, released in reverse."""
        from eventstore.core.lockrules import sort_resources

        taken: list[Lease] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            for r in sort_resources(resources, self.sync.rank):
                taken.append(await self.acquire(r, agent_id=agent_id, mode=mode, ttl=ttl,
                                                wait=max(deadline - loop.time(), 0.0),
                                                expected_duration=expected_duration))
            yield taken
        finally:
            for held in reversed(taken):
                if not held.released:
                    await asyncio.to_thread(self.sync.release, held)

    async def release(self, lease: Lease) -> None:
        await asyncio.to_thread(self.sync.release, lease)

    async def renew(self, lease: Lease, ttl: float | None = None) -> datetime:
        return await asyncio.to_thread(self.sync.renew, lease, ttl)

    async def kill(self, agent_id: str, reason: str) -> list[str]:
        return await asyncio.to_thread(self.sync.kill, agent_id, reason)

    async def revive(self, agent_id: str) -> bool:
        return await asyncio.to_thread(self.sync.revive, agent_id)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncCoordinator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
