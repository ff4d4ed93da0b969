"""Prometheus ``/metrics``: HTTP metrics of this API, the in-process projector metrics, and
cluster-wide numbers computed from the database at scrape time (outcomes, dead letters, lag per
intake partition, publisher lag, lease events from the event log, holders and waiters now)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from eventstore.api.lag import intake_lag, publisher_lag
from eventstore.api.state import ApiState
from eventstore.core.errors import EventStoreError
from eventstore.core.lockevents import LOCK_EVENTS
from eventstore.projection import metrics as projector_metrics

# Identity refusals (migration 0012) are rejections too, kept apart from the event ids they claim.
OUTCOMES = ("SELECT status, code, count(*) FROM (SELECT status, coalesce(reason_code, '') AS code FROM outcomes "
            "UNION ALL SELECT 'rejected', reason_code FROM identity_refusals) AS o GROUP BY 1, 2")
COMMITTED = "SELECT position FROM log_head"
DEAD_LETTERS = "SELECT count(*) FROM dead_letters"
LOCK_TYPES = tuple(t.event_type for t in LOCK_EVENTS)  # the coordinator's whole lock history
LEASE_EVENTS = "SELECT type, count(*) FROM lock_history WHERE type = ANY(%s) GROUP BY type"
NOW = "SELECT (SELECT count(*) FROM lease_holders), (SELECT count(*) FROM lease_waiters)"


class DatabaseCollector(Collector):
    """Computes cluster-wide metrics from PostgreSQL (and the broker's watermarks) on each scrape."""

    def __init__(self, api: ApiState) -> None:
        self.api = api

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("eventstore_database_up", "1 if the API could read the database at this scrape")
        try:
            families = list(self._families())
        except EventStoreError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        with self.api.conn() as conn:
            outcomes = CounterMetricFamily("eventstore_outcomes", "Decisions that committed no event, "
                                           "by status and reason code (all projectors)", labels=["status", "code"])
            for status, code, n in conn.execute(OUTCOMES).fetchall():
                outcomes.add_metric([str(status), str(code)], int(n))
            yield outcomes
            head = int(conn.execute(COMMITTED).fetchone()[0])  # type: ignore[index]
            yield GaugeMetricFamily("eventstore_log_head_position", "Position of the newest committed event",
                                    value=head)
            yield CounterMetricFamily("eventstore_dead_letters", "Intake messages dead-lettered (all projectors)",
                                      value=int(conn.execute(DEAD_LETTERS).fetchone()[0]))  # type: ignore[index]
            lag = GaugeMetricFamily("eventstore_projector_lag_messages",
                                    "Intake messages not yet projected, per partition", labels=["partition"])
            for p, n in (intake_lag(conn, self.api.settings) or {}).items():
                lag.add_metric([str(p)], n)
            yield lag
            pub = GaugeMetricFamily("eventstore_publisher_lag_events", "Committed events not yet published",
                                    labels=["publisher"])
            pub_s = GaugeMetricFamily("eventstore_publisher_lag_seconds",
                                      "Age of the oldest committed event not yet published", labels=["publisher"])
            for row in publisher_lag(conn):
                pub.add_metric([row["name"]], row["events_behind"])
                pub_s.add_metric([row["name"]], row["seconds_behind"])
            yield pub
            yield pub_s
            lease = CounterMetricFamily("eventstore_lease_events", "Lock events in the lock history by type "
                                        "(grants, waits, expiries, deadlocks, alerts; cluster-wide)", labels=["type"])
            counts = {str(t): int(n) for t, n in conn.execute(LEASE_EVENTS, (list(LOCK_TYPES),)).fetchall()}
            for t in LOCK_TYPES:
                lease.add_metric([t], counts.get(t, 0))
            yield lease
            alerts = CounterMetricFamily("eventstore_lease_alerts", "Events the coordinator alerts on "
                                         "(DeadlockFound, WaitExceeded, AgentKilled)")
            alerts.add_metric([], sum(counts.get(t, 0) for t in ("DeadlockFound", "WaitExceeded", "AgentKilled")))
            yield alerts
            holders, waiters = conn.execute(NOW).fetchone()  # type: ignore[misc]
            yield GaugeMetricFamily("eventstore_lease_holders", "Leases held now", value=int(holders))
            yield GaugeMetricFamily("eventstore_lease_waiters", "Agents waiting for a lease now", value=int(waiters))


class HttpMetrics:
    """Requests by method, route template and status, and their duration."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("eventstore_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=registry)
        self.seconds = Histogram("eventstore_http_request_seconds", "HTTP request duration", ["route"],
                                 registry=registry)

    async def middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = str(getattr(route, "path", "unmatched"))
        self.requests.labels(request.method, path, str(response.status_code)).inc()
        self.seconds.labels(path).observe(time.perf_counter() - started)
        return response


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry) + generate_latest(projector_metrics.REGISTRY)


def build_registry(api: ApiState) -> tuple[CollectorRegistry, HttpMetrics]:
    registry = CollectorRegistry(auto_describe=False)
    http = HttpMetrics(registry)
    registry.register(DatabaseCollector(api))
    return registry, http


