"""Identity, permissions and guarded streams as pure rules (no servers): signing, verification, the
decision order, per-agent key scoping."""

from __future__ import annotations

import pytest

from eventstore.core.auth import (
    AgentKey,
    Credential,
    Guard,
    HolderRow,
    authenticate,
    check_lease,
    permitted,
    sign,
    split_signed,
)
from eventstore.core.decisions import Candidate, KnownState, decide_batch
from eventstore.core.errors import ConfigurationError
from eventstore.core.outcomes import Outcome, ReasonCode
from eventstore.core.records import Envelope, LeaseRef
from eventstore.examples.inventory import InventoryUpdated
from eventstore.sdk.client import build_envelope
from eventstore.wire.envelope import decode, encode

ALICE, MALLORY = Credential.new(), Credential.new()
KEYS = {ALICE.key_id: AgentKey(ALICE.key_id, "alice", ALICE.secret, "active"),
        MALLORY.key_id: AgentKey(MALLORY.key_id, "mallory", MALLORY.secret, "active")}


def signed_value(agent: str = "alice", cred: Credential | None = ALICE, stream: str = "inventory-A1",
                 key: str | None = None, lease: LeaseRef | None = None) -> tuple[Candidate[Envelope], bytes]:
    env = build_envelope(agent, InventoryUpdated(sku="A1", quantity=2), stream, expected_version=None,
                         idempotency_key=key, correlation_id=None, causation_id=None, lease=lease)
    value = encode(env, cred)[1]
    return Candidate(decode(value), b"intent-" + stream.encode(), split_signed(value)), value


def test_credential_round_trip_and_bad_input() -> None:
    c = Credential.new()
    assert Credential.parse(str(c)) == c
    assert c.secret.hex() not in repr(c)
    for bad in ("", "es1.x.y", "es2." + str(c)[4:], str(c)[:-5]):
        with pytest.raises(ConfigurationError):
            Credential.parse(bad)


def test_signed_envelope_decodes_and_verifies() -> None:
    cand, _ = signed_value()
    assert cand.envelope.auth is not None and cand.envelope.auth.key_id == ALICE.key_id
    assert authenticate("alice", cand.signed, KEYS) is None


def test_every_byte_of_the_envelope_is_covered() -> None:
    _, value = signed_value()
    body_end = value.rfind(b',"auth":')
    for i in range(0, body_end, 7):  # flip one byte anywhere before the auth member
        tampered = value[:i] + bytes([value[i] ^ 1]) + value[i + 1:]
        problem = authenticate("alice", split_signed(tampered), KEYS)
        assert problem is not None and problem[0] is ReasonCode.BAD_SIGNATURE


def test_auth_member_must_be_last_and_exact() -> None:
    _, value = signed_value()
    assert split_signed(value[:-1] + b',"stream":"inventory-X"}') is None
    assert split_signed(value.replace(b'"auth":', b'"auth" :')) is None
    assert split_signed(b'{"a":1}') is None and split_signed(None) is None


def test_sign_needs_an_object() -> None:
    with pytest.raises(ValueError):
        sign(b"[1]", ALICE)


@pytest.mark.parametrize(("agent", "cred", "keys", "code"), [
    ("alice", None, KEYS, ReasonCode.BAD_SIGNATURE),  # unsigned
    ("alice", MALLORY, KEYS, ReasonCode.BAD_SIGNATURE),  # impersonation with one's own credential
    ("mallory-2", MALLORY, KEYS, ReasonCode.BAD_SIGNATURE),  # a new name does not get a new identity
    ("alice", Credential.new(), KEYS, ReasonCode.UNKNOWN_AGENT),  # a credential nobody registered
    ("alice", ALICE, {ALICE.key_id: AgentKey(ALICE.key_id, "alice", ALICE.secret, "rotated")},
     ReasonCode.CREDENTIAL_REVOKED),
])
def test_refused_identities(agent: str, cred: Credential | None, keys: dict[str, AgentKey],
                            code: ReasonCode) -> None:
    cand, _ = signed_value(agent, cred)
    d = decide_batch([cand], KnownState({}, {}, authenticate=True, keys=keys))[0]
    assert (d.status, d.code) == (Outcome.REJECTED, code)


def test_permissions_limit_streams_and_types() -> None:
    key = AgentKey("0" * 16, "a", b"k" * 32, "active", streams=("orders-*",), types=("OrderPlaced",))
    assert permitted(key, "orders-1", "OrderPlaced") is None
    assert permitted(key, "inventory-1", "OrderPlaced") is not None
    problem = permitted(key, "orders-1", "InventoryUpdated")
    assert problem is not None and problem[0] is ReasonCode.NOT_PERMITTED


def test_unsigned_events_pass_only_with_auth_off() -> None:
    cand, _ = signed_value(cred=None)
    assert decide_batch([cand], KnownState({}, {}))[0].status is Outcome.COMMITTED


def test_idempotency_keys_are_scoped_per_agent() -> None:
    a, _ = signed_value("alice", ALICE, key="order-1")
    m, _ = signed_value("mallory", MALLORY, key="order-1", stream="inventory-A2")
    a2, _ = signed_value("alice", ALICE, key="order-1")
    ds = decide_batch([m, a, a2], KnownState({}, {}, authenticate=True, keys=KEYS))
    # Mallory's claim of "order-1" does not block alice; alice's retry is a duplicate of her own event.
    assert [d.status for d in ds] == [Outcome.COMMITTED, Outcome.COMMITTED, Outcome.DUPLICATE]
    assert ds[2].duplicate_of == 1


def test_event_id_of_another_agent_is_refused() -> None:
    m, _ = signed_value("mallory", MALLORY)
    known = KnownState({}, {}, authenticate=True, keys=KEYS, taken_ids={m.envelope.event_id: "alice"})
    d = decide_batch([m], known)[0]
    assert (d.status, d.code) == (Outcome.REJECTED, ReasonCode.EVENT_ID_TAKEN)
    own = KnownState({}, {}, authenticate=True, keys=KEYS, taken_ids={m.envelope.event_id: "mallory"})
    assert decide_batch([m], own)[0].status is Outcome.COMMITTED


GUARD = Guard("inventory-*", "lock:{stream}")


@pytest.mark.parametrize(("lease", "rows", "code"), [
    (None, [], ReasonCode.NO_LEASE),
    (None, [HolderRow("bob", "exclusive", 5, False)], ReasonCode.NOT_HOLDER),
    (("lock:inventory-A1", 5), [HolderRow("bob", "exclusive", 5, False)], ReasonCode.NOT_HOLDER),
    (("lock:inventory-A1", 4), [HolderRow("alice", "exclusive", 5, False)], ReasonCode.LEASE_STALE),
    (("lock:inventory-A1", 5), [HolderRow("alice", "exclusive", 5, True)], ReasonCode.LEASE_EXPIRED),
    (("lock:inventory-A1", 5), [HolderRow("alice", "shared", 5, False)], ReasonCode.NOT_HOLDER),
    (("lock:other", 5), [HolderRow("alice", "exclusive", 5, False)], ReasonCode.NO_LEASE),
    (("lock:inventory-A1", 5), [HolderRow("alice", "exclusive", 5, False)], None),
])
def test_guarded_stream_needs_the_current_exclusive_lease(
        lease: tuple[str, int] | None, rows: list[HolderRow], code: ReasonCode | None) -> None:
    problem = check_lease("alice", "inventory-A1", GUARD, lease[0] if lease else None, lease[1] if lease else None,
                          {"lock:inventory-A1": rows})
    assert (problem[0] if problem else None) is code


def test_guard_applies_in_the_batch_decision_after_dedup() -> None:
    cand, _ = signed_value(lease=None)
    known = KnownState({}, {}, authenticate=True, keys=KEYS, guards=[GUARD])
    d = decide_batch([cand], known)[0]
    assert (d.status, d.code) == (Outcome.REJECTED, ReasonCode.NO_LEASE)
    unguarded, _ = signed_value(stream="orders-1")
    assert decide_batch([unguarded], known)[0].status is Outcome.COMMITTED



def test_settings_auth_switch_and_secret_credential() -> None:
    from eventstore.core.settings import Settings

    s = Settings.from_env({"EVENTSTORE_AUTH": "off", "EVENTSTORE_AGENT_CREDENTIAL": str(ALICE)})
    assert s.auth is False and str(ALICE) not in repr(s)
    assert s.agent_credential is not None and Credential.parse(s.agent_credential.get_secret_value()) == ALICE
    assert Settings.from_env({}).auth is True  # on unless the operator turns it off


def test_cli_parses_agent_and_resource_commands() -> None:
    from eventstore.cli.main import build_parser

    p = build_parser()
    a = p.parse_args(["agents", "add", "feed", "--streams", "inventory-*", "orders-*", "--types", "X"])
    assert (a.action, a.agent, a.streams, a.types) == ("add", "feed", ["inventory-*", "orders-*"], ["X"])
    r = p.parse_args(["resources", "guard", "inventory-*", "--resource", "lock:{stream}"])
    assert (r.action, r.pattern, r.resource) == ("guard", "inventory-*", "lock:{stream}")
    assert p.parse_args(["agents", "kill", "x", "--reason", "r"]).action == "kill"
