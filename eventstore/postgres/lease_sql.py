"""The SQL of the coordinator's lease adapter, in one place so the statements can be read together.

Parameters are always bound (``%s`` / ``%(name)s``); no input is ever interpolated into SQL.
"""

from __future__ import annotations

ADVISORY_NS = 0x4C45  # "LE": keeps our keys apart from applications' own advisory locks

LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"
AGENT_STATUS = "SELECT status, reason FROM agents WHERE agent_id = %s FOR SHARE"
# Taken first in every attempt, so the agents row is locked before resources, streams and log_head,
# the same order as the projector's (no lock cycle with a projector and a kill in between).
LOCK_AGENT_EARLY = "SELECT 1 FROM agents WHERE agent_id = %s FOR SHARE"
ENSURE_AGENT = "INSERT INTO agents (agent_id) VALUES (%s) ON CONFLICT (agent_id) DO NOTHING"
BUMP_FENCE = """
INSERT INTO resources (resource, fence_token) VALUES (%s, nextval('fencing_tokens'))
ON CONFLICT (resource) DO UPDATE SET fence_token = GREATEST(resources.fence_token, EXCLUDED.fence_token)
RETURNING fence_token
"""
HOLDERS = "SELECT agent_id, mode, token FROM lease_holders WHERE resource = %s"
# What a LeaseWaited needs of a queue row whose wait ends now (migration 0013: a wait is chained when it ends):
# agent, mode, queue place, enqueued at, held by, expected seconds, seconds waited.
WAIT_ROW = ("agent_id, mode, seq, enqueued_at, coalesce(held_by, '{}'::text[]), expected_seconds, "
            "extract(epoch FROM clock_timestamp() - enqueued_at)::float8")
SNAPSHOT = """
WITH t AS MATERIALIZED (SELECT clock_timestamp() AS now,
                               clock_timestamp() - make_interval(secs => %(stale)s) AS stale),
exp AS (
    DELETE FROM lease_holders h USING t WHERE h.resource = %(r)s AND h.expires_at <= t.now
    RETURNING h.agent_id, h.token, extract(epoch FROM t.now - h.granted_at)::float8 AS held
),
purged AS (
    DELETE FROM lease_waiters w USING t WHERE w.resource = %(r)s AND w.heartbeat_at < t.stale
    RETURNING w.agent_id, w.mode, w.seq, w.enqueued_at, coalesce(w.held_by, '{}'::text[]) AS held_by,
              w.expected_seconds, extract(epoch FROM t.now - w.enqueued_at)::float8 AS waited
),
ag AS (SELECT status, reason FROM agents WHERE agent_id = %(a)s)
SELECT 'expired', agent_id, NULL, token, NULL::bigint, NULL::timestamptz, held, NULL::float8, NULL::float8, NULL::text[]
FROM exp
UNION ALL
SELECT 'holder', h.agent_id, h.mode, h.token, h.hold_count, NULL, NULL, h.handoff::int::float8, NULL, NULL
FROM lease_holders h, t
 WHERE h.resource = %(r)s AND h.expires_at > t.now
UNION ALL
SELECT 'waiter', w.agent_id, w.mode, NULL, w.seq, w.enqueued_at, NULL, NULL, NULL, NULL FROM lease_waiters w, t
 WHERE w.resource = %(r)s AND w.heartbeat_at >= t.stale
UNION ALL
SELECT 'mywait', NULL, NULL, w.alerted::int, NULL, NULL, extract(epoch FROM t.now - w.enqueued_at)::float8,
       w.expected_seconds, extract(epoch FROM t.now - w.heartbeat_at)::float8, NULL
FROM lease_waiters w, t WHERE w.resource = %(r)s AND w.agent_id = %(a)s AND w.heartbeat_at >= t.stale
UNION ALL
SELECT 'fence', NULL, NULL, fence_token, NULL, NULL, NULL, NULL, NULL, NULL FROM resources WHERE resource = %(r)s
UNION ALL
SELECT 'elsewhere', h.resource, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM lease_holders h, t
 WHERE h.agent_id = %(a)s AND h.resource <> %(r)s AND h.expires_at > t.now
UNION ALL
SELECT 'agent', status, reason, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM ag
UNION ALL
SELECT 'purged', agent_id, mode, NULL, seq, enqueued_at, waited, expected_seconds, NULL, held_by FROM purged
"""
# The agent row is locked FOR SHARE only when granting (a kill then waits for this transaction and
# revokes the grant), so that a poll that grants nothing writes nothing and commits without a flush.
_GRANT = """
ag AS (SELECT 1 FROM agents WHERE agent_id = %(a)s AND status = 'active' FOR SHARE),
dq AS (DELETE FROM lease_waiters WHERE resource = %(r)s AND agent_id = %(a)s AND EXISTS (SELECT 1 FROM ag)
       RETURNING """ + WAIT_ROW + """),
ins AS (
    INSERT INTO lease_holders (resource, agent_id, mode, token, ttl_seconds, granted_at, expires_at)
    SELECT %(r)s, %(a)s, %(m)s, f.fence_token, %(ttl)s, clock_timestamp(),
           clock_timestamp() + make_interval(secs => %(ttl)s)
    FROM f, ag RETURNING token, expires_at
)
SELECT ins.token, ins.expires_at, dq.*
FROM ins LEFT JOIN dq ON true
"""
GRANT_NEW = """
WITH f AS (
    INSERT INTO resources (resource, fence_token) VALUES (%(r)s, nextval('fencing_tokens'))
    ON CONFLICT (resource) DO UPDATE SET fence_token = GREATEST(resources.fence_token, EXCLUDED.fence_token)
    RETURNING fence_token
),""" + _GRANT
GRANT_SHARED = "WITH f AS (SELECT %(tok)s::bigint AS fence_token)," + _GRANT
REENTER = """
UPDATE lease_holders SET hold_count = hold_count + 1,
       expires_at = GREATEST(expires_at, clock_timestamp() + make_interval(secs => %s))
WHERE resource = %s AND agent_id = %s
  AND NOT EXISTS (SELECT 1 FROM agents g WHERE g.agent_id = lease_holders.agent_id AND g.status = 'killed')
RETURNING token, mode, expires_at
"""
DEQUEUE = "DELETE FROM lease_waiters WHERE resource = %s AND agent_id = %s RETURNING " + WAIT_ROW
# The kill switch removes every wait of the agent (each chained as a LeaseWaited that ended "revoked").
DEQUEUE_AGENT = "DELETE FROM lease_waiters WHERE agent_id = %s RETURNING resource, " + WAIT_ROW
ENQUEUE = """
INSERT INTO lease_waiters (resource, agent_id, mode, enqueued_at, heartbeat_at, expected_seconds, ttl_seconds,
                           held_by)
VALUES (%s, %s, %s, clock_timestamp(), clock_timestamp(), %s, %s, %s)
ON CONFLICT (resource, agent_id) DO UPDATE SET heartbeat_at = clock_timestamp()
RETURNING seq
"""
HEARTBEAT = "UPDATE lease_waiters SET heartbeat_at = clock_timestamp() WHERE resource = %s AND agent_id = %s"
MARK_ALERTED = "UPDATE lease_waiters SET alerted = true WHERE resource = %s AND agent_id = %s"
RELEASE_ROW = """
SELECT token, hold_count, expires_at > clock_timestamp(),
       extract(epoch FROM clock_timestamp() - granted_at)::float8
FROM lease_holders WHERE resource = %s AND agent_id = %s FOR UPDATE
"""
# Wake the waiters of a resource, if it has any (delivered at commit; eventstore/coordination/wakeup.py).
# When the head of the queue waits for an exclusive lease nobody behind it can be granted, so only the
# head is woken: its agent id follows the resource in the payload after chr(31), a control character no
# resource or agent id may contain. A shared head may have grantable shared waiters behind it: then the
# payload is the resource alone and every waiter polls.
_WAKE_HEAD = """
(SELECT pg_notify('eventstore_leases',
                  CASE WHEN w.mode = 'exclusive' THEN w.resource || chr(31) || w.agent_id ELSE w.resource END)
 FROM (SELECT resource, mode, agent_id FROM lease_waiters WHERE resource = %(r)s ORDER BY seq LIMIT 1) w)
"""
# A live, non-re-entered hold released in one call (migration 0010): under the resource's advisory lock it
# deletes the holder row, hands the lease to the head of the queue when that waiter waits for an exclusive
# lease (its grant chained in the same commit, the notification carrying it, signed since 0011), else wakes
# the head; a row (seconds held) or none when the full step (``release_rest``) must decide.
RELEASE_FAST = ("SELECT * FROM eventstore_lease_release_signed(%(r)s::text, %(a)s::text, %(t)s::bigint, %(ns)s::int, "
                "%(k)s::int, %(stale)s::float8)")
# A first request in one statement (migration 0011): the one-call grant, else the one-call queueing; a row
# (token, expires_at, waited, held_by, queue seq) or none when the full step must decide.
REQUEST = ("SELECT * FROM eventstore_lease_request(%s::text, %s::text, %s::text, %s::float8, %s::int, %s::int, "
           "%s, %s::float8, %s::float8)")
# The key of signed hand-off notices (migration 0011), readable by the coordinator role only.
NOTICE_KEY = "SELECT key FROM lease_notice_key"
# The common grant in one call (migration 0009): a row (token, expires_at, waited) or none.
GRANT_FREE = "SELECT * FROM eventstore_lease_grant_free(%s::text, %s::text, %s::text, %s::float8, %s::int, %s::int, %s)"
NOTIFY = "SELECT " + _WAKE_HEAD
# A waiter takes the lease a release handed to it (found by a poll, the notification missed): the flag is
# cleared so that the same hand-off is taken once.
TAKE_HANDOFF = """
UPDATE lease_holders SET handoff = false
WHERE resource = %s AND agent_id = %s AND handoff AND expires_at > clock_timestamp()
RETURNING token, mode, expires_at, extract(epoch FROM clock_timestamp() - granted_at)::float8
"""
# A waiter told of a hand-off by a notification that is not signed with the notice key (migration 0011),
# or whose MAC or queue place does not match, checks it here (any role may NOTIFY): a read, so its commit
# needs no flush.
CHECK_HANDOFF = """
SELECT expires_at FROM lease_holders
WHERE resource = %s AND agent_id = %s AND token = %s AND handoff AND expires_at > clock_timestamp()
"""
# A waiter that gives up finds the lease handed to it meanwhile (the caller then releases it).
HANDED_OFF = "SELECT token FROM lease_holders WHERE resource = %s AND agent_id = %s AND handoff AND hold_count = 1"
DROP_HOLDER = "DELETE FROM lease_holders WHERE resource = %s AND agent_id = %s"
DECREMENT = "UPDATE lease_holders SET hold_count = hold_count - 1 WHERE resource = %s AND agent_id = %s"
RENEW = """
UPDATE lease_holders SET expires_at = clock_timestamp() + make_interval(secs => %s), ttl_seconds = %s
WHERE resource = %s AND agent_id = %s AND token = %s AND expires_at > clock_timestamp()
  AND NOT EXISTS (SELECT 1 FROM agents g WHERE g.agent_id = lease_holders.agent_id AND g.status = 'killed')
RETURNING expires_at
"""
# Holders and waiters in ONE statement, so the wait-for graph comes from one snapshot: two statements
# could pair an old holder with a new waiter and report a cycle that never existed.
WAIT_GRAPH = """
SELECT 'h', resource, agent_id, mode, NULL::bigint, NULL::timestamptz FROM lease_holders
WHERE expires_at > clock_timestamp()
UNION ALL
SELECT 'w', resource, agent_id, mode, seq, enqueued_at FROM lease_waiters
WHERE heartbeat_at >= clock_timestamp() - make_interval(secs => %s)
"""
AGENT_RESOURCES = """
SELECT resource FROM lease_holders WHERE agent_id = %s
UNION SELECT resource FROM lease_waiters WHERE agent_id = %s
"""
KILL = """
INSERT INTO agents (agent_id, status, reason, changed_at) VALUES (%s, 'killed', %s, now())
ON CONFLICT (agent_id) DO UPDATE SET status = 'killed', reason = EXCLUDED.reason, changed_at = now()
"""
REVIVE = (
    "UPDATE agents SET status = 'active', reason = NULL, changed_at = now() WHERE agent_id = %s RETURNING 1"
)
FENCE_REJECTIONS = """
SELECT agent_id, count(*) FROM outcomes
WHERE status = 'rejected' AND reason_code IN ('lease_stale', 'lease_unknown')
GROUP BY agent_id
"""
