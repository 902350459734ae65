"""A digits task that injects faults on request, for CLI subprocess tests (``task=tests.fault_tasks:FaultyDigits``).

``CK_KILL_AT_STEP=n``: SIGKILL this process when the n-th training step starts (a crash).
``CK_NAN_AT_STEP=n``: the n-th training step's loss is NaN (a diverged run).
Counts are per process, so a resumed run (without the variables) trains normally.
"""

from __future__ import annotations

import os
import signal

from capsule_kit_tasks.digits.task import DigitsTask


class FaultyDigits(DigitsTask):
    """DigitsTask plus the faults named by the environment."""

    calls = 0

    def step(self, model, batch, *, train):
        if train:
            FaultyDigits.calls += 1
            if FaultyDigits.calls == int(os.environ.get("CK_KILL_AT_STEP", 0)):
                os.kill(os.getpid(), signal.SIGKILL)
        res = super().step(model, batch, train=train)
        if train and FaultyDigits.calls == int(os.environ.get("CK_NAN_AT_STEP", 0)):
            res["loss"] = res["loss"] * float("nan")
        return res
