"""torch.compile for the training forward of the 224-px nets, where it pays for its compile time.

Much of a 224-px step is not convolution: max-pool backward, bias gradients, ReLU and dropout
run as separate kernels, which Inductor fuses. Measured on an H200 through the service
(bench/gpu_checks.sh, `service` and `compiled` stages; 224 px, batch 128, 10 epochs of 54,000
examples), against eager epochs of 3.57 s (VGG) and 2.05 s (AlexNet) with cuDNN autotuning:

- VGG: 2.78 s per epoch compiled, after about 14 s of compiling in epoch 1;
- AlexNet: 1.99 s, after about 20 s: it never pays back;
- NiN: 2.27 s against 2.41 s, after about 16 s; and its one compiled job stalled at 0.47 test
  accuracy where eager ones reached 0.84-0.87. NiN without batch norm is unstable in eager
  runs too (a val_acc of 0.30 at epoch 5 in one), so one run does not convict the compiler,
  but NiN is not compiled by default until that is understood.

So by default only VGG compiles, and only when its expected saving is twice the compile time
(``worth_compiling``): about 36 epochs at 224 px. Only full training batches go through the
compiled forward: the short last batch and evaluation run eagerly, so that no other shape is
compiled (each costs seconds). The module itself is unchanged: its state_dict, checkpoints and
exports are as before.

TRAINSERVE_COMPILE: ``auto`` (default) as above; ``1`` compiles every eligible job (a conv
net, not data-parallel, on any device); ``0`` never.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from torch import nn

from service.training.precision import FALSE_WORDS, TRUE_WORDS

log = logging.getLogger(__name__)

ENV_SWITCH = "TRAINSERVE_COMPILE"
# Per model: seconds that compiling saves per training example and input pixel, and seconds of
# compiling (H200, see above: VGG (3.57 - 2.78) s / (54,000 x 224^2), and 14 s).
SAVED_S_PER_EXAMPLE_PIXEL = {"vgg": 2.9e-10}
COMPILE_COST_S = {"vgg": 14.0}
MARGIN = 2.0  # compile only when the expected saving is this many times the cost


def parse_compile(value: str) -> str:
    """``auto``, ``on`` or ``off``; ValueError for anything else."""
    word = value.strip().lower()
    if word in ("", "auto"):
        return "auto"
    if word in TRUE_WORDS:
        return "on"
    if word in FALSE_WORDS:
        return "off"
    raise ValueError(f"must be auto, 1 or 0, not {value!r}")


def compile_mode() -> str:
    return parse_compile(os.environ.get(ENV_SWITCH, "auto"))


def expected_saving_s(model: str, examples_trained: int, side: int) -> float:
    """Seconds that compiling ``model`` would save over ``examples_trained`` at ``side`` px."""
    return SAVED_S_PER_EXAMPLE_PIXEL.get(model, 0.0) * examples_trained * side * side


def worth_compiling(
    device: torch.device,
    model: str,
    convolutional: bool,
    side: int,
    examples_trained: int,
    data_parallel: bool,
) -> bool:
    """Whether this job's training forward should be compiled (see the module docstring)."""
    mode = compile_mode()
    if mode == "off" or not convolutional or data_parallel:
        return False
    if mode == "on":
        return True
    return (
        device.type == "cuda"
        and model in COMPILE_COST_S
        and expected_saving_s(model, examples_trained, side) >= MARGIN * COMPILE_COST_S[model]
    )


def full_batches_compiled(
    model: nn.Module, batch_size: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward, compiled for batches of ``batch_size`` and eager for any other."""
    compiled = torch.compile(model, dynamic=False)
    first = True

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal first
        if len(x) != batch_size:
            return model(x)
        if first:  # only now: a run with no full batch compiles nothing
            log.info("compiling the training forward for batches of %d (torch.compile)", batch_size)
            first = False
        return compiled(x)

    return forward
