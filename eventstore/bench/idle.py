"""``eventstore bench idle``: what an agent process costs while it waits for work.

An :class:`AgentClient` (its outcome listener, its producer poller, librdkafka's threads) and a
:class:`Coordinator` (an acquire + release, and its lease listener, which starts with the first request
that waits and then stays) are open in this process and
nothing happens for ``--seconds``. Measured by thread (each Python thread's own CPU clock; the rest of the
process, librdkafka's native threads mostly, from the process clock), with the two LISTEN threads waiting
in psycopg's timed notify wait (the baseline: what every agent did before; it spins ~1 ms of CPU per call)
and in poll(2) on the socket (``Database.listen(idle_socket=True)``, the default now), in alternating rounds
on the same servers. Prints the load average beside each round and the ratio of the two waits.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from eventstore.bench import agents as bench_agents
from eventstore.coordination import Coordinator
from eventstore.coordination.wakeup import Wakeups
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.listener import OutcomeListener

ROLES = ("outcome listener", "lease listener", "producer poller", "other Python threads", "native threads")
MODES = {"timed wait (psycopg)": False, "poll(2) on the socket": True}


def role_of(name: str) -> str:
    """The role of a Python thread, by the name the SDK gives it."""
    if name.startswith("outcomes-"):
        return "outcome listener"
    if name == "eventstore-lease-listener":
        return "lease listener"
    if name.startswith("producer-"):
        return "producer poller"
    return "other Python threads"


def _thread_clocks() -> dict[int, tuple[str, float]]:
    """CPU seconds of every live Python thread of this process (its own clock), by ident."""
    out: dict[int, tuple[str, float]] = {}
    for t in threading.enumerate():
        if t.ident is None or t is threading.current_thread():
            continue
        try:
            out[t.ident] = (role_of(t.name), time.clock_gettime(time.pthread_getcpuclockid(t.ident)))
        except (OSError, ProcessLookupError):  # the thread ended meanwhile
            continue
    return out


def idle_cpu(seconds: float) -> dict[str, float]:
    """Milliseconds of CPU per second of this process's threads by role while the caller sleeps
    ``seconds`` (the caller's own thread is asleep; its CPU is left out)."""
    first = _thread_clocks()
    p0, own0 = time.process_time(), time.thread_time()
    time.sleep(seconds)
    p1, own1 = time.process_time(), time.thread_time()
    last = _thread_clocks()
    used = dict.fromkeys(ROLES, 0.0)
    for ident, (role, cpu) in last.items():
        if ident in first:
            used[role] += cpu - first[ident][1]
    python = sum(used.values())
    used["native threads"] = max(0.0, (p1 - p0) - (own1 - own0) - python)
    return {role: v * 1000 / seconds for role, v in used.items()}


@contextmanager
def idle_agent(settings: Settings, run: str, socket: bool) -> Iterator[None]:
    """A client and a coordinator open, their listeners waiting the way ``socket`` says."""
    saved = OutcomeListener.idle_socket, Wakeups.idle_socket
    OutcomeListener.idle_socket = Wakeups.idle_socket = socket
    try:
        with bench_agents.client(f"idle-{run}", settings) as client, Coordinator(settings) as coordinator:
            coordinator.acquire(f"idle:{run}", agent_id=client.agent_id, wait=0).release()
            # The lease listener starts with the first request that waits, and then stays: as one did here.
            coordinator.wakeups.unregister(f"idle:{run}", coordinator.wakeups.register(f"idle:{run}"))
            if not coordinator.wakeups.listening.wait(15):
                raise RuntimeError("the lease listener did not start within 15 s")
            client.flush(10)
            time.sleep(1.0)  # connections settled, first polls done
            yield
    finally:
        OutcomeListener.idle_socket, Wakeups.idle_socket = saved
        gc.collect()  # a closed client's producer (and its native threads) goes with its last reference


def run(settings: Settings, seconds: float, rounds: int) -> dict[str, list[dict[str, float]]]:
    """Alternate the two waits ``rounds`` times each; the per-role figures of every round."""
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode, socket in MODES.items():
            with idle_agent(settings, f"{r}{int(socket)}-{uuid.uuid4().hex[:4]}", socket):
                load = os.getloadavg()[0]
                figures = idle_cpu(seconds)
            samples[mode].append(figures)
            print(f"  round {r + 1}, {mode:<22} load {load:4.2f}: " + ", ".join(
                f"{role} {figures[role]:.2f}" for role in ROLES) + f"; all {sum(figures.values()):.2f} ms/s",
                flush=True)
    return samples


def report(samples: dict[str, list[dict[str, float]]]) -> None:
    """Median per role of each wait, and the ratio poll(2) / timed wait."""
    (base_name, base), (new_name, new) = samples.items()

    def med(rows: list[dict[str, float]], role: str | None) -> float:
        return statistics.median(sum(r.values()) if role is None else r[role] for r in rows)

    print(f"\nmedian ms of CPU per second idle (= tenths of a percent of a core); ratio {new_name} / {base_name}")
    for role in (*ROLES, None):
        a, b = med(base, role), med(new, role)
        ratio = f"{b / a:.2f}x" if a > 0 else "-"
        print(f"  {role or 'the whole process':<22} {a:7.2f} -> {b:7.2f}   {ratio}")
    listeners = ("outcome listener", "lease listener")
    a = sum(med(base, r) for r in listeners)
    b = sum(med(new, r) for r in listeners)
    print(f"  the two listeners: {a / 10:.3f} % -> {b / 10:.3f} % of a core"
          + (f" ({b / a:.3f}x)" if a > 0 else ""))


def main(seconds: float = 15.0, rounds: int = 2) -> int:
    """Print an idle agent process's CPU by thread with both waits, alternated on the same servers."""
    print(f"eventstore idle agent benchmark: an AgentClient and a Coordinator open, {seconds:g} s idle per round, "
          f"{rounds} alternating rounds per wait")
    print(f"  machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; load "
          f"average {os.getloadavg()[0]:.2f} (shared; idle CPU is the process's own, little moved by load)")
    with EmbeddedServers(None) as servers:
        upgrade(servers.postgres.url)
        base = Settings.from_env().with_servers(servers.postgres.url, servers.broker.bootstrap)
        tag = uuid.uuid4().hex[:6]
        settings = base.replace(namespace=f"idle-{tag}", projector_group=f"idle-{tag}")
        report(run(settings, seconds, rounds))
    return 0
