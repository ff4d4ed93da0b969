"""Which modules the build compiles with mypyc, and which of them this install runs compiled (pure).

The list is read by ``setup.py`` (by path, before the package is importable) and by the tests and the
``native`` benchmark, so there is one list. Each module is ordinary typed Python: compiled it runs the same
source faster. Opt-in: ``EVENTSTORE_NATIVE=1`` at install time compiles them; by default the install is pure
Python and needs no C compiler (docs/perf-native.md says why: 0.7-0.9x on the parts, no aim met).
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
# The install-time switch: set to 1 when installing, the build compiles the modules; unset (the default) or 0,
# it compiles nothing and removes what an earlier compiled install built in place.
NATIVE_ENV = "EVENTSTORE_NATIVE"


def native_wanted(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment asks for the compiled build: ``EVENTSTORE_NATIVE`` is 1, true or yes (any
    case); anything else (unset, 0, false, a typo) is the default pure install."""
    import os

    value = (os.environ if environ is None else environ).get(NATIVE_ENV, "")
    return value.strip().lower() in ("1", "true", "yes")


def is_compiled(module: str) -> bool:
    """Whether ``module`` imports from a C extension here (the mypyc build), not from its ``.py`` source."""
    spec = importlib.util.find_spec(module)
    origin = "" if spec is None or spec.origin is None else spec.origin
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules() -> dict[str, bool]:
    """Each module of :data:`NATIVE_MODULES` and whether it runs compiled in this install."""
    return {name: is_compiled(name) for name in NATIVE_MODULES}
