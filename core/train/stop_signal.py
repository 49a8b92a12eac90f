"""SIGINT and SIGTERM during training: finish the step, checkpoint, exit; a second signal exits at once."""

from __future__ import annotations

import signal

from tqdm import tqdm

from core.errors import Interrupted, StoppedAtOnce


class StopSignal:
    """SIGINT/SIGTERM: finish the current step, checkpoint, exit. A second signal exits at once.

    `at_once`: while set, the first signal already leaves at once (as `Interrupted`, the signal's one line):
    set by the loop while a --compile run's first step compiles, which takes minutes on a CPU and has no
    progress to save."""

    def __init__(self):
        self.received: int | None = None
        self.at_once = False
        self._previous = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.at_once:
            raise Interrupted(signum)  # nothing done yet to save: the run ends as if stopped before it began
        if self.received is not None:
            raise StoppedAtOnce(signum)  # a save in progress removes its temporary directory on the way out
        self.received = signum
        tqdm.write(f"\n{signal.Signals(signum).name} received: finishing this step and saving a checkpoint "
                   "(signal again to exit at once)")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
