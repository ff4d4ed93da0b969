"""``eventstore bench``: benchmarks on fresh embedded servers (not tests). Each prints its conditions and
ratios against baselines measured in the same run (docs/benchmarks.md); the modules live in eventstore/bench/
and are imported only when chosen, so the command line starts fast."""

from __future__ import annotations

import argparse

from eventstore.core.exitcodes import EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the chosen benchmark; its exit status."""
    if args.which == "write-path":
        from eventstore.bench import writepath

        return writepath.main(events=args.events or 100_000, latency_events=args.latency_events, rate=args.rate)
    if args.which == "memory":
        from eventstore.bench import memory

        return memory.main(events=args.events or 1_000_000, heap_trace=args.heap_trace, malloc_trim=args.malloc_trim)
    if args.which == "scale":
        from eventstore.bench import scale

        return scale.main(events=args.events or 40_000, processes=args.processes)
    if args.which == "subscribers":
        from eventstore.bench import subscribers

        return subscribers.main(events=args.events or 1_000_000, rate=args.rate, latency_events=args.latency_events)
    if args.which == "native":  # no servers: the mypyc-compiled modules against their own source
        from eventstore.bench import native

        return native.main(args.events or 20_000)
    if args.which == "rebuild-cpu":  # no servers: the subscriber's batch step alone
        from eventstore.bench import rebuildcpu

        return rebuildcpu.main(args.events or 100_000)
    if args.which == "chain-check":
        from eventstore.bench import chaincheck

        return chaincheck.main(events=args.events or 100_000)
    if args.which == "history":
        from eventstore.bench import history

        return history.main(events=args.events or 1_000_000)
    if args.which == "profile":
        from eventstore.bench import profile

        return profile.main(events=args.events or 100_000)
    if args.which == "latency":
        from eventstore.bench import brokerlatency, commitab

        return brokerlatency.main(heavy=args.events or 100_000, rate=args.rate, events=args.latency_events,
                                  rounds=1 if args.quick else 2, probe=not args.quick, sections=(commitab.commit_ab,))
    if args.which == "visible":
        from eventstore.bench import visiblelatency

        return visiblelatency.main(heavy=args.events or 100_000, rate=args.rate,
                                   events=1000 if args.quick else min(args.latency_events, 2000),
                                   waits=visiblelatency.QUICK_MODES if args.quick else visiblelatency.MODES)
    if args.which == "batchcost":
        from eventstore.bench import batchcost

        return batchcost.main(seconds=args.seconds or 5.0, rounds=1 if args.quick else 2)
    if args.which == "analyze":
        from eventstore.bench import analyze

        return analyze.main(events=args.events or 200_000, rounds=1 if args.quick else 2)
    if args.which == "idle":
        from eventstore.bench import idle

        return idle.main(seconds=args.seconds or 15.0, rounds=1 if args.quick else 2)
    if args.which == "broker-growth":
        from eventstore.bench import brokergrowth

        return brokergrowth.main(rate=args.rate, rounds=1 if args.quick else 2, seconds=args.seconds or 30.0,
                                 variants=brokergrowth.VARIANTS + (brokergrowth.MORE_VARIANTS if args.all else ()))
    if args.which == "references":
        from eventstore.bench import references

        return references.main(events=args.events or 1_000_000, quick=args.quick)
    if args.which == "publisher":
        from eventstore.bench import publishing

        return publishing.main(events=args.events or 100_000, rounds=2 if not args.quick else 1)
    if args.which == "publisher-latency":
        from eventstore.bench import publishlatency

        return publishlatency.main(events=args.latency_events, rate=args.rate, rounds=1 if args.quick else 3)
    if args.which == "intake":
        from eventstore.bench import intake

        return intake.main(events=args.events or 50_000, profile=args.profile, default_gc=args.default_gc)
    if args.which == "agent":
        from eventstore.bench import agent

        return agent.main(events=args.events or 20_000, rate=args.rate, latency_events=args.latency_events)
    if args.which == "auth":
        from eventstore.bench import auth

        return auth.main(events=args.events or 20_000)
    from eventstore.bench import leases

    leases.main(["--rounds", str(args.rounds), "--per-agent", str(args.per_agent),
                 "--processes", str(args.agent_processes)] + (["--no-coupling"] if args.no_coupling else []))
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``eventstore bench`` to the command line's subcommands."""
    bn = sub.add_parser("bench", help="benchmarks on fresh embedded servers (not tests)")
    bn.add_argument("which", nargs="?", default="write-path",
                    choices=["write-path", "subscribers", "leases", "scale", "chain-check", "history",
                             "references", "latency", "profile", "auth", "memory", "intake", "agent",
                             "publisher", "broker-growth", "publisher-latency", "visible",
                             "rebuild-cpu", "native", "idle", "analyze", "batchcost"])
    bn.add_argument("--events", type=int, default=None,
                    help="events for the throughput run (write-path 100,000; subscribers and memory 1,000,000; "
                         "chain-check 100,000; history 1,000,000; references: the drain, 1,000,000; latency: the "
                         "heavy traffic, 100,000; profile 100,000; intake: per round, 50,000; agent: per figure, "
                         "20,000; visible: the drain, 100,000; rebuild-cpu 100,000; native 20,000; "
                         "analyze 200,000)")
    bn.add_argument("--processes", default="1,2,4", help="scale: projector process counts to compare")
    bn.add_argument("--rounds", type=int, default=1000, help="leases: uncontended rounds")
    bn.add_argument("--per-agent", type=int, default=100, help="leases: contended rounds per agent")
    bn.add_argument("--agent-processes", type=int, default=4,
                    help="leases: also run the 16 contended agents as this many processes (1: threads only)")
    bn.add_argument("--no-coupling", action="store_true", help="leases: skip the write-path coupling part")
    bn.add_argument("--latency-events", type=int, default=3000, help="events for the latency run")
    bn.add_argument("--rate", type=int, default=1000, help="steady rate (events/s) for the latency run")
    bn.add_argument("--quick", action="store_true",
                    help="references: smaller runs (drain of 100,000 events); publisher, latency: one round "
                         "(latency: without the broker-only probes); visible: 1,000 events per round, Kafka-only "
                         "10 ms and woken only")
    bn.add_argument("--seconds", type=float, default=None,
                    help="broker-growth: seconds per steady run (30); idle: seconds per round (15); "
                         "batchcost: seconds per rate (5)")
    bn.add_argument("--all", action="store_true",
                    help="broker-growth: also linger 20 ms and 32 intake partitions")
    bn.add_argument("--profile", action="store_true", help="intake: also print a cProfile of one round")
    bn.add_argument("--default-gc", action="store_true",
                    help="intake: keep CPython's collector settings (the baseline of core/gcpolicy.py)")
    bn.add_argument("--heap-trace", action="store_true",
                    help="memory: tracemalloc in the projector and the subscriber, growth by component (slower)")
    bn.add_argument("--malloc-trim", type=float, default=0.0, metavar="SECONDS",
                    help="memory: the projector process returns glibc's free heap memory every SECONDS (experiment)")
    bn.set_defaults(fn=cmd_bench)
