"""One thread that runs every model call, by priority, so calls never overlap and the event loop
never waits on the model (it awaits the returned futures).

The user's requests (priority :data:`USER`) go before background work queued earlier (prefetching
the next image's embedding, compiling programs ahead of time); a job already running finishes first.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
USER, PREFETCH, WARMUP = 0, 1, 2
_STOP = -1


class PriorityWorker:
    """A daemon thread taking ``(priority, fn)`` jobs from a queue, lowest priority number first,
    first-come first-served within a priority."""

    def __init__(self, name: str = "sam-jax-annotate-model") -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, priority: int = USER) -> Future[T]:
        """Queue ``fn(*args)``; its result or exception arrives on the returned future."""
        future: Future[T] = Future()
        if self._closed:
            future.set_exception(RuntimeError("the model worker has stopped"))
            return future
        self._queue.put((priority, next(self._seq), (future, fn, args)))
        return future

    def pending(self) -> int:
        """Jobs queued and not started."""
        return self._queue.qsize()

    def _loop(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if job is None:
                break
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to whoever awaits the future
                future.set_exception(e)
        # Fail what is still queued, so nobody waits forever.
        while True:
            try:
                _, _, job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job[0].set_running_or_notify_cancel():
                job[0].set_exception(RuntimeError("the model worker has stopped"))

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop after the running job (queued jobs fail); waits up to ``timeout`` seconds."""
        if not self._closed:
            self._closed = True
            self._queue.put((_STOP, next(self._seq), None))
        self._thread.join(timeout)
