"""asyncio face of the coordinator, with the same surface as :class:`Coordinator`.

Waiting is written by hand: each poll is one short transaction run in a worker thread and the sleeps
between polls are ``asyncio.sleep``, so a waiting task can be cancelled (it then leaves the queue,
recorded). Every other method is generated from its sync twin by
:class:`~eventstore.core.mirroring.offload`; tests/test_surfaces.py fails if a sync method has no twin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from eventstore.coordination.acquisition import Acquisition, Lease
from eventstore.coordination.coordinator import Coordinator
from eventstore.core.errors import CoordinationError, LeaseNotHeldError, LeaseTimeout
from eventstore.core.lockrules import Mode, sort_resources
from eventstore.core.mirroring import offload
from eventstore.core.settings import Settings

log = logging.getLogger("eventstore.coordination")


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
        polling: asyncio.Future[Lease | float | None] | None = None
        try:
            while True:
                polling = asyncio.ensure_future(asyncio.to_thread(acq.step))
                r = await asyncio.shield(polling)
                polling = None
                if isinstance(r, Lease):
                    if keep_alive:
                        r.keep_alive()
                    return r
                if r is None:
                    raise LeaseTimeout(f"{resource!r} is busy and wait=0 was given; use try_acquire()")
                await asyncio.sleep(r)
        except BaseException as e:  # cancellation included: leave the queue, recorded
            if polling is not None:
                # A cancelled poll runs on in its worker thread. Let it finish first: it could queue
                # again after we left the queue, or be granted the lease nobody would then release.
                try:
                    late = await asyncio.shield(polling)
                except Exception:
                    late = None
                if isinstance(late, Lease):
                    with contextlib.suppress(LeaseNotHeldError):
                        await asyncio.shield(asyncio.to_thread(self.sync.release, late))
            if acq.queued and not isinstance(e, CoordinationError):
                await asyncio.shield(asyncio.to_thread(acq.abandon, f"interrupted: {type(e).__name__}"))
            raise
        finally:
            acq.done()

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
    async def try_lease(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                        ttl: float = 30.0) -> AsyncIterator[Lease | None]:
        """Non-blocking ``lease``: yields None when the resource is busy."""
        held = await self.try_acquire(resource, agent_id=agent_id, mode=mode, ttl=ttl)
        try:
            yield held
        finally:
            if held is not None and not held.released:
                await asyncio.to_thread(self.sync.release, held)

    @asynccontextmanager
    async def lease_many(self, resources: Sequence[str], *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                         ttl: float = 30.0, wait: float = 10.0, expected_duration: float | None = None,
                         keep_alive: bool = False) -> AsyncIterator[list[Lease]]:
        """Take several leases in the global lock order (``wait`` bounds the whole set), yield them in
        that order, release them in reverse order (also on error or cancellation)."""
        taken: list[Lease] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            for r in sort_resources(resources, self.sync.rank):
                taken.append(await self.acquire(r, agent_id=agent_id, mode=mode, ttl=ttl,
                                                wait=max(deadline - loop.time(), 0.0),
                                                expected_duration=expected_duration, keep_alive=keep_alive))
            yield taken
        finally:
            for held in reversed(taken):
                if not held.released:
                    try:
                        await asyncio.to_thread(self.sync.release, held)
                    except LeaseNotHeldError as e:
                        log.warning("lease_many: %s", e)

    # -- generated: the sync method in a worker thread ---------------------------------------------
    try_acquire = offload(Coordinator.try_acquire)
    release = offload(Coordinator.release)
    renew = offload(Coordinator.renew)
    kill = offload(Coordinator.kill)
    revive = offload(Coordinator.revive)
    holders = offload(Coordinator.holders)
    deadlocks = offload(Coordinator.deadlocks)
    refresh_fence_rejections = offload(Coordinator.refresh_fence_rejections)
    run_step = offload(Coordinator.run_step)
    run_step_then_read = offload(Coordinator.run_step_then_read)
    run_call = offload(Coordinator.run_call)
    close = offload(Coordinator.close)

    def acquisition(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                    ttl: float = 30.0, wait: float = 10.0, expected_duration: float | None = None) -> Acquisition:
        """A validated request for callers that drive the polling themselves (no I/O, so not a coroutine)."""
        return self.sync.acquisition(resource, agent_id=agent_id, mode=mode, ttl=ttl, wait=wait,
                                     expected_duration=expected_duration)

    def metrics_text(self) -> bytes:
        """Prometheus text exposition of the coordinator's metrics (in memory, so not a coroutine)."""
        return self.sync.metrics_text()

    async def __aenter__(self) -> AsyncCoordinator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
