"""``eventstore agents`` (register, list, rotate, remove, kill, revive) and ``eventstore resources``
(guard, unguard, list): the operator's commands. Registration and guards go through the operator
functions of migration 0005, so a login role granted ``eventstore_operator`` is enough for them; kill
and revive run the coordinator (which also revokes the agent's leases)."""

from __future__ import annotations

import argparse
import sys

from eventstore.core.exitcodes import EXIT_FAILURE, EXIT_OK
from eventstore.discovery import configured
from eventstore.postgres import agents
from eventstore.postgres.connection import connect, converted_errors


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ag = sub.add_parser("agents", help="register agents and give them credentials; the kill switch")
    ag_sub = ag.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = ag_sub.add_parser("add", help="register an agent and print its credential (shown once)")
    add.add_argument("agent")
    add.add_argument("--streams", nargs="+", default=None, metavar="PATTERN",
                     help="stream patterns it may write (shell-style, e.g. 'orders-*'; default: any)")
    add.add_argument("--types", nargs="+", default=None, metavar="TYPE",
                     help="event types it may emit (default: any)")
    ag_sub.add_parser("list", help="registered agents, their credential status and permissions")
    ag_sub.add_parser("rotate", help="a new credential; the old one stops working").add_argument("agent")
    ag_sub.add_parser("remove", help="revoke the agent's credential").add_argument("agent")
    kill = ag_sub.add_parser("kill", help="revoke the agent's leases and reject its new events")
    kill.add_argument("agent")
    kill.add_argument("--reason", required=True, help="recorded in the event log")
    ag_sub.add_parser("revive", help="let a killed agent work again").add_argument("agent")
    ag.set_defaults(fn=cmd_agents)

    rs = sub.add_parser("resources", help="guarded streams: writes need the current exclusive lease")
    rs_sub = rs.add_subparsers(dest="action", required=True, metavar="ACTION")
    g = rs_sub.add_parser("guard", help="guard the streams matching PATTERN")
    g.add_argument("pattern", help="shell-style stream pattern, e.g. 'inventory-*'")
    g.add_argument("--resource", default="{stream}",
                   help="the resource whose lease a write needs ({stream} is the stream's name; default {stream})")
    rs_sub.add_parser("unguard", help="stop guarding PATTERN").add_argument("pattern")
    rs_sub.add_parser("list", help="guarded stream patterns and their resources")
    rs.set_defaults(fn=cmd_resources)


def cmd_agents(args: argparse.Namespace) -> int:
    if args.action in ("kill", "revive"):
        return _kill_switch(args)
    with connect(configured(need_kafka=False).require_database()) as conn, converted_errors(), \
            conn.transaction(), conn.cursor() as cur:
        if args.action == "add":
            cred = agents.register(cur, args.agent, args.streams, args.types)
            print(f"agent {args.agent!r} registered; its credential (shown once, keep it secret):\n{cred}")
            print("give it to the agent as EVENTSTORE_AGENT_CREDENTIAL or AgentClient(..., credential=...)",
                  file=sys.stderr)
            return EXIT_OK
        if args.action == "list":
            for a in agents.list_agents(cur):
                print(f"{a.agent_id:<24} {a.status:<7} key {a.key_id} {a.credential_status:<8} "
                      f"streams {','.join(a.streams) if a.streams is not None else 'any'}  "
                      f"types {','.join(a.types) if a.types is not None else 'any'}")
            return EXIT_OK
        if args.action == "rotate":
            new = agents.rotate(cur, args.agent)
            if new is None:
                print(f"agent {args.agent!r} has no active credential; use `eventstore agents add`", file=sys.stderr)
                return EXIT_FAILURE
            print(f"agent {args.agent!r} has a new credential (the old one no longer works):\n{new}")
            return EXIT_OK
        if agents.remove(cur, args.agent):
            print(f"agent {args.agent!r} removed: its credential is revoked")
            return EXIT_OK
        print(f"agent {args.agent!r} has no active credential", file=sys.stderr)
        return EXIT_FAILURE


def _kill_switch(args: argparse.Namespace) -> int:
    from eventstore.coordination import Coordinator

    settings = configured(need_kafka=False)
    # Reach the server once first: the coordinator's pool would retry an unreachable one for minutes.
    connect(settings.require_database()).close()
    with Coordinator(settings) as coord:
        if args.action == "kill":
            revoked = coord.kill(args.agent, args.reason)
            print(f"agent {args.agent!r} killed ({args.reason}); revoked leases: {', '.join(revoked) or 'none'}")
            return EXIT_OK
        if coord.revive(args.agent):
            print(f"agent {args.agent!r} is active (revived)")
            return EXIT_OK
        print(f"agent {args.agent!r} is not known to the coordinator", file=sys.stderr)
        return EXIT_FAILURE


def cmd_resources(args: argparse.Namespace) -> int:
    with connect(configured(need_kafka=False).require_database()) as conn, converted_errors(), \
            conn.transaction(), conn.cursor() as cur:
        if args.action == "guard":
            g = agents.guard(cur, args.pattern, args.resource)
            print(f"streams matching {g.pattern!r} are guarded: a write needs the current exclusive lease on "
                  f"{g.resource!r}")
            return EXIT_OK
        if args.action == "unguard":
            if agents.unguard(cur, args.pattern):
                print(f"streams matching {args.pattern!r} are no longer guarded")
                return EXIT_OK
            print(f"{args.pattern!r} was not guarded", file=sys.stderr)
            return EXIT_FAILURE
        for g in agents.list_guards(cur):
            print(f"{g.pattern:<32} -> {g.resource}")
        return EXIT_OK
