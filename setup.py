"""Build hook: compiles the hot typed modules of eventstore/core/native.py with mypyc (docs/perf-native.md).

Opt-in: ``EVENTSTORE_NATIVE=1`` at install time compiles them (a C compiler and the Python headers needed);
by default nothing is compiled and the package runs the same modules as Python, with the same behaviour.
Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _native() -> Any:
    """eventstore/core/native.py, by path: the package's dependencies need not be importable while it is built."""
    spec = importlib.util.spec_from_file_location("_eventstore_native", ROOT / "eventstore" / "core" / "native.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("eventstore/core/native.py is missing: the source tree is incomplete")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NATIVE = _native()
GROUP: str = NATIVE.GROUP


def _remove_built(modules: tuple[str, ...]) -> None:
    """A pure install over an editable tree that was compiled before: the extensions built in place would
    still shadow the sources, so they are removed (only those of the listed modules and their group)."""
    for name in modules:
        path = ROOT / Path(*name.split("."))
        for built in path.parent.glob(f"{path.name}.*.so"):
            built.unlink()
    for built in ROOT.glob(f"{GROUP}__mypyc.*.so"):
        built.unlink()


def _ext_modules() -> list[Any]:
    modules: tuple[str, ...] = NATIVE.NATIVE_MODULES
    if not NATIVE.native_wanted():
        _remove_built(modules)
        return []
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler}) found to compile {', '.join(modules)} with mypyc: install "
                           f"one (e.g. gcc), or install without {NATIVE.NATIVE_ENV}=1 (pure Python)")
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if not headers.exists():
        raise RuntimeError(f"the Python headers ({headers}) are missing, so {', '.join(modules)} cannot be compiled "
                           f"with mypyc: install them (Debian: python3-dev), or install without "
                           f"{NATIVE.NATIVE_ENV}=1 (pure Python)")
    from mypyc.build import mypycify

    paths = [str(Path(*name.split(".")).with_suffix(".py")) for name in modules]
    # The build environment holds only the build requirements: libraries the compiled modules import are
    # typed as Any when absent (the compiled code then makes generic calls to them, as Python does).
    options = ["--ignore-missing-imports", "--follow-imports=silent", "--no-warn-unused-ignores",
               "--no-warn-return-any", "--allow-subclassing-any", "--allow-untyped-calls",
               "--allow-untyped-decorators"]
    return list(mypycify(options + paths, opt_level="3", group_name=GROUP))


setup(ext_modules=_ext_modules())
