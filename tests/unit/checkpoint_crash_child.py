"""Runs in a child process: train with checkpoints, dying between a checkpoint's fsync and its
rename (epoch 2), as a power cut or kill -9 would."""

from __future__ import annotations

import os
from pathlib import Path

from service.training.config import TrainConfig


def train_and_die_before_second_rename(config: dict, checkpoint: str) -> None:
    import service.training.loop as loop

    real_replace = os.replace
    calls = {"n": 0}

    def replace_then_die(src: str, dst: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            os._exit(42)  # no cleanup, no except blocks: the temp file stays behind
        real_replace(src, dst)

    loop.os.replace = replace_then_die  # type: ignore[assignment]
    loop.train(TrainConfig(**config), checkpoint_path=Path(checkpoint))
