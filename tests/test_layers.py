"""The tree's import rule, checked from the source (AST) and at run time, without servers.

- The pure core (``eventstore.core``) and the wire formats (``eventstore.wire``) import neither
  psycopg nor confluent_kafka nor any adapter or higher layer of eventstore.
- Layers only import downwards: core < wire < adapters (postgres, kafka, discovery, embedded servers)
  < components (sdk, consumers, projection, coordination) < examples < bench < cli.
- No import cycle between modules anywhere, TYPE_CHECKING imports included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("eventstore", "consumers")
DRIVERS = ("psycopg", "psycopg_pool", "confluent_kafka")

# A layer may import its own layer and any layer with a lower rank.
RANKS = {
    "eventstore.core": 0,
    "eventstore.wire": 1,
    "eventstore.postgres": 2,
    "eventstore.kafka": 2,
    "eventstore.discovery": 2,
    "eventstore.embedded": 2,
    "eventstore.coordination": 3,
    "eventstore.sdk": 3,
    "eventstore.projection": 3,
    "consumers": 3,  # subscribers: a peer of the SDK (AgentClient.follow keeps a local view with them)
    "eventstore.examples": 4,
    "eventstore.bench": 5,
    "eventstore.api": 5,  # the HTTP API: reads the adapters, acts through the coordinator
    "eventstore.simulate": 5,  # the soak test: like the benchmarks, it drives every component
    "eventstore.cli": 6,
    "eventstore": 7,  # the package's own __init__/__main__: the public face
}
PURE = ("eventstore.core", "eventstore.wire")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> Iterator[tuple[str, Path]]:
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield module_name(path), path


def imports(path: Path) -> set[str]:
    """Every module named by an import statement (at any depth: TYPE_CHECKING and local imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def layer(module: str) -> str | None:
    best = None
    for prefix in RANKS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


def known_modules() -> dict[str, Path]:
    return dict(sources())


def test_pure_core_and_wire_import_no_driver_and_no_adapter() -> None:
    offences = []
    for mod, path in sources():
        if not mod.startswith(PURE):
            continue
        for imp in imports(path):
            top = imp.split(".")[0]
            upward = imp.startswith("eventstore") and layer(imp) not in (None, *PURE) and imp != "eventstore"
            if top in DRIVERS or upward:
                offences.append(f"{mod} imports {imp}")
            elif mod.startswith("eventstore.core") and imp.startswith("eventstore.wire"):
                offences.append(f"{mod} (core) imports {imp} (wire, a higher layer)")
    assert not offences, "\n".join(offences)


def test_layers_only_import_downwards() -> None:
    offences = []
    mods = known_modules()
    for mod, path in sources():
        own = layer(mod)
        assert own is not None, f"{mod} belongs to no layer; add it to RANKS"
        for imp in imports(path):
            if imp not in mods:
                continue
            other = layer(imp)
            if other is not None and RANKS[other] > RANKS[own]:
                offences.append(f"{mod} ({own}) imports {imp} ({other})")
    assert not offences, "\n".join(offences)


def test_no_import_cycles() -> None:
    mods = known_modules()
    graph = {m: sorted({i for i in imports(p) if i in mods and i != m}) for m, p in mods.items()}
    # A package's __init__ re-exporting its own modules is not a cycle with them.
    for m in graph:
        graph[m] = [i for i in graph[m] if not m.startswith(i + ".")]
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n):], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_importing_the_core_loads_no_driver_at_run_time() -> None:
    code = ("import sys, eventstore.core.decisions, eventstore.core.settings, eventstore.core.records, "
            "eventstore.wire.envelope, eventstore.wire.committed, eventstore.wire.notifications; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {DRIVERS!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_assert_statements_in_the_library() -> None:
    """``python -O`` removes asserts: none may decide control flow or guard a reachable state."""
    found = []
    for mod, path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                found.append(f"{mod}:{node.lineno}")
    assert not found, found
