"""``eventstore topics create``: create the namespace's topics up front, with the configured partition
counts and an explicit replication factor, instead of letting first use create them.

Re-running is safe: existing topics with the right partition count are reported and left alone; an
existing topic with another count is an error (exit 1), because a different intake count moves
streams to other partitions and a committed topic with more than one partition loses the global order.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

from eventstore.core.settings import Settings
from eventstore.kafka.admin import TopicSpec


@dataclass(frozen=True)
class TopicPlan:
    """What to do with each wanted topic, given the partition counts of those that exist."""

    create: list[TopicSpec]
    ok: list[TopicSpec]
    wrong: list[tuple[TopicSpec, int]]  # (wanted, partitions it has)


def wanted_topics(settings: Settings, replication_factor: int = -1, min_insync_replicas: int | None = None,
                  dead_letter_partitions: int = 1, rejections_partitions: int = 1) -> list[TopicSpec]:
    """The four topics of a namespace: intake (configured partitions), committed (exactly one: the
    global order), dead-letter and rejections."""
    config = {} if min_insync_replicas is None else {"min.insync.replicas": str(min_insync_replicas)}
    return [TopicSpec(name, n, replication_factor, config) for name, n in (
        (settings.intake_topic, settings.intake_partitions),
        (settings.committed_topic, 1),
        (settings.dead_letter_topic, dead_letter_partitions),
        (settings.rejections_topic, rejections_partitions),
    )]


def plan(wanted: list[TopicSpec], existing: Mapping[str, int]) -> TopicPlan:
    """Split the wanted topics into missing, right and wrong (pure: no broker)."""
    create = [t for t in wanted if t.name not in existing]
    ok = [t for t in wanted if existing.get(t.name) == t.partitions]
    wrong = [(t, existing[t.name]) for t in wanted if t.name in existing and existing[t.name] != t.partitions]
    return TopicPlan(create, ok, wrong)


def run(args: argparse.Namespace) -> bool:
    """Carry out ``topics create``; False when an existing topic has a wrong partition count."""
    from eventstore.discovery import configured
    from eventstore.kafka.admin import create_topics, partition_counts

    settings = Settings.from_env()
    if not settings.kafka_bootstrap:  # only the broker is needed; else a running `eventstore dev`
        settings = configured()
    if args.partitions is not None:
        settings = settings.replace(intake_partitions=args.partitions)
    wanted = wanted_topics(settings, args.replication_factor, args.min_insync_replicas,
                           args.dead_letter_partitions, args.rejections_partitions)
    p = plan(wanted, partition_counts(settings, [t.name for t in wanted]))
    for t in p.ok:
        print(f"exists   {t.name} ({t.partitions} partitions)")
    for t, has in p.wrong:
        print(f"WRONG    {t.name} has {has} partitions, the configuration wants {t.partitions}: "
              "fix EVENTSTORE_INTAKE_PARTITIONS or recreate the topic (see docs/deploy.md)")
    if args.dry_run:
        for t in p.create:
            print(f"missing  {t.name} ({t.partitions} partitions; not created: --dry-run)")
    else:
        raced = set(create_topics(settings, p.create))
        for t in p.create:
            rf = "broker default" if t.replication_factor == -1 else str(t.replication_factor)
            print(f"{'exists  ' if t.name in raced else 'created '} {t.name} ({t.partitions} partitions, "
                  f"replication factor {rf})")
    return not p.wrong


def _replication(text: str) -> int:
    n = int(text)
    if n == 0 or n < -1:
        raise argparse.ArgumentTypeError("must be >= 1, or -1 for the broker's default")
    return n


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``topics create`` on the main parser's subcommands; the caller sets ``fn``."""
    tp = sub.add_parser("topics", help="create the namespace's Kafka topics up front (production)")
    tp_sub = tp.add_subparsers(dest="action", required=True, metavar="ACTION")
    cr = tp_sub.add_parser("create", help="create missing topics; existing ones with a wrong partition count fail")
    cr.add_argument("--replication-factor", type=_replication, default=-1,
                    help="replicas per partition (default -1: the broker's default.replication.factor)")
    cr.add_argument("--min-insync-replicas", type=_positive, default=None,
                    help="topic config min.insync.replicas (default: the broker's)")
    cr.add_argument("--partitions", type=_positive, default=None,
                    help="intake partitions (default EVENTSTORE_INTAKE_PARTITIONS)")
    cr.add_argument("--dead-letter-partitions", type=_positive, default=1, help="default 1")
    cr.add_argument("--rejections-partitions", type=_positive, default=1, help="default 1")
    cr.add_argument("--dry-run", action="store_true", help="only report what exists and what is missing")
    return tp
