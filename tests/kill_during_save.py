#!/usr/bin/env python
"""``python tests/kill_during_save.py N <tdfusion train arguments>``: train, and die by
SIGKILL halfway through writing the N-th checkpoint file.

A fault of the tests, not of the toolkit: it reaches the trainer through the callback hook
every checkpoint write passes (:meth:`tdfusion.training.callbacks.Callback.on_checkpoint_write`).
"""
from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import torch

from tdfusion.checkpoint import FORMAT, VERSION
from tdfusion.cli import main
from tdfusion.io import atomic_write
from tdfusion.training import trainer
from tdfusion.training.callbacks import Callback


class KillDuringSave(Callback):
    """Simulate a SIGKILL during the ``n``-th checkpoint write: half the bytes reach the
    temporary file, then the process dies before the rename (no cleanup can run)."""

    def __init__(self, n: int):
        self.n, self.writes = n, 0

    def on_checkpoint_write(self, trainer, ckpt: dict, path: Path) -> None:
        self.writes += 1
        if self.writes != self.n:
            return
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "version": VERSION, **ckpt}, buffer)  # save_checkpoint's payload
        data = buffer.getvalue()
        with atomic_write(path) as fh:
            fh.write(data[:len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    # Every trainer the command builds gets the fault among its default callbacks.
    defaults = trainer.default_callbacks
    trainer.default_callbacks = lambda: [*defaults(), KillDuringSave(int(sys.argv[1]))]
    sys.exit(main(["train", *sys.argv[2:]]))
