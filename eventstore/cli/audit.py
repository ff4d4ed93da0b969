"""The auditor's and operator's commands: ``history``, ``writers``, ``refusals``, ``check``, ``tokens``, ``serve``.

Registered on the main parser by :func:`register`; each prints a readable table by default and
JSON (lines) with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from eventstore.core.exitcodes import EXIT_FAILURE, EXIT_INTEGRITY, EXIT_OK, EXIT_USAGE


def _db_url() -> str:
    from eventstore.discovery import configured

    return configured(need_kafka=False).require_database()


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(out)


def cmd_history(args: argparse.Namespace) -> int:
    from eventstore.core.history_query import HistoryQuery
    from eventstore.postgres.connection import connect, converted_errors
    from eventstore.postgres.history import query

    q = HistoryQuery.create(stream=args.stream, agent=args.agent, type=args.type, since=args.since,
                            until=args.until, from_position=args.from_position, to_position=args.to_position,
                            correlation=args.correlation, limit=args.limit, after=args.after)
    with connect(_db_url(), autocommit=True) as conn, converted_errors():
        page = query(conn, q)
    if args.json:
        for r in page.rows:
            print(json.dumps({**r.event, "outcomes": r.outcomes, "lock_events": r.lock_events}, default=str))
        if page.next_cursor:
            print(json.dumps({"next_cursor": page.next_cursor, "more": page.more}))
        return EXIT_OK
    rows = []
    for r in page.rows:
        e = r.event
        lease = f"{e['lease_resource']}#{e['fencing_token']}" if e["lease_resource"] else ""
        around = ", ".join(_around(o) for o in r.outcomes)
        # @N: position in the event log (lock events before migration 0009); @LN: row N of the lock chain
        locks = ", ".join(f"{x['type'].removeprefix('Lease')}@"
                          f"{x['position'] if x['position'] is not None else 'L' + str(x['lock_seq'])}"
                          for x in r.lock_events)
        pos = e["position"] if e["position"] is not None else f"L{e['lock_seq']}"  # L: row of the lock chain
        rows.append({"pos": pos, "recorded_at": e["recorded_at"][:23], "stream": e["stream"],
                     "ver": e["version"], "type": e["type"], "agent": e["agent_id"], "lease": lease,
                     "locks": locks, "outcomes around": around})
    print(_table(rows, ["pos", "recorded_at", "stream", "ver", "type", "agent", "lease", "locks",
                        "outcomes around"]))
    print(f"{len(rows)} events" + (f"; next page: --after {page.next_cursor}" if page.more else ""))
    return EXIT_OK


def cmd_writers(args: argparse.Namespace) -> int:
    from eventstore.postgres.connection import connect, converted_errors
    from eventstore.postgres.history import writers

    with connect(_db_url(), autocommit=True) as conn, converted_errors():
        rows = writers(conn)
    if args.json:
        for r in rows:
            print(json.dumps(r, default=str))
        return EXIT_OK
    for r in rows:
        r["first_write"], r["last_write"] = str(r["first_write"])[:19], str(r["last_write"])[:19]
    print(_table(rows, ["resource", "agent_id", "writes", "under_lease", "first_write", "last_write"]))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from eventstore.core.checks import evaluate, summary
    from eventstore.discovery import configured
    from eventstore.postgres.connection import connect, converted_errors
    from eventstore.postgres.evidence import gather

    settings = configured(need_kafka=False)
    with connect(settings.require_database(), autocommit=True) as conn, converted_errors():
        evidence = gather(conn, settings)
    lines = evaluate(evidence, settings)
    failed = sum(not ln.ok for ln in lines)
    if args.json:
        print(json.dumps({"ok": failed == 0, "failed": failed,
                          "controls": [{"control": ln.control, "ok": ln.ok, "detail": ln.detail} for ln in lines],
                          "evidence": evidence.to_dict()}, default=str))
    else:
        for ln in lines:
            print(ln.render())
        print(summary(lines))
    return EXIT_OK if failed == 0 else EXIT_INTEGRITY


def cmd_refusals(args: argparse.Namespace) -> int:
    """Identity refusals (migration 0012), oldest first: who was claimed, with which key id, proven or not."""
    import uuid

    from eventstore.postgres.connection import connect, converted_errors
    from eventstore.postgres.refusals import list_refusals

    try:
        event = None if args.event is None else uuid.UUID(args.event)
    except ValueError:
        print(f"--event {args.event!r} is not a UUID", file=sys.stderr)
        return EXIT_USAGE
    with connect(_db_url(), autocommit=True) as conn, converted_errors(), conn.cursor() as cur:
        found = list_refusals(cur, agent_id=args.agent, event_id=event, after=args.after, limit=args.limit)
    rows = [{"seq": r.seq, "decided_at": r.decided_at.isoformat(), "agent": r.agent_id,
             "claimed_event_id": str(r.claimed_event_id), "key_id": r.key_id, "proven": r.proven,
             "code": r.reason_code, "reason": r.reason, "stream": r.stream,
             "at": f"{r.source_partition}:{r.source_offset}"} for r in found]
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(_table([{**r, "decided_at": str(r["decided_at"])[:23]} for r in rows],
                     ["seq", "decided_at", "agent", "claimed_event_id", "key_id", "proven", "code", "at"]))
    return EXIT_OK


def cmd_tokens(args: argparse.Namespace) -> int:
    from eventstore.postgres import tokens
    from eventstore.postgres.connection import connect

    with connect(_db_url(), autocommit=True) as conn:
        if args.action == "add":
            token = tokens.add(conn, args.name, args.role)
            print(f"token {args.name!r} ({args.role}) created; it is shown only now:\n{token}")
            return EXIT_OK
        if args.action == "revoke":
            if tokens.revoke(conn, args.name):
                print(f"token {args.name!r} revoked")
                return EXIT_OK
            print(f"no active token named {args.name!r}", file=sys.stderr)
            return EXIT_FAILURE
        rows = [{"name": t.name, "role": t.role, "created_at": str(t.created_at)[:19],
                 "revoked_at": "" if t.revoked_at is None else str(t.revoked_at)[:19]}
                for t in tokens.list_tokens(conn)]
        print(_table(rows, ["name", "role", "created_at", "revoked_at"]))
        return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from eventstore.api.server import serve
    from eventstore.discovery import configured

    serve(configured(need_kafka=False), host=args.host, port=args.port)
    return EXIT_OK


def register(sub: Any) -> None:
    """Add the audit commands to the main parser's subcommands."""
    hi = sub.add_parser("history", help="query the event log: who changed what, when, under which lock")
    hi.add_argument("--stream")
    hi.add_argument("--agent")
    hi.add_argument("--type")
    hi.add_argument("--since", help="ISO 8601 with time zone, database time (recorded_at >= since)")
    hi.add_argument("--until", help="ISO 8601 with time zone (recorded_at < until)")
    hi.add_argument("--from-position", type=int)
    hi.add_argument("--to-position", type=int)
    hi.add_argument("--correlation", help="a correlation id: the whole causal chain")
    hi.add_argument("--limit", type=int, default=100, help="page size, 1-1000 (default 100)")
    hi.add_argument("--after", help="cursor printed by the previous page")
    hi.add_argument("--json", action="store_true", help="JSON lines (with outcomes and lock events)")
    hi.set_defaults(fn=cmd_history)
    wr = sub.add_parser("writers", help="who writes what: resources (stream categories) x agents")
    wr.add_argument("--json", action="store_true")
    wr.set_defaults(fn=cmd_writers)
    rf = sub.add_parser("refusals", help="envelopes refused for their identity (claimed agent and event id, key "
                                         "id, proven or forgeable), oldest first")
    rf.add_argument("--agent", help="the agent the envelopes claimed to be")
    rf.add_argument("--event", help="the event id they claimed")
    rf.add_argument("--after", type=_count(0), help="only rows after this chain sequence (the seq column)")
    rf.add_argument("--limit", type=_count(1, 1000), default=100, help="rows, 1-1000 (default 100)")
    rf.add_argument("--json", action="store_true", help="JSON lines, with the reason")
    rf.set_defaults(fn=cmd_refusals)
    ch = sub.add_parser("check", help="the founding document's checklist, from the live deployment "
                                      f"(exit {EXIT_INTEGRITY} if a control fails)")
    ch.add_argument("--json", action="store_true")
    ch.set_defaults(fn=cmd_check)
    tk = sub.add_parser("tokens", help="bearer tokens of the HTTP API")
    tk_sub = tk.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = tk_sub.add_parser("add", help="create a token (printed once, stored hashed)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["auditor", "operator"])
    tk_sub.add_parser("list", help="names, roles, when created and revoked")
    tk_sub.add_parser("revoke", help="revoke a token by name").add_argument("name")
    tk.set_defaults(fn=cmd_tokens)
    sv = sub.add_parser("serve", help="the HTTP API, metrics and the live page")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.set_defaults(fn=cmd_serve)


def _around(o: dict[str, Any]) -> str:
    """One outcome decided around a write. An identity refusal names the agent it *claimed*: unless proven
    (its MAC verified under the key it carried) anyone who can produce to intake could have sent it."""
    if o.get("source") == "identity_refusals":
        how = "proven" if o.get("proven") else "forgeable"
        return f"{o['status']}:{o['reason_code'] or ''}(claims {o['agent_id']}, key {o.get('key_id') or '-'}, {how})"
    return f"{o['status']}:{o['reason_code'] or ''}({o['agent_id']})"


def _count(low: int, high: int = 2**63 - 1) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], else a usage error naming the range."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"{n} is out of range {low}-{high}")
        return n
    return parse
