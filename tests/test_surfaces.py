"""The asyncio faces offer every public method of their sync twins, with the same parameters (issue 7).

No servers needed: this compares the classes. It fails as soon as a method is added to a sync class
without an async twin, or a twin's parameters drift from the sync method's.
"""

from __future__ import annotations

import inspect

import pytest

from eventstore.coordination.aio import AsyncCoordinator
from eventstore.coordination.coordinator import Coordinator
from eventstore.core.mirroring import missing_twins, offload, public_methods
from eventstore.sdk.aio import AsyncAgentClient
from eventstore.sdk.client import AgentClient

PAIRS = [(AgentClient, AsyncAgentClient), (Coordinator, AsyncCoordinator)]
# Twins that are deliberately not coroutine functions: they do no blocking I/O (emit only queues a
# message in the producer; acquisition validates; metrics_text renders memory) or are async context
# managers (which are called without await and entered with ``async with``).
NOT_COROUTINES = {"emit", "emit_envelope", "emit_many", "acquisition", "metrics_text", "lease", "try_lease",
                  "lease_many"}


def params(sig: inspect.Signature) -> list[tuple[str, object, object, object]]:
    return [(p.name, p.kind, p.default, p.annotation) for p in sig.parameters.values()]


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=lambda c: c.__name__)
def test_every_sync_method_has_an_async_twin(sync_cls: type, async_cls: type) -> None:
    assert missing_twins(sync_cls, async_cls) == []


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=lambda c: c.__name__)
def test_twins_take_the_same_parameters(sync_cls: type, async_cls: type) -> None:
    sync_methods = public_methods(sync_cls)
    async_methods = public_methods(async_cls)
    drifted = {name: (str(sig), str(async_methods[name])) for name, sig in sync_methods.items()
               if params(sig) != params(async_methods[name])}
    assert drifted == {}


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=lambda c: c.__name__)
def test_twins_are_awaitable_unless_listed(sync_cls: type, async_cls: type) -> None:
    for name in public_methods(sync_cls):
        attr = inspect.getattr_static(async_cls, name)
        fn = attr.coroutine_function if isinstance(attr, offload) else attr
        if name in NOT_COROUTINES:
            continue
        assert inspect.iscoroutinefunction(fn), f"{async_cls.__name__}.{name} is not a coroutine function"


def test_generated_twins_carry_the_sync_docstring() -> None:
    for sync_cls, async_cls in PAIRS:
        for name, attr in vars(async_cls).items():
            if isinstance(attr, offload):
                sync_doc = inspect.getdoc(getattr(sync_cls, name))
                assert sync_doc and sync_doc in (attr.coroutine_function.__doc__ or ""), name


def test_a_missing_twin_is_reported() -> None:
    """The check itself can fail: a sync class with one more method than its twin is caught."""

    class Sync:
        def read(self, n: int) -> int:
            return n

        def write(self, n: int) -> None: ...

    class Async:
        read = offload(Sync.read)

    assert missing_twins(Sync, Async) == ["write"]
    assert params(public_methods(Async)["read"]) == params(public_methods(Sync)["read"])
