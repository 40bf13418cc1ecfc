"""A typed background prefetch: work on item N+1 in a thread while the caller consumes item N.

Enrollment and re-embedding both read and decode photos (and detect faces) while the previous chunk is embedded:
torch and Pillow release the GIL for their heavy work, so the two overlap. At most ``depth`` results wait in
the queue, so memory stays flat however long the input is.

"Flat" needs one more thing on glibc: images and tensors are allocated in one thread and freed in another, and
the freed memory stays fragmented in malloc's per-thread arenas (RSS grew ~300 MB from 200 to 1,000 photos).
Each consumed result therefore hands free memory back with ``malloc_trim`` (a no-op elsewhere).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def prefetch(items: Iterable[T], work: Callable[[T], R], *, depth: int = 1,
             name: str = "facegallery-prefetch") -> Iterator[R]:
    """Yield ``work(item)`` for each item in order, computing the next ones in a background thread.

    An exception raised by ``work`` is re-raised in the consumer. Closing the generator (or an exception in the
    consumer) stops the thread before the next item, so nothing keeps running behind the caller's back.
    """
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                results.put((True, work(item)))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            results.put((False, exc))
        finally:
            results.put((True, _DONE))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, value = results.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
            release_free_memory()
    finally:
        stop.set()
        while thread.is_alive():  # drain so the worker is never stuck on a full queue
            try:
                results.get(timeout=0.1)
            except queue.Empty:
                pass


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Return memory freed by this process to the OS where the C library can (glibc's ``malloc_trim``)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
