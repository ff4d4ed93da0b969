"""The lease benchmark's multi-process shape (issue 11, aim 4): the agents really run in separate processes,
every request is timed, the CPU of the agent processes is counted, and the database's FIFO check sees every
grant of the run."""

from __future__ import annotations

from eventstore.bench.leaserun import lease_contended_processes, queue_order


def test_the_contended_run_in_processes_times_every_request(database_url: str) -> None:
    started: list[bool] = []
    lat, wall, cpu = lease_contended_processes(database_url, 4, 2, 3, 2, "t:p", warmed=lambda: started.append(True))
    assert started == [True]
    assert len(lat) == 12 and all(x > 0 for x in lat)
    assert wall >= max(lat) and cpu > 0
    skipped, checked = queue_order(database_url, "t:p")
    assert (skipped, checked) == (0, 12)
