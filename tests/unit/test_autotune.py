"""cuDNN autotuning for full training batches only (service.training.autotune)."""

from __future__ import annotations

import pytest
import torch

from service.training.autotune import FullBatchAutotunedSteps
from service.training.steps import Shard, StepOutput


def steps_recording_the_flag(seen: list[bool], fail: bool = False) -> FullBatchAutotunedSteps:
    weight = torch.zeros(3, requires_grad=True)

    def objective(idx: torch.Tensor) -> StepOutput:
        seen.append(torch.backends.cudnn.benchmark)
        if fail:
            raise RuntimeError("the step broke")
        loss = (weight * idx.float().mean()).sum()
        return StepOutput(loss, loss.detach(), None)

    optimizer = torch.optim.SGD([weight], lr=0.1)
    return FullBatchAutotunedSteps(objective, optimizer, torch.device("cpu"), batch_size=4)


def test_only_full_batches_autotune_and_the_flag_is_off_after_each_step() -> None:
    seen: list[bool] = []
    steps = steps_recording_the_flag(seen)
    for n in (4, 4, 3):
        steps(torch.arange(n))
        assert torch.backends.cudnn.benchmark is False  # evaluation runs on the heuristics
    assert seen == [True, True, False]


def test_the_flag_is_off_after_a_step_that_raised() -> None:
    steps = steps_recording_the_flag([], fail=True)
    with pytest.raises(RuntimeError, match="the step broke"):
        steps(torch.arange(4))
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("batch_size", [7, 8, 9])
def test_a_ranks_full_batch_is_its_slice_of_the_global_one(batch_size: int) -> None:
    """A data-parallel rank autotunes its own full batch: the slice run_epoch gives it."""
    for rank in range(3):
        local = len(torch.arange(batch_size)[rank::3])  # as run_epoch slices the global batch
        assert Shard(rank, 3, torch.device("cpu")).local_size(batch_size) == local
