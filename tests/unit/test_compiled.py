"""torch.compile of the training forward (service.training.compiled): when a job compiles, and
that the compiled forward computes what the eager one does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.training.compiled import ENV_SWITCH, full_batches_compiled, worth_compiling

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
EPOCH = 54_000  # Fashion-MNIST's training examples less the validation tenth


def worth(device=CUDA, model="vgg", side=224, epochs=100, convolutional=True, ddp=False) -> bool:
    return worth_compiling(device, model, convolutional, side, epochs * EPOCH, ddp)


def test_auto_compiles_only_long_vgg_jobs_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    assert worth(epochs=100)
    assert not worth(epochs=10)  # the course's 10 epochs save less than twice the compile time
    assert not worth(side=112, epochs=100)  # a quarter of the pixels, a quarter of the saving
    assert not worth(device=CPU)
    assert not worth(model="alexnet")  # measured: compiling never paid back
    assert not worth(model="nin")
    assert not worth(ddp=True)


@pytest.mark.parametrize("value", ["1", "on", "true"])
def test_switched_on_compiles_every_conv_net_on_any_device(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_SWITCH, value)
    assert worth(device=CPU, model="lenet", side=28, epochs=1)
    assert not worth(model="mlp", convolutional=False)
    assert not worth(ddp=True)


@pytest.mark.parametrize("value", ["0", "off"])
def test_switched_off_never_compiles(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SWITCH, value)
    assert not worth(epochs=10_000)


def test_full_batches_run_compiled_and_others_eager_with_the_same_values() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3)
    )
    torch._dynamo.utils.counters.clear()
    forward = full_batches_compiled(net, batch_size=8)
    for n in (8, 5):  # a full batch, then a short one
        x = torch.randn(n, 1, 8, 8)
        expected = net(x)
        (grad_expected,) = torch.autograd.grad(expected.square().sum(), net[0].weight)
        out = forward(x)
        (grad,) = torch.autograd.grad(out.square().sum(), net[0].weight)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grad, grad_expected, rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["frames"]["ok"] == 1, "one shape compiled, the full one"
