"""Which modules the build compiles with mypyc, and which of them this install runs compiled (pure).

The list is read by ``setup.py`` (by path, before the package is importable) and by the tests and the
``native`` benchmark, so there is one list. Each module is ordinary typed Python: compiled it runs the same
source faster; ``EVENTSTORE_PURE_PYTHON=1`` at install time skips compilation (docs/perf-native.md).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util

# Compiled together, in this order (a module may call the ones before it natively). Chosen by measurement
# (docs/perf-native.md): each gives at least ~10 % off a per-event figure compiled.
NATIVE_MODULES: tuple[str, ...] = (
    "eventstore.core.hashing",
    "eventstore.wire.committed",
    "eventstore.postgres.eventlog",
)
# The shared library that holds the group's compiled code (``eventstore_native__mypyc.<abi>.so``, at the top
# level); each module's own extension is a small shim that loads its part from it.
GROUP = "eventstore_native"
# The install-time switch: set to 1 when installing, the build compiles nothing.
PURE_ENV = "EVENTSTORE_PURE_PYTHON"


def is_compiled(module: str) -> bool:
    """Whether ``module`` imports from a C extension here (the mypyc build), not from its ``.py`` source."""
    spec = importlib.util.find_spec(module)
    origin = "" if spec is None or spec.origin is None else spec.origin
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules() -> dict[str, bool]:
    """Each module of :data:`NATIVE_MODULES` and whether it runs compiled in this install."""
    return {name: is_compiled(name) for name in NATIVE_MODULES}
