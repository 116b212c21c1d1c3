"""Average pooling as a depthwise convolution computes what nn.AvgPool2d does, gradients too."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models.pooling import AvgPool2dAsConv, avg_pools_as_convs


@pytest.mark.parametrize(
    ("kernel", "stride", "shape"),
    [(2, 2, (4, 6, 28, 28)), (3, 3, (2, 16, 11, 10)), ((2, 3), (2, 3), (3, 5, 10, 13))],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_values_and_gradients_as_avg_pool(kernel, stride, shape, channels_last):
    pool = nn.AvgPool2d(kernel, stride)
    swap = nn.Sequential(copy.deepcopy(pool))
    assert avg_pools_as_convs(swap) == 1
    assert isinstance(swap[0], AvgPool2dAsConv)
    x = torch.randn(shape, dtype=torch.float64).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = pool(a), swap(b)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-6)
    assert b.grad.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize(
    "pool",
    [
        nn.AvgPool2d(3, 2),  # overlapping windows
        nn.AvgPool2d(2, 2, padding=1),
        nn.AvgPool2d(2, 2, ceil_mode=True),
        nn.AvgPool2d(2, 2, divisor_override=3),
    ],
)
def test_poolings_a_convolution_would_compute_differently_are_kept(pool):
    net = nn.Sequential(pool)
    assert avg_pools_as_convs(net) == 0
    assert net[0] is pool


def test_lenet_trains_the_same_with_either_pooling():
    """Same state_dict keys, same outputs, and the same weights after SGD steps under the
    bf16 autocast a CPU training step may use (up to bf16's rounding)."""
    torch.manual_seed(0)
    plain = models.build("lenet").to(memory_format=torch.channels_last)
    swapped = copy.deepcopy(plain)
    assert avg_pools_as_convs(swapped) == 2
    assert swapped.state_dict().keys() == plain.state_dict().keys()
    x = torch.rand(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))
    torch.testing.assert_close(swapped(x), plain(x), rtol=1e-5, atol=1e-5)
    for bf16 in (False, True):
        nets = [copy.deepcopy(plain), copy.deepcopy(swapped)]
        for net in nets:
            opt = torch.optim.SGD(net.parameters(), lr=0.9)
            for _ in range(3):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        tol = 2e-2 if bf16 else 1e-5
        for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=tol, atol=tol)
