"""The `harness` command line with one interruption planted, for the checkpoint tests (tests/test_checkpoint.py).

    python tests/interrupt.py MODE K harness-arguments...

MODE is ``none`` (the plain command), ``kill-after`` (SIGKILL this process right after the checkpoint of step K is
written: a real kill, nothing of the process survives it) or ``term-at`` (SIGTERM to this process at the start of step
K, so the signal lands during a step, as SLURM's would). The toy task ``sevens`` (conftest.SevensTask) is registered so
that a random 1-layer model learns from the first step: its weights, rewards and evaluations move every step, and a
resumed run that differed in any of them would show. Under torchrun every process plants the same interruption.
"""

from __future__ import annotations

import os
import signal
import sys

from conftest import SevensTask

from harness.loop import checkpoint, trainer
from tasks import TASKS

TASKS["sevens"] = SevensTask
mode, at = sys.argv[1], int(sys.argv[2])

if mode == "kill-after":
    save = checkpoint.save

    def save_then_die(accelerator, folders, state):  # noqa: ANN001, ANN202
        path = save(accelerator, folders, state)
        if state.step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    checkpoint.save = save_then_die
elif mode == "term-at":
    rl_step = trainer.rl_step

    def step_signalled(step, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if step == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return rl_step(step, *args, **kwargs)

    trainer.rl_step = step_signalled
elif mode != "none":
    raise SystemExit(f"unknown mode {mode!r}")

if __name__ == "__main__":
    from harness.cli.main import main

    sys.argv = ["harness", *sys.argv[3:]]
    main()
