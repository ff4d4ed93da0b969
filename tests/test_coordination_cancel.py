"""A cancelled asyncio waiter leaves the queue even when the cancellation lands while a poll is running
in its worker thread (that poll cannot be stopped; left alone it queued the agent again after it had
left, and the stale row held up those behind it until it went stale)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import pytest

from eventstore.coordination import AsyncCoordinator, Coordinator
from eventstore.postgres.eventlog import Cursor
from eventstore.postgres.leaseadmin import wait_graph

T = TypeVar("T")


class SlowOnce(Coordinator):
    """A coordinator whose next transaction, once armed, starts late: a poll that is surely in flight."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed = threading.Event()
        self.delayed = threading.Event()

    def run_step(self, fn: Callable[[Cursor], T], attempts: int = 5) -> T:
        if self.armed.is_set():
            self.armed.clear()
            self.delayed.set()
            time.sleep(0.5)
        return super().run_step(fn, attempts)


def waiters(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM lease_waiters").fetchone()
    return 0 if row is None else int(row[0])


def test_cancel_during_a_poll_leaves_no_place_in_the_queue(database_url: str) -> None:
    async def main() -> None:
        with Coordinator(database_url) as other, other.lease("busy", agent_id="holder"):
            async with AsyncCoordinator(SlowOnce(database_url)) as ac:
                slow = ac.sync
                assert isinstance(slow, SlowOnce)
                task = asyncio.create_task(ac.acquire("busy", agent_id="impatient", wait=30))
                for _ in range(500):
                    _, queued = other.run_step(lambda cur: wait_graph(cur, 5.0))
                    if any(w.agent_id == "impatient" for w in queued):
                        break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail("the waiter never queued")
                slow.armed.set()
                assert await asyncio.to_thread(slow.delayed.wait, 10)  # a poll is now in flight
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await asyncio.sleep(0.8)  # a poll still in flight would have written by now
                assert waiters(database_url) == 0
                assert [h["agent_id"] for h in other.holders(["busy"])] == ["holder"]
        # Released by the holder: had the late poll queued "impatient" again, it would be granted now.
        await asyncio.sleep(0.3)
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM lease_holders").fetchone() == (0,)
        assert waiters(database_url) == 0

    asyncio.run(main())
