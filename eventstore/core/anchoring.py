"""Signed anchors of the history's heads (pure): what ``eventstore anchor`` writes outside the database.

An anchor says "at database time T the log's head was (position, hash), the outcomes chain's head was
(seq, hash), the dead letters' head was (seq, hash), the lock chain's head was (seq, hash)", signed with
an Ed25519 key that lives outside the database. Because every hash covers everything before it, a log
that still holds the anchored hash at the anchored position still holds the whole anchored history
unchanged; a database owner who rewrites history (and recomputes every hash) cannot make the old heads
reappear, and cannot sign a new anchor without the key. One anchor is one JSON line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from eventstore.core.errors import ConfigurationError, DecodeError

FORMAT = "eventstore.anchor/1"


@dataclass(frozen=True)
class Heads:
    """The heads of the chains: the event log (position, hash) and the side chains (seq, hash). The lock
    chain (migration 0009) and the identity refusals (0012) are None in anchors written before they existed;
    those verify as they were signed."""

    position: int
    hash: bytes
    outcomes_seq: int
    outcomes_hash: bytes
    dead_letters_seq: int
    dead_letters_hash: bytes
    lock_events_seq: int | None = None
    lock_events_hash: bytes | None = None
    identity_refusals_seq: int | None = None  # migration 0012; None in anchors written before it
    identity_refusals_hash: bytes | None = None


@dataclass(frozen=True)
class Anchor:
    heads: Heads
    database_time: datetime
    key_id: str
    signature: bytes

    def body(self) -> dict[str, Any]:
        return _body(self.heads, self.database_time, self.key_id)

    def to_line(self) -> str:
        """The anchor as one JSON line (no newline)."""
        return json.dumps({**self.body(), "signature": self.signature.hex()}, separators=(",", ":"))


def _body(heads: Heads, database_time: datetime, key_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "format": FORMAT, "position": heads.position, "hash": heads.hash.hex(),
        "outcomes": {"seq": heads.outcomes_seq, "hash": heads.outcomes_hash.hex()},
        "dead_letters": {"seq": heads.dead_letters_seq, "hash": heads.dead_letters_hash.hex()},
        "database_time": database_time.isoformat(), "key_id": key_id,
    }
    if heads.lock_events_seq is not None and heads.lock_events_hash is not None:
        body["lock_events"] = {"seq": heads.lock_events_seq, "hash": heads.lock_events_hash.hex()}
    if heads.identity_refusals_seq is not None and heads.identity_refusals_hash is not None:
        body["identity_refusals"] = {"seq": heads.identity_refusals_seq,
                                     "hash": heads.identity_refusals_hash.hex()}
    return body


def signed_bytes(body: dict[str, Any]) -> bytes:
    """The exact bytes signed: the anchor's fields without the signature, sorted, compact."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a key: the first 16 hex digits of sha256 of its raw public bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, heads: Heads, database_time: datetime) -> Anchor:
    kid = key_id(key.public_key())
    return Anchor(heads, database_time, kid, key.sign(signed_bytes(_body(heads, database_time, kid))))


def signature_ok(anchor: Anchor, public_key: Ed25519PublicKey) -> bool:
    """True if ``anchor`` was signed by the private half of ``public_key`` and not changed since."""
    if anchor.key_id != key_id(public_key):
        return False
    try:
        public_key.verify(anchor.signature, signed_bytes(anchor.body()))
    except InvalidSignature:
        return False
    return True


def parse_line(line: str) -> Anchor:
    """One anchor from its JSON line; DecodeError if it is not one."""
    try:
        d = json.loads(line)
        if d.get("format") != FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, not {FORMAT!r}")
        locks = d.get("lock_events")
        refusals = d.get("identity_refusals")
        heads = Heads(int(d["position"]), bytes.fromhex(d["hash"]), int(d["outcomes"]["seq"]),
                      bytes.fromhex(d["outcomes"]["hash"]), int(d["dead_letters"]["seq"]),
                      bytes.fromhex(d["dead_letters"]["hash"]),
                      None if locks is None else int(locks["seq"]),
                      None if locks is None else bytes.fromhex(locks["hash"]),
                      None if refusals is None else int(refusals["seq"]),
                      None if refusals is None else bytes.fromhex(refusals["hash"]))
        return Anchor(heads, datetime.fromisoformat(d["database_time"]), str(d["key_id"]),
                      bytes.fromhex(d["signature"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DecodeError(f"not an eventstore anchor line: {e!r}") from e


def new_private_key_pem() -> bytes:
    """A fresh Ed25519 private key as unencrypted PKCS#8 PEM (store it with mode 0600, outside the database)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def private_key_from_pem(data: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigurationError(f"{where} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{where} holds a {type(key).__name__}, not an Ed25519 key; "
                                 "create one with `eventstore anchor --init-key PATH`")
    return key


def public_key_from_pem(data: bytes, where: str) -> Ed25519PublicKey:
    """The public key from a PEM file holding either the public key or the private key."""
    if b"PRIVATE KEY" in data:
        return private_key_from_pem(data, where).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ConfigurationError(f"{where} is not a PEM public or private key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"{where} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
