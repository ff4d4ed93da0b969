"""The HTTP API for auditors and operators: history, write map, check, agents, leases, lag,
health, Prometheus metrics and a live page (``eventstore serve``)."""
