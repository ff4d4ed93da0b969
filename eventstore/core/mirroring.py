"""Async twins of sync classes, generated: one thread-offloading coroutine per sync method.

The asyncio faces (``AsyncAgentClient``, ``AsyncCoordinator``) wrap a sync object in ``.sync``. Every
method that only blocks on I/O is declared as ``name = offload(SyncClass.name)``: a coroutine with the
sync method's parameters (checked by the type checker through ``ParamSpec``), signature and docstring,
that runs it in a worker thread. Only methods that must behave differently under asyncio (awaiting a
future instead of blocking a thread, polling with ``asyncio.sleep`` so a task can be cancelled) are
written by hand. :func:`missing_twins` lists sync methods without a twin; a test keeps it empty.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import types
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

P = ParamSpec("P")
R = TypeVar("R")


class offload(Generic[P, R]):  # noqa: N801 - used like a decorator/function, named like one
    """``name = offload(Sync.name)`` in an async class whose instances hold the sync object in ``.sync``:
    the attribute becomes ``async def name(...)`` running ``self.sync.name(...)`` in a worker thread."""

    def __init__(self, method: Callable[Concatenate[Any, P], R]) -> None:
        self.method = method

        @functools.wraps(method)
        async def twin(owner: Any, /, *args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, owner.sync, *args, **kwargs)

        twin.__doc__ = inspect.cleandoc(method.__doc__ or "") + "\n\n(Runs the sync method in a worker thread.)"
        twin.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
        self.coroutine_function = twin

    def __set_name__(self, owner: type, name: str) -> None:
        self.coroutine_function.__qualname__ = f"{owner.__qualname__}.{name}"

    @overload
    def __get__(self, instance: None, owner: type) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]: ...
    @overload
    def __get__(self, instance: object, owner: type) -> Callable[P, Coroutine[Any, Any, R]]: ...
    def __get__(self, instance: object | None, owner: type) -> Any:
        # On the class: the coroutine function itself, so help(), inspect.signature() and
        # inspect.iscoroutinefunction() see what a hand-written ``async def`` would show.
        if instance is None:
            return self.coroutine_function
        return types.MethodType(self.coroutine_function, instance)


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    """Public callables a class defines (its own and inherited, not object's), with their signatures."""
    found: dict[str, inspect.Signature] = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, offload):
            found[name] = inspect.signature(attr.coroutine_function)
        elif isinstance(attr, (staticmethod, classmethod)):
            found[name] = inspect.signature(getattr(cls, name))
        elif inspect.isfunction(attr):
            found[name] = inspect.signature(attr)
    return found


def missing_twins(sync_cls: type, async_cls: type) -> list[str]:
    """Public methods of ``sync_cls`` that ``async_cls`` lacks."""
    return sorted(set(public_methods(sync_cls)) - set(public_methods(async_cls)))
