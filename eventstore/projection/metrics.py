"""In-process Prometheus metrics of the projectors running in this process (batch size, commit
time, outcomes by status, dead letters). The HTTP API exposes them when it runs in the same process
(``eventstore dev``); cluster-wide numbers (outcomes, lag, leases) it computes from the database."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from eventstore.core.outcomes import Outcome
from eventstore.postgres.intakebatch import BatchResult

REGISTRY = CollectorRegistry(auto_describe=True)
BATCH_SIZE = Histogram("eventstore_projector_batch_messages", "Intake messages per projector batch",
                       buckets=(1, 5, 10, 50, 100, 500, 1000, 2000, 5000), registry=REGISTRY)
COMMIT_SECONDS = Histogram("eventstore_projector_commit_seconds",
                           "Time to decide and commit one batch (retries included)",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                           registry=REGISTRY)
OUTCOMES = Counter("eventstore_projector_outcomes", "Decisions of this process's projectors by status",
                   ["status"], registry=REGISTRY)
DEAD_LETTERS = Counter("eventstore_projector_dead_letters", "Messages this process's projectors dead-lettered",
                       registry=REGISTRY)


def observe(result: BatchResult, messages: int, seconds: float) -> None:
    """Record one committed batch."""
    BATCH_SIZE.observe(messages)
    COMMIT_SECONDS.observe(seconds)
    OUTCOMES.labels(Outcome.COMMITTED.value).inc(len(result.committed))
    for status in (Outcome.DUPLICATE, Outcome.CONFLICT, Outcome.REJECTED):
        OUTCOMES.labels(status.value).inc(result.count(status))
    DEAD_LETTERS.inc(len(result.dead_letters))
