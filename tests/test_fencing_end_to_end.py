"""Promise 7 through the whole path: leases from the coordinator, events through Kafka and the
projector; a holder whose lease was taken over cannot write, a killed agent cannot write."""

from __future__ import annotations

import time

from eventstore import AgentClient, Coordinator, Outcome, Projector
from eventstore.core.outcomes import ReasonCode
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from tests.fix_projector import scalar


def test_stale_lease_is_fenced_and_killed_agent_is_rejected(settings: Settings, projector: Projector) -> None:
    stream = stream_for("F1")
    with Coordinator(settings) as coord, AgentClient("slow-agent", settings) as slow, \
            AgentClient("next-agent", settings) as nxt:
        old = coord.acquire("inventory:F1", agent_id="slow-agent", ttl=1.0)
        first = slow.emit_and_wait(InventoryAdjusted(sku="F1", delta=1), stream, lease=old)
        assert first.status is Outcome.COMMITTED
        time.sleep(1.5)  # the slow agent pauses past its TTL ...
        new = coord.acquire("inventory:F1", agent_id="next-agent", ttl=10.0, wait=5.0)
        assert new.token > old.token
        late = slow.emit_and_wait(InventoryAdjusted(sku="F1", delta=100), stream, lease=old)
        assert late.status is Outcome.REJECTED and late.reason_code is ReasonCode.LEASE_STALE
        assert nxt.emit_and_wait(InventoryAdjusted(sku="F1", delta=2), stream, lease=new).status is Outcome.COMMITTED
        # Kill switch: the holder's lease is revoked (its token is now stale) and its new events rejected.
        revoked = coord.kill("next-agent", "runaway loop")
        assert "inventory:F1" in revoked
        fenced = nxt.emit_and_wait(InventoryAdjusted(sku="F1", delta=3), stream, lease=new)
        assert fenced.status is Outcome.REJECTED and fenced.reason_code is ReasonCode.AGENT_KILLED
        plain = nxt.emit_and_wait(InventoryAdjusted(sku="F1", delta=3), stream)
        assert plain.status is Outcome.REJECTED and plain.reason_code is ReasonCode.AGENT_KILLED
        assert coord.revive("next-agent")
        # Revived, the agent can write again, but not under the lease the kill revoked: it is fenced.
        revoked_lease = nxt.emit_and_wait(InventoryAdjusted(sku="F1", delta=5), stream, lease=new)
        assert revoked_lease.status is Outcome.REJECTED and revoked_lease.reason_code is ReasonCode.LEASE_STALE
        assert nxt.emit_and_wait(InventoryAdjusted(sku="F1", delta=4), stream).status is Outcome.COMMITTED
    db = settings.require_database()
    assert scalar(db, "SELECT quantity FROM inventory WHERE sku = 'F1'") == 1 + 2 + 4
    history = scalar(db, "SELECT string_agg(type, ',' ORDER BY log_order, n) FROM lock_history WHERE stream LIKE %s",
                     ("agent-%",))
    assert "AgentKilled" in history and "AgentRevived" in history
    codes = scalar(db, "SELECT string_agg(reason_code, ',' ORDER BY decided_at) FROM outcomes")
    # late paused holder; both writes while killed (the kill check comes first); the revoked lease after revive
    assert codes == "lease_stale,agent_killed,agent_killed,lease_stale"
