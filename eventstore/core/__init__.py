"""The pure core: records, events, decisions, outcomes, errors, settings, hashing, backoff.

Nothing here does I/O: no module of this package imports psycopg, confluent_kafka or any adapter
package of eventstore (a test enforces it), so everything here is tested without servers.
"""
