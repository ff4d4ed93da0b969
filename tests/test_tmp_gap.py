from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from eventstore.core.settings import Settings
from eventstore.simulate.faults import TERMINATE_OTHERS
from tests.test_faults import Run, finish_and_check, harness, wait_for_progress  # noqa: F401


def test_hammer(settings: Settings, harness: Callable[[Settings], Run]) -> None:  # noqa: F811
    run = harness(settings)
    wait_for_progress(run, 30, 60, "agents to commit before the fault")
    for _ in range(3):
        end = time.monotonic() + 9
        while time.monotonic() < end:
            with psycopg.connect(settings.require_database(), autocommit=True) as conn:
                conn.execute(TERMINATE_OTHERS)
            time.sleep(0.3)
        assert run.projector.error is None, run.projector.error
        wait_for_progress(run, 10, 60, "agents to commit again after the connections were killed")
    finish_and_check(run)
