"""The cost of authentication: ``eventstore bench auth [--events N]``.

1. The projector's per-event check, measured in this process on the same signed intake values the SDK
   produces: cutting the auth member off and checking the HMAC-SHA256 (core/auth.py), against the
   envelope decode the projector does anyway, and against an Ed25519 verify of the same bytes (the
   alternative the issue names; from ``cryptography`` when installed).
2. End to end on fresh embedded servers, in the same run: N events signed with a registered
   credential through a projector with authentication on, and N unsigned events through a projector
   with ``EVENTSTORE_AUTH=off``, in alternating rounds; the ratio of the best throughputs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import psycopg

from eventstore.bench.writepath import conditions, run_phase
from eventstore.core.auth import AgentKey, Credential, authenticate, split_signed
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import build_envelope
from eventstore.wire.envelope import decode, encode

SAMPLES = 20_000
T = TypeVar("T")


def _per_call(fn: Callable[[T], object], values: Sequence[T], rounds: int = 3) -> float:
    """The best of ``rounds`` passes, in microseconds per value (best: the machine is shared)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for v in values:
            fn(v)
        best = min(best, (time.perf_counter() - t) / len(values))
    return best * 1e6


def micro(samples: int = SAMPLES) -> dict[str, float]:
    """Per-event costs in µs: the auth check, the decode it sits next to, and Ed25519 for comparison."""
    cred = Credential.new()
    keys = {cred.key_id: AgentKey(cred.key_id, "bench-agent", cred.secret, "active")}
    values = []
    for i in range(samples):
        sku = f"s-{i % 1000}"
        env = build_envelope("bench-agent", InventoryAdjusted(sku=sku, delta=-1), stream_for(sku),
                             expected_version=None, idempotency_key=None, correlation_id=None, causation_id=None,
                             lease=None)
        values.append(encode(env, cred)[1])

    def check(v: bytes) -> None:
        if authenticate("bench-agent", split_signed(v), keys) is not None:
            raise RuntimeError("a valid signature did not verify")

    envs = [decode(v) for v in values[:5000]]
    out = {"hmac check (split + HMAC-SHA256 + compare)": _per_call(check, values),
           "agent side: encode unsigned": _per_call(encode, envs),
           "agent side: encode + sign": _per_call(lambda e: encode(e, cred), envs),
           "envelope decode (done anyway)": _per_call(decode, values)}
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        return out
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    signed = [(v, private.sign(v)) for v in values[:2000]]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for v, sig in signed:
            public.verify(sig, v)
        best = min(best, (time.perf_counter() - t) / len(signed))
    out["ed25519 verify (alternative, not used)"] = best * 1e6
    return out


def main(events: int = 20_000, rounds: int = 2) -> int:
    if events < 1:
        print("bench: --events must be >= 1", file=sys.stderr)
        return 2
    print(f"eventstore auth benchmark: {SAMPLES} envelopes for the per-event check; {events} events end to end "
          "with authentication on and off", flush=True)
    for name, us in micro().items():
        print(f"  per event, {name:<45}: {us:6.2f} us")
    mode = "thread" if os.environ.get("EVENTSTORE_BENCH_PROJECTOR") == "thread" else "process"
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-bench-auth-"))
    rates: dict[bool, list[float]] = {True: [], False: []}
    ok = True
    with EmbeddedServers(None) as servers:
        upgrade(servers.postgres.url)
        run = uuid.uuid4().hex[:6]
        base = Settings.from_env().with_servers(servers.postgres.url, servers.broker.bootstrap)
        with psycopg.connect(servers.postgres.url, autocommit=True) as conn:
            conditions(base, conn, mode)
            pids = {"benchmark process (agent)": os.getpid()}
            # Alternating rounds, so a burst of load from other processes does not land on one side only.
            for i in range(1, rounds + 1):
                for auth in (False, True):
                    label = f"auth-{'on' if auth else 'off'}-{i}"
                    s = base.replace(namespace=f"bench-{run}-{label}", projector_group=f"bench-{run}-{label}",
                                     auth=auth)
                    tp, _ = run_phase(s, mode, label, events, 0, 1, conn, logdir, pids, sign=auth)
                    rates[auth].append(tp.rate)
                    ok = ok and tp.ok
    on, off = max(rates[True]), max(rates[False])
    print("\nSummary (best of each side)")
    print(f"  auth on  (signed, verified in the batch): {on:>9,.0f} events/s  rounds: "
          + ", ".join(f"{r:,.0f}" for r in rates[True]))
    print(f"  auth off (EVENTSTORE_AUTH=off, unsafe)  : {off:>9,.0f} events/s  rounds: "
          + ", ".join(f"{r:,.0f}" for r in rates[False]))
    print(f"  ratio on / off: {on / off:.2f} ({events} events per round; the machine is shared: the rounds "
          "show the noise)")
    print(f"  correctness: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1
