"""The mypyc build (setup.py, eventstore/core/native.py): which modules run compiled in this install, and
that CI really ran the compiled code. No servers.

Under ``CI=true`` the install must be what the environment says: with ``EVENTSTORE_NATIVE=1`` every listed
module imports from its C extension (.ci/run installs it so and runs the compiled check), without it every
one imports from its .py source (the suite's run). Anywhere else the test only reports what it found.
The decoders' differential tests (test_committed_decoder.py, test_codec.py, ...) run against whatever this
install imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import pytest

from eventstore.core.native import GROUP, NATIVE_ENV, NATIVE_MODULES, compiled_modules, is_compiled, native_wanted
from eventstore.wire import committed
from eventstore.wire.committed import decode_batch, encode_recorded

ROOT = Path(__file__).resolve().parent.parent


def test_which_modules_are_compiled_in_this_install() -> None:
    found = compiled_modules()
    print("compiled with mypyc:", {name.rsplit(".", 1)[1]: on for name, on in found.items()})
    assert set(found) == set(NATIVE_MODULES) and NATIVE_MODULES
    if os.environ.get("CI", "").lower() == "true":
        wanted = native_wanted()
        wrong = [name for name, on in found.items() if on != wanted]
        assert not wrong, (f"{NATIVE_ENV}={'1' if wanted else 'unset'} in CI, but {wrong} import from their "
                           f"{'.py source: the mypyc build did not run' if wanted else 'C extension: a stale build'}"
                           " (see setup.py)")


def test_each_listed_module_exists_as_source_and_is_all_or_nothing() -> None:
    """Every listed module has its .py source (the pure fallback, and what mypyc compiles), and an install
    compiles the whole group or none of it (they call each other natively)."""
    for name in NATIVE_MODULES:
        assert (ROOT / Path(*name.split("."))).with_suffix(".py").exists(), name
        assert importlib.import_module(name) is not None
    assert len(set(compiled_modules().values())) == 1, compiled_modules()


def test_no_compiled_module_is_older_than_its_source() -> None:
    """An extension built in place shadows its .py: after an edit or a pull without a re-install the old
    compiled code would run. The group's shared library holds the code (each module's own .so is a shim that
    a rebuild may leave untouched), so it must be newer than every listed source. Re-install
    (``pip install -e .``) or delete the .so files to run the source."""
    if not any(compiled_modules().values()):
        return
    group = importlib.util.find_spec(f"{GROUP}__mypyc")
    assert group is not None and group.origin is not None, f"the modules are compiled but {GROUP}__mypyc is missing"
    built = Path(group.origin).stat().st_mtime
    for name in NATIVE_MODULES:
        source = (ROOT / Path(*name.split("."))).with_suffix(".py")
        assert built >= source.stat().st_mtime, (
            f"{Path(group.origin).name} is older than {source}: a stale build runs instead of the source; run "
            f"`{NATIVE_ENV}=1 pip install -e .` (or `pip install -e .` for pure Python) or delete the .so files")


def test_is_compiled_tells_an_extension_from_a_source_module() -> None:
    assert not is_compiled("eventstore.core.native")  # never compiled: setup.py reads it by path
    assert not is_compiled("eventstore.wire.committedschema")


def test_the_committed_decoder_takes_the_fast_path_in_this_install() -> None:
    """A class defined in a compiled module keeps ``X | None`` annotations as ``type`` (mypyc), so a msgspec
    schema there refuses every message and every event silently takes the slow reference path. The schema
    lives in an uncompiled module; this shows the fast path takes an honest message, compiled or not."""
    from tests.test_committed_decoder import event

    ev = event(lease_resource="inventory:A1", fencing_token=3)
    (got,), (link,) = decode_batch([encode_recorded(ev)[2]])
    assert got == ev and link == ev.hash
    assert committed._COMMITTED.type.__module__ == "eventstore.wire.committedschema"


@pytest.mark.parametrize("changes", [{"lease_resource": 5}, {"fencing_token": "4"}, {"fencing_token": True},
                                     {"lease_resource": ["a"]}, {"fencing_token": 4.0}])
def test_the_reference_refuses_lease_fields_of_another_json_type(changes: dict[str, object]) -> None:
    """The reference decoder took these fields as they stood (a token "4" hashed like the log's 4); compiled,
    the chain hash's typed arguments refuse them with a TypeError instead. Both builds now refuse them the
    same way, with DecodeError, before any hash."""
    from eventstore.core.errors import DecodeError
    from tests.test_committed_decoder import edited

    with pytest.raises(DecodeError, match=r"lease_resource|fencing_token"):
        committed.decode_committed(edited(**changes))
    with pytest.raises(DecodeError, match=r"lease_resource|fencing_token"):
        committed.decode_linked(edited(**changes))


def test_the_native_benchmark_loads_pure_copies_and_restores_the_modules(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench native`` compares each module with its own source run as Python: the copies come from the .py
    files, the process's modules are left as they were, and a short run prints a ratio for every part."""
    import sys

    from eventstore.bench import native

    before = {name: sys.modules[name] for name in NATIVE_MODULES}
    pure = native.pure_modules()
    assert {name: sys.modules[name] for name in NATIVE_MODULES} == before
    for name, module in pure.items():
        assert module is not before[name] and str(module.__file__).endswith(".py"), name
    from tests.test_committed_decoder import event

    ev = event()
    assert pure["eventstore.wire.committed"].decode_batch([encode_recorded(ev)[2]]) == ([ev], [ev.hash])
    assert native.main(200) == 0
    out = capsys.readouterr().out
    assert out.count("x\n") == 6 and "this install" in out


@pytest.mark.parametrize(("value", "wanted"), [("1", True), ("true", True), ("YES", True), (" 1 ", True),
                                               ("", False), ("0", False), ("false", False), ("no", False),
                                               ("off", False), ("2", False)])
def test_only_an_explicit_yes_asks_for_the_compiled_build(value: str, wanted: bool) -> None:
    """``EVENTSTORE_NATIVE=false`` must not compile (the default install stays pure unless asked for)."""
    assert native_wanted({NATIVE_ENV: value}) is wanted
    assert native_wanted({}) is False
