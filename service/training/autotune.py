"""cuDNN autotuning for the one shape that pays for it: the full training batch.

With ``cudnn.benchmark`` on, cuDNN times its algorithms for every new input shape and keeps the
fastest. On an H200 (bench/gpu_checks.sh, service stage, 10-epoch jobs) that made the 224-px
nets' epochs 15-20% faster than cuDNN's heuristics (VGG 3.57 s against 4.31 s), but epoch 1
cost 5-7 s more, because every shape was tuned: the full batch, the short last batch and the
evaluation batches with their remainders. Only the full batch recurs often enough to repay its
tuning, so only its steps run with ``benchmark`` on; every other convolution uses the
heuristics, which pick at once.
"""

from __future__ import annotations

import torch

from service.training.steps import EagerSteps, Objective


class FullBatchAutotunedSteps(EagerSteps):
    """EagerSteps whose full batches (``batch_size`` examples) let cuDNN autotune."""

    def __init__(
        self,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        batch_size: int,
    ) -> None:
        super().__init__(objective, optimizer, device)
        self.batch_size = batch_size

    def step(self, batch: torch.Tensor) -> None:
        # The flag is read when each convolution runs, forward and backward: it must hold for
        # the whole step, and be off again before anything else (evaluation) runs.
        torch.backends.cudnn.benchmark = len(batch) == self.batch_size
        try:
            super().step(batch)
        finally:
            torch.backends.cudnn.benchmark = False
