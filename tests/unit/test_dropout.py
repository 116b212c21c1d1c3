"""Dropout drawn with torch.rand behaves as nn.Dropout: same keep rate, scale and gradient."""

import copy

import pytest
import torch
from torch import nn

import models
from models.dropout import RandDropout, dropouts_drawn_by_rand


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keeps_each_unit_with_probability_1_minus_p_and_scales_it(p):
    torch.manual_seed(0)
    x = torch.rand(200_000) + 0.5  # no zeros: a zero output is a dropped unit
    x.requires_grad_()
    for layer in (RandDropout(p), nn.Dropout(p)):
        y = layer.train()(x)
        kept = y != 0
        rate = kept.float().mean().item()
        assert abs(rate - (1 - p)) < 0.005, (type(layer).__name__, rate)
        torch.testing.assert_close(y[kept], x[kept] / (1 - p))
        (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(grad, kept.float() / (1 - p))


def test_off_in_eval_mode_at_p_0_and_everything_dropped_at_p_1():
    x = torch.randn(64, 32)
    assert RandDropout(0.5).eval()(x) is x
    assert RandDropout(0.0).train()(x) is x
    assert torch.count_nonzero(RandDropout(1.0).train()(x)) == 0


def test_masks_follow_the_seed():
    x = torch.ones(1000)
    layer = RandDropout(0.5).train()
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    assert torch.equal(layer(x), first)
    assert not torch.equal(layer(x), first)


def test_swap_keeps_the_layout_and_what_finds_dropout_layers():
    torch.manual_seed(0)
    plain = models.build("mlp", dropout=0.3)
    swapped = copy.deepcopy(plain)
    assert dropouts_drawn_by_rand(swapped) == 2
    assert swapped.state_dict().keys() == plain.state_dict().keys()
    layers = models.dropout_layers(swapped)
    assert len(layers) == 2 and all(isinstance(m, RandDropout) and m.p == 0.3 for m in layers)
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(swapped.eval()(x), plain.eval()(x))
    assert dropouts_drawn_by_rand(nn.Sequential(nn.Dropout(0.5, inplace=True))) == 0
