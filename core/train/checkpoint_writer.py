"""Checkpoints written in the background, so that a save does not stall training.

`BackgroundWriter.submit(write, state)` waits for the write in flight (at most one; its error is raised
here), copies every tensor of `state` (nested dicts, lists and tuples) to host memory, and runs
`write(copy)` on a thread while training goes on. On CUDA the copies go into pinned buffers kept from
one save to the next, issued without blocking; the thread waits for an event recorded after them, so
the next optimizer step (queued behind the copies on the same stream) cannot change what is written.
Elsewhere the tensors are cloned. `write` must itself be atomic, as `core.train.checkpoint.save_checkpoint`
is (core.utils.atomic_directory): killed mid-write, the process leaves only a hidden temporary directory,
which the next run removes. `wait()` waits for the write in flight, and so does leaving a `with` block,
at the end of training, on an error or after a stop signal; a second signal (StoppedAtOnce) does not wait.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable
from typing import Any

import torch

from core.errors import StoppedAtOnce


class BackgroundWriter:
    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pinned: dict[tuple, torch.Tensor] = {}  # host buffers by position in the state, reused
        self._from_cuda = False  # the state being copied holds CUDA tensors
        self._copied: dict[tuple, torch.Tensor] = {}  # this submit's copies by what they copy: tied weights stay tied

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, write: Callable[[Any], None], state: Any) -> None:
        """Write `state` (as it is now) with `write` on a background thread, once the previous write is done."""
        self.wait()
        self._from_cuda, self._copied = False, {}
        host = self._to_host(state, ())
        self._copied = {}
        ready = None
        if self._from_cuda:
            ready = torch.cuda.Event()
            ready.record()
        self._thread = threading.Thread(target=self._run, args=(write, host, ready), daemon=True,
                                        name="checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        """Wait for the write in flight; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self, write: Callable[[Any], None], host: Any, ready) -> None:
        try:
            if ready is not None:
                ready.synchronize()
            write(host)
        except BaseException as err:  # raised in the training thread by the next submit() or wait()
            self._error = err

    def _to_host(self, value: Any, where: tuple) -> Any:
        if isinstance(value, torch.Tensor):
            return self._host_copy(value, where)
        if isinstance(value, dict):
            return {k: self._to_host(v, where + (k,)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._to_host(v, where + (i,)) for i, v in enumerate(value))
        return copy.deepcopy(value)

    def _host_copy(self, tensor: torch.Tensor, where: tuple) -> torch.Tensor:
        """One copy per distinct tensor: a weight held under two names (tied embeddings) is saved as it would be
        from the model itself, once."""
        tensor = tensor.detach()
        same = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                tuple(tensor.stride()), tensor.dtype)
        if same not in self._copied:
            self._copied[same] = self._new_copy(tensor, where)
        return self._copied[same]

    def _new_copy(self, tensor: torch.Tensor, where: tuple) -> torch.Tensor:
        if tensor.device.type != "cuda":
            return tensor.clone()
        self._from_cuda = True
        buffer = self._pinned.get(where)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = self._pinned[where] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return buffer.copy_(tensor, non_blocking=True)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None and issubclass(kind, StoppedAtOnce):
            return  # asked to exit at once: the write is atomic, an unfinished one leaves no checkpoint
        if kind is None:
            self.wait()
            return
        with contextlib.suppress(Exception):  # the error already on its way out is the one to report
            self.wait()
