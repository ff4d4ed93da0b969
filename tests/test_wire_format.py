"""docs/wire-format.md, followed by a client that is not the SDK: aiokafka (pure Python, a
non-idempotent producer, as the page advises for the embedded broker) builds an envelope exactly as the
page says, psycopg LISTENs on the documented outcome channel and decodes the positional payload.

Checked: the key is the stream and aiokafka's default murmur2 partitioner puts it where the SDK's
producer does; the event commits and appears on the committed topic with its position; a retry with
the same idempotency key is a DUPLICATE that appears on no topic; a stale expected_version is a
CONFLICT with reason code ``version_conflict`` and an ``EventConflicted`` record on the rejections topic.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2
from confluent_kafka import Producer

from eventstore.core.settings import Settings
from eventstore.kafka.config import producer_config
from eventstore.projection.projector import Projector
from tests.fix_agents import credential_for

AGENT = "pos-terminal-7"
# The positional fields of an outcome notification, in order (docs/wire-format.md).
OUTCOME_FIELDS = ("event_id", "status", "stream", "version", "position", "current_version", "reason", "reason_code")


def envelope(stream: str, key: str, expected_version: int | None, quantity: int) -> dict[str, Any]:
    """The intake value as the page writes it; optional fields (causation_id, lease) left out."""
    event_id = str(uuid.uuid4())
    return {
        "event_id": event_id,
        "idempotency_key": key,
        "stream": stream,
        "expected_version": expected_version,
        "agent_id": AGENT,
        "correlation_id": event_id,
        "occurred_at": "2026-01-15T09:30:00+00:00",
        "type": "InventoryUpdated",
        "schema_version": 1,
        "payload": {"sku": stream.removeprefix("inventory-"), "quantity": quantity},
    }


def sign_as_documented(value: bytes, credential_text: str) -> bytes:
    """docs/security.md, "Authentication on the wire", by hand: HMAC-SHA256 with the key of the
    credential text ``es1.<key id>.<base64url key>`` over the exact value bytes, appended as the last
    member ``"auth":{"key_id": ..., "mac": <43 chars base64url>}``."""
    scheme, key_id, key_b64 = credential_text.split(".")
    assert scheme == "es1"
    key = base64.urlsafe_b64decode(key_b64 + "=" * (-len(key_b64) % 4))
    mac = base64.urlsafe_b64encode(hmac.new(key, value, hashlib.sha256).digest()).decode()[:43]
    return value[:-1] + f',"auth":{{"key_id":"{key_id}","mac":"{mac}"}}}}'.encode()


def open_as_documented(payload: str, credential_text: str, agent: str) -> list[Any]:
    """docs/wire-format.md, "Sealed outcomes", by hand: the last element ``"om1.<key id>.<mac>"`` is
    HMAC-SHA256 with the agent's key over ``eventstore.outcomes/1\\n`` + the agent id + ``\\n`` + the
    payload's bytes without the seal element; the rows are the elements before it."""
    i = payload.rindex(',"om1.')
    _, key_id, tag = payload[i + 2:-2].split(".")
    _, cred_key_id, key_b64 = credential_text.split(".")
    key = base64.urlsafe_b64decode(key_b64 + "=" * (-len(key_b64) % 4))
    unsealed = payload[:i] + "]"
    signed = b"eventstore.outcomes/1\n" + agent.encode() + b"\n" + unsealed.encode()
    mac = base64.urlsafe_b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()[:43]
    assert key_id == cred_key_id and hmac.compare_digest(mac, tag), "the seal does not verify as documented"
    rows: list[Any] = json.loads(unsealed)
    return rows


def sdk_partition(settings: Settings, topic: str, key: bytes) -> int:
    """Where the SDK's own producer configuration puts a key (delivered for real)."""
    found: list[int | None] = []
    p = Producer(producer_config(settings, **{"enable.idempotence": False}))
    p.produce(topic, key=key, value=b"probe", on_delivery=lambda err, msg: found.append(msg.partition()))
    assert p.flush(30) == 0 and found and found[0] is not None
    return found[0]


async def consume_all(bootstrap: str, topic: str, partitions: int, min_count: int,
                      timeout: float = 30.0) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < min_count and asyncio.get_running_loop().time() < deadline:
            got = await consumer.getmany(timeout_ms=200)
            for batch in got.values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def test_an_event_built_from_the_page_commits_and_its_outcome_arrives(settings: Settings,
                                                                       projector: Projector) -> None:
    db, bootstrap = settings.require_servers()
    stream = f"inventory-WF{uuid.uuid4().hex[:6]}"
    channel = "es_out_" + hashlib.sha1(AGENT.encode()).hexdigest()[:24]
    first = envelope(stream, "wf-order-1", 0, 5)
    retry = {**envelope(stream, "wf-order-1", 0, 5), "occurred_at": "2026-01-15T10:30:00+01:00"}
    stale = envelope(stream, "wf-order-2", 0, 7)

    credential = str(credential_for(db, AGENT))  # what `eventstore agents add pos-terminal-7` prints
    listener = psycopg.connect(db, autocommit=True)
    listener.execute(f"LISTEN {channel}")  # the channel is an identifier: es_out_ + 24 hex digits
    outcomes: dict[str, dict[str, Any]] = {}

    async def produce() -> list[int]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
        await producer.start()
        try:
            partitions = []
            for env in (first, retry, stale):
                meta = await producer.send_and_wait(settings.intake_topic, key=stream.encode(),
                                                    value=sign_as_documented(json.dumps(env).encode(), credential))
                partitions.append(meta.partition)
                # One at a time, so the order of decisions is the order of this list.
                await asyncio.to_thread(wait_for_outcome, env["event_id"])
            return partitions
        finally:
            await producer.stop()

    def wait_for_outcome(event_id: str) -> None:
        for note in listener.notifies(timeout=60):
            # Decisions on envelopes this agent signed come sealed (the seal is the last element).
            for row in open_as_documented(note.payload, credential, AGENT):
                outcomes[row[0]] = dict(zip(OUTCOME_FIELDS, row, strict=True))
            if event_id in outcomes:
                return
        raise AssertionError(f"no outcome for {event_id} on {channel} within 60 s")

    try:
        partitions = asyncio.run(produce())
    finally:
        listener.close()
    expected_partition = (murmur2(stream.encode()) & 0x7FFFFFFF) % settings.intake_partitions
    assert partitions == [expected_partition] * 3

    committed = outcomes[first["event_id"]]
    assert committed["status"] == "committed" and committed["stream"] == stream and committed["version"] == 1
    assert committed["reason_code"] is None and isinstance(committed["position"], int)
    duplicate = outcomes[retry["event_id"]]
    assert (duplicate["status"], duplicate["reason_code"]) == ("duplicate", "duplicate")
    assert (duplicate["position"], duplicate["version"]) == (committed["position"], 1)  # points at the original
    conflict = outcomes[stale["event_id"]]
    assert (conflict["status"], conflict["reason_code"], conflict["current_version"]) == (
        "conflict", "version_conflict", 1)

    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT event_id::text, version, payload FROM events WHERE stream = %s",
                            (stream,)).fetchall()
    assert rows == [(first["event_id"], 1, {"sku": stream.removeprefix("inventory-"), "quantity": 5})]

    committed_records = asyncio.run(consume_all(bootstrap, settings.committed_topic, 1, 1))
    mine = [json.loads(r.value) for r in committed_records if r.key == stream.encode()]
    assert [(m["event_id"], m["position"], m["version"]) for m in mine] == [
        (first["event_id"], committed["position"], 1)]  # the duplicate and the conflict are not there
    rejections = asyncio.run(consume_all(bootstrap, settings.rejections_topic, 1, 1))
    bodies = [json.loads(r.value) for r in rejections if r.key == AGENT.encode()]
    assert [(b["type"], b["payload"]["event_id"]) for b in bodies] == [("EventConflicted", stale["event_id"])]
    assert all(b["payload"]["event_id"] != retry["event_id"] for b in bodies)  # duplicates on no topic


def test_aiokafka_places_keys_like_the_sdk(settings: Settings, projector: Projector) -> None:
    """murmur2 on the key, as the page says: aiokafka's default partitioner and the SDK's agree."""
    for i in range(8):
        key = f"inventory-P{i}".encode()
        assert sdk_partition(settings, settings.intake_topic, key) == (
            (murmur2(key) & 0x7FFFFFFF) % settings.intake_partitions)
