"""The next steps' batches, built on a background thread while the current step runs.

Building a step's batches (packing, loss positions, pinning, the copy to the device: the objectives'
`batch`) is host work that would otherwise sit between two steps, with the device idle. Here it is done
a few steps ahead, in the order given, so the batches trained and their order are exactly those built
when each step comes. On CUDA the copies leave pinned memory with `non_blocking=True` on the same
stream as the step, so they are ordered before the kernels that read them and no one waits for them. A
failure in the thread is raised in the loop, with its traceback; closing (end, stop, error) joins the
thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import torch

Item = TypeVar("Item")
Built = TypeVar("Built")
_END = object()


class Prefetcher(Generic[Item, Built]):
    """Iterates over (item, build(item)) for `items` in order, building up to `ahead` items before they are asked for.

    A context manager: leaving it stops the thread (after the item it is building) and joins it.
    """

    def __init__(self, build: Callable[[Item], Built], items: Iterable[Item], device: torch.device, ahead: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        # a new thread starts on CUDA device 0, where pinning would open a context of its own: give it the step's
        cuda_index = (device.index if device.index is not None else torch.cuda.current_device()) \
            if device.type == "cuda" else None
        self._thread = threading.Thread(target=self._work, args=(build, iter(items), cuda_index),
                                        name="batch-prefetch", daemon=True)
        self._thread.start()

    def _work(self, build: Callable[[Item], Built], items: Iterator[Item], cuda_index: int | None) -> None:
        if cuda_index is not None:
            torch.cuda.set_device(cuda_index)
        try:
            for item in items:
                if not self._put((item, build(item))):
                    return
        except BaseException as error:  # raised in the loop by __next__, traceback and all
            self._put(error)
            return
        self._put(_END)

    def _put(self, entry) -> bool:
        """Queue `entry` once there is room; False if the prefetcher was closed first."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher[Item, Built]:
        return self

    def __next__(self) -> tuple[Item, Built]:
        entry = self._queue.get()
        if entry is _END:
            self._queue.put(_END)  # asked again, it stays ended
            raise StopIteration
        if isinstance(entry, BaseException):
            raise entry
        return entry

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher[Item, Built]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
