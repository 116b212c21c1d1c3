"""Average pooling computed as a depthwise convolution, for the CPU.

On a CPU, ``avg_pool2d`` over few channels (LeNet's 6 and 16) runs a scalar loop per output
pixel, forward and backward: on the 2-core machine this project is developed on it took about a
third of a LeNet training step. Here the forward is a grouped convolution with fixed weights
1/(kh·kw), which goes through oneDNN's vectorised kernels, in the input's precision (bf16 under
autocast). The backward is written out, each gradient repeated over its window: the
convolution's own backward is slow in bf16 (a 2x2 depthwise one took 15 ms at LeNet's size).
Only non-overlapping windows are swapped, for which that is exactly avg_pool2d's backward.

The swap changes how the net computes, not what: no parameters or buffers are added (the
weight is a cached constant), so state_dict and checkpoints are the same either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _WindowMean(torch.autograd.Function):
    """Mean over non-overlapping windows: forward a depthwise convolution, backward each
    output's gradient spread evenly over its window (what avg_pool2d's backward computes)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, window: tuple[int, int]):
        ctx.window, ctx.input_shape, ctx.input_dtype = window, x.shape, x.dtype
        ctx.channels_last = _is_channels_last(x)
        return F.conv2d(x, weight.to(x.dtype), stride=window, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kh, kw), (height, width) = ctx.window, ctx.input_shape[-2:]
        h, w = grad.shape[-2:]
        # Each gradient repeated over its window. repeat_interleave was the fastest way tried
        # on a CPU (against a broadcasting copy, nearest upsampling and a transposed conv);
        # in channels_last it repeats whole pixels (NHWC rows), and the result stays so.
        scaled = grad.to(ctx.input_dtype) * (1.0 / (kh * kw))
        if ctx.channels_last:
            # Columns first, on the smaller tensor: that copy moves C values at a time, the rows'
            # copy whole rows of pixels.
            nhwc = scaled.permute(0, 2, 3, 1).repeat_interleave(kw, 2).repeat_interleave(kh, 1)
            spread = nhwc.permute(0, 3, 1, 2)
        else:
            spread = scaled.repeat_interleave(kh, 2).repeat_interleave(kw, 3)
        if (h * kh, w * kw) != (height, width):  # rows and columns no window covers: 0
            spread = F.pad(spread, (0, width - w * kw, 0, height - h * kh))
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        return spread.contiguous(memory_format=layout), None, None


def _is_channels_last(x: torch.Tensor) -> bool:
    """Stored NHWC (a tensor that is both, one pixel or one channel, counts as NCHW)."""
    return (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


class AvgPool2dAsConv(nn.Module):
    """``nn.AvgPool2d`` over non-overlapping windows (stride = kernel size, no padding, no
    ceil_mode), computed as described in the module's docstring."""

    def __init__(self, window: tuple[int, int]) -> None:
        super().__init__()
        self.window = window
        self._weights: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _weight(self, channels: int, device: torch.device) -> torch.Tensor:
        key = (channels, device)
        if key not in self._weights:
            kh, kw = self.window
            self._weights[key] = torch.full((channels, 1, kh, kw), 1.0 / (kh * kw), device=device)
        return self._weights[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _WindowMean.apply(x, self._weight(x.shape[1], x.device), self.window)

    def extra_repr(self) -> str:
        return f"kernel_size={self.window}, stride={self.window}"


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _convertible(pool: nn.AvgPool2d) -> bool:
    """Whether the windows are whole, inside the input and apart, each divided by its area."""
    return (
        _pair(pool.kernel_size) == _pair(pool.stride)
        and _pair(pool.padding) == (0, 0)
        and not pool.ceil_mode
        and pool.divisor_override is None
    )


def avg_pools_as_convs(model: nn.Module) -> int:
    """Replace, in place, every AvgPool2d of ``model`` that a depthwise convolution computes
    exactly; returns how many were replaced."""
    replaced = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.AvgPool2d) and _convertible(child):
                swap = AvgPool2dAsConv(_pair(child.kernel_size))
                setattr(parent, name, swap)
                replaced += 1
    return replaced
