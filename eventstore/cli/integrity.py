"""``eventstore verify`` and ``eventstore anchor``: check the history's chains up to their heads, sign
the heads with a key kept outside the database, and check that the log still holds signed heads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from eventstore.core import anchoring
from eventstore.core.errors import BrokerError, ConfigurationError, DecodeError
from eventstore.core.settings import Settings


def _key_path(args: argparse.Namespace, settings: Settings) -> Path:
    path = getattr(args, "key", None) or settings.anchor_key
    if not path:
        raise ConfigurationError("no anchor key: set EVENTSTORE_ANCHOR_KEY to the key file (create one with "
                                 "`eventstore anchor --init-key PATH`) or pass --key PATH")
    return Path(path)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigurationError(f"cannot read the {what} {path}: {e.strerror}") from e


def init_key(path: Path) -> None:
    """Create a new Ed25519 key file (mode 0600; never overwrites) and its public half next to it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise ConfigurationError(f"{path} exists; an anchor key is never overwritten (choose another path)") from e
    except OSError as e:
        raise ConfigurationError(f"cannot create the anchor key {path}: {e.strerror}") from e
    pem = anchoring.new_private_key_pem()
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = anchoring.private_key_from_pem(pem, str(path)).public_key()
    pub_path = path.with_name(path.name + ".pub")
    pub_path.write_bytes(anchoring.public_key_pem(public))
    print(f"anchor key {anchoring.key_id(public)} written to {path} (keep it outside the database host's "
          f"reach); public key for verifiers: {pub_path}")
    print(f"  export EVENTSTORE_ANCHOR_KEY='{path.resolve()}'")


def anchor(args: argparse.Namespace) -> None:
    """Sign the current heads and append the anchor to the file (and the topic, if configured)."""
    from eventstore.discovery import configured
    from eventstore.postgres.anchors import current_heads
    from eventstore.postgres.connection import connect, converted_errors

    if args.init_key:
        init_key(Path(args.init_key))
        return
    settings = configured(need_kafka=False)
    key_path = _key_path(args, settings)
    key = anchoring.private_key_from_pem(_read(key_path, "anchor key"), str(key_path))
    with connect(settings.require_database()) as conn, converted_errors(), conn.cursor() as cur:
        heads, at = current_heads(cur)
    signed = anchoring.sign(key, heads, at)
    line = signed.to_line()
    out = Path(args.file or settings.anchor_file)
    with out.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    where = str(out)
    if settings.anchor_topic:
        _produce(settings, settings.anchor_topic, line)
        where += f" and topic {settings.anchor_topic}"
    print(f"anchored event log head: position {heads.position}, hash {heads.hash.hex()}; outcomes "
          f"{heads.outcomes_seq}, dead letters {heads.dead_letters_seq}, lock events {heads.lock_events_seq}, "
          f"identity refusals {heads.identity_refusals_seq}; "
          f"at {at.isoformat()} "
          f"(database time), key {signed.key_id}, written to {where}")


def _produce(settings: Settings, topic: str, line: str) -> None:
    from confluent_kafka import KafkaException, Producer

    from eventstore.kafka.config import ensure_topics, producer_config

    settings.require_kafka()
    ensure_topics(settings, {topic: 1})
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    try:
        producer = Producer(producer_config(settings))
        producer.produce(topic, value=line.encode(), key=b"anchor", on_delivery=delivered)
        left = producer.flush(30)
    except KafkaException as e:
        raise BrokerError(f"the anchor was written to the file but not to topic {topic}: {e}") from e
    if left or failures:
        raise BrokerError(f"the anchor was written to the file but not to topic {topic}: "
                          f"{failures[:1] or 'not delivered within 30s'}")


def verify(args: argparse.Namespace) -> bool:
    """Check every chain up to its head and, with ``--anchor``, every signed head; print what was found.
    False if anything does not verify."""
    from eventstore.discovery import configured
    from eventstore.postgres import anchors, sidechains
    from eventstore.postgres.connection import connect, converted_errors
    from eventstore.postgres.eventlog import verify_chain

    settings = configured(need_kafka=False)
    anchor_lines: list[str] = []
    public = None
    if args.anchor:
        anchor_lines = [ln for ln in _read(Path(args.anchor), "anchor file").decode().splitlines() if ln.strip()]
        key_path = _key_path(args, settings)
        public = anchoring.public_key_from_pem(_read(key_path, "anchor key"), str(key_path))
    failed = False
    with connect(settings.require_database()) as conn, converted_errors(), conn.cursor() as cur:
        report = verify_chain(cur)
        sides = sidechains.verify_all(cur)
        print(f"event log head: position {report.head_position}, hash {report.head_hash.hex()}")
        if report.ok:
            print(f"event log intact: {report.checked} events, hash chain verified up to the head")
        else:
            failed = True
            print(f"event log TAMPERED at position {report.first_bad_position}: {report.problem} "
                  f"({report.checked} events verified before it)")
        for side in sides:
            if side.ok:
                print(f"{side.name} intact: {side.checked} rows, hash chain verified up to the head")
            else:
                failed = True
                print(f"{side.name} TAMPERED at row {side.first_bad_seq}: {side.problem}")
        for i, line in enumerate(anchor_lines, start=1):
            try:
                anchor = anchoring.parse_line(line)
            except DecodeError as e:
                failed = True
                print(f"anchor {i} of {args.anchor} is unreadable: {e}")
                continue
            if public is None or not anchoring.signature_ok(anchor, public):
                failed = True
                print(f"anchor {i} of {args.anchor}: the signature does not verify with key "
                      f"{'?' if public is None else anchoring.key_id(public)} (forged or another key)")
                continue
            problems = anchors.check(cur, anchor)
            for p in problems:
                failed = True
                print(f"anchor {i} (position {anchor.heads.position}, {anchor.database_time.isoformat()}) "
                      f"TAMPERED: {p}")
        if anchor_lines and not failed:
            print(f"{len(anchor_lines)} anchors of {args.anchor} verified: the log still holds every anchored head")
    return not failed
