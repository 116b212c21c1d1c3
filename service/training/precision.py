"""The precision a training step runs in: bf16 autocast on a GPU (but LeNet at its own small
sides), and on a CPU whose cores multiply bf16 matrices natively (Intel AMX), fp32 otherwise.

Weights, optimizer state and checkpoints stay fp32 either way (autocast casts the inputs of
matmuls and convolutions, not the parameters), so a model trained under bf16 is saved and served
exactly like one trained in fp32.

On a CPU only the convolutional nets use bf16. On the 2-core AMX machine this project is
developed on, it made a training epoch of LeNet 1.2-1.5x faster, and at 224 px AlexNet 3.5x,
NiN 2.8x and VGG 2.3x, with the same test accuracy after 10 LeNet epochs (0.805 and 0.820 for two
seeds, in both precisions). The MLP gained only 1.2x, and its first layer's gradient moved 4-5%
from fp32's (LeNet's 0.5%); softmax regression, one matmul, got 14% slower. Without AMX, bf16
is not expected to pay (oneDNN then computes it with AVX-512 instructions; not measured here),
hence ``auto``.

On a GPU, LeNet at 28 px is bound by launching its kernels, not by its 6- and 16-channel
convolutions: its CUDA-graphed step took 1.20 ms at batch 2048 in fp32 with NCHW tensors, against
1.51 ms under bf16 autocast with channels_last, and 0.38 against 0.40 ms at batch 256 (H200,
bench/RESULTS-gpu.md). So it trains in plain fp32 there. The MLP stays in bf16: in fp32 its step
was slower (0.15 against 0.12 ms at 256).

TRAINSERVE_CPU_BF16 (read by each job process): ``auto`` (default: on where the CPU has AMX),
``1`` on, ``0`` off.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from functools import lru_cache

import torch

ENV_SWITCH = "TRAINSERVE_CPU_BF16"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
FP32_ON_GPU = frozenset({"lenet"})
FP32_ON_GPU_MAX_SIDE = 64  # the sides measured (28) and graphed; larger ones are compute-bound


def parse_cpu_bf16(value: str) -> bool | None:
    """True, False, or None for ``auto``; ValueError for anything else."""
    word = value.strip().lower()
    if word in ("", "auto"):
        return None
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"must be auto, 1 or 0, not {value!r}")


@lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units); False where torch cannot tell."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a private helper: absent in some torch versions
        return False


def cpu_bf16_enabled(convolutional: bool) -> bool:
    """bf16 autocast for a CPU training step of a net (see the module's docstring)."""
    if not convolutional:
        return False
    setting = parse_cpu_bf16(os.environ.get(ENV_SWITCH, "auto"))
    return cpu_has_amx() if setting is None else setting


def plain_fp32_on_gpu(device: torch.device, model: str, side: int) -> bool:
    """Whether a run trains in fp32 with NCHW tensors on a GPU (see the module's docstring)."""
    return device.type == "cuda" and model in FP32_ON_GPU and side <= FP32_ON_GPU_MAX_SIDE


def training_autocast(
    device: torch.device, convolutional: bool, plain_fp32: bool = False
) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context for the forward passes of a run's training (and
    evaluation) steps; the choice, environment included, is made once here, not per step."""
    if plain_fp32:
        return contextlib.nullcontext
    if device.type == "cuda":
        # No weight-cast cache: CUDA graph capture needs it off, and a training step uses
        # each weight once anyway.
        return functools.partial(
            torch.autocast, device_type="cuda", dtype=torch.bfloat16, cache_enabled=False
        )
    if device.type == "cpu" and cpu_bf16_enabled(convolutional):
        return functools.partial(
            torch.autocast, device_type="cpu", dtype=torch.bfloat16, cache_enabled=False
        )
    return contextlib.nullcontext
