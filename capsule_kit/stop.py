"""Stopping a run cleanly: SIGINT/SIGTERM set a flag, the loop checkpoints and raises :class:`Interrupted`."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving ``checkpoints/last.pt``."""

    def __init__(self, run_dir: Path, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}: checkpoint saved; resume with --resume {run_dir}")
        self.run_dir, self.signum = run_dir, signum


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and stops."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class RunSignals(StopFlag):
    """A run's signal handling: before training starts, SIGINT/SIGTERM raise KeyboardInterrupt
    (nothing to save yet); once :meth:`arm` is called they only set the flag, so training,
    the test evaluation, results.json and the pictures are stopped at points where nothing is lost.
    """

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def arm(self) -> None:
        self.armed = True

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.armed:
            raise KeyboardInterrupt
        super()._handle(signum, frame)


class InterruptedAfterTraining(Interrupted):
    """Stopped by a signal after training finished (while testing or drawing pictures)."""

    def __init__(self, run_dir: Path, signum: int, done: str) -> None:
        Exception.__init__(
            self, f"interrupted by signal {signum} after training ({done}); to finish: capsule-kit --resume {run_dir}"
        )
        self.run_dir, self.signum = run_dir, signum
