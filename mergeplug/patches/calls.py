"""Per-call state of patched models (see :class:`Calls`): what a forward keeps while it runs, per thread, and the
facts it leaves for its caller. :mod:`mergeplug.patches.base` re-exports every name; ``record`` is a
:class:`~mergeplug.patches.base.PatchRecord` (its ``calls`` and ``latest``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

__all__ = ["Calls", "begin", "current", "end", "in_call", "report", "last_forward"]


class Calls(threading.local):
    """What a patched model holds per thread: the calls in progress and the facts of the thread's last forward.

    Every forward creates its own state and keeps it here, under its family's key, only while it runs
    (:func:`begin` / :func:`current` / :func:`end`, or :func:`in_call`), so two threads calling one merged model never
    see each other's state. Facts a forward leaves for its caller (token counts, the source map) go through
    :func:`report` and are read back with :func:`last_forward`.

    Attributes:
        active: family key -> the typed state of the call in progress on this thread.
        last: fact name -> its value from this thread's last forward.
        capture: the key-projection hooks of :func:`hook_keys` are recording (inside :func:`call_capturing_keys`).
        keys: the keys they recorded, (B, T, H * dk), until :func:`call_capturing_keys` takes them.
    """

    def __init__(self) -> None:
        self.active: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.capture = False
        self.keys: torch.Tensor | None = None


S = TypeVar("S")


def begin(record: Any, key: str, state: S) -> S:
    """Start a call on this thread: its family state ``state`` is :func:`current` under ``key`` until :func:`end`."""
    record.calls.active[key] = state
    return state


def current(record: Any, key: str) -> Any:
    """The state of this thread's call in progress under ``key``, or None."""
    return record.calls.active.get(key)


def end(record: Any, key: str) -> None:
    """End this thread's call under ``key`` (its state is dropped)."""
    record.calls.active.pop(key, None)


@contextmanager
def in_call(record: Any, key: str, state: S) -> Iterator[S]:
    """``state`` is this thread's call under ``key`` inside the block (an outer call's state comes back after)."""
    outer = record.calls.active.get(key)
    record.calls.active[key] = state
    try:
        yield state
    finally:
        if outer is None:
            record.calls.active.pop(key, None)
        else:
            record.calls.active[key] = outer


def report(record: Any, name: str, value: Any) -> None:
    """Leave a fact of this forward for its caller (e.g. ``"token_counts"``), read back by :func:`last_forward`."""
    record.calls.last[name] = value
    record.latest[name] = value


def last_forward(record: Any, name: str) -> Any:
    """The fact ``name`` of this thread's last forward; from a thread that ran none, the latest of any thread;
    None if no forward reported it since the model was patched."""
    last = record.calls.last
    return last[name] if name in last else record.latest.get(name)
