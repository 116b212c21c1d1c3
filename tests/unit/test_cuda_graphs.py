"""Whole-step CUDA graphs (service.training.graphed): on only for CUDA, and where on, the same
training as eager steps."""

from __future__ import annotations

import pytest
import torch

from service.training import data
from service.training.augment import augment_batch
from service.training.config import TrainConfig
from service.training.graphed import ENV_SWITCH, WARMUP_STEPS, GraphedSteps, cuda_graphs_enabled
from service.training.loop import prepare_classifier, train
from service.training.steps import EagerSteps, run_epoch

no_cuda = not torch.cuda.is_available()


def synthetic(model: str, **overrides) -> TrainConfig:
    return TrainConfig(**{"model": model, "dataset": "synthetic", "epochs": 2, **overrides})


@pytest.mark.parametrize(
    ("value", "expected"), [(None, True), ("1", True), ("0", False), ("off", False)]
)
def test_graphs_are_on_for_cuda_unless_switched_off(
    value: str | None, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv(ENV_SWITCH, raising=False)
    else:
        monkeypatch.setenv(ENV_SWITCH, value)
    assert cuda_graphs_enabled(torch.device("cuda"), "lenet", 28) is expected
    assert cuda_graphs_enabled(torch.device("cpu"), "lenet", 28) is False


@pytest.mark.parametrize(
    ("model", "side", "expected"),
    [("softmax", 28, True), ("mlp", 28, True), ("lenet", 28, True), ("lenet", 224, False),
     ("alexnet", 224, False), ("vgg", 64, False), ("nin", 224, False)],
)  # fmt: skip
def test_only_the_launch_bound_nets_are_graphed(
    model: str, side: int, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 224-px nets are GPU-bound: graphs would not pay (see graphed.GRAPHED_MODELS).
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    assert cuda_graphs_enabled(torch.device("cuda:0"), model, side) is expected


def test_cpu_runs_step_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SWITCH, "1")
    dataset = data.load_dataset("synthetic", None, None)
    x, y = dataset.train_images[:64], dataset.train_labels[:64]
    run = prepare_classifier(synthetic("mlp"), x, y, 10, torch.device("cpu"))
    assert run.graphs is False
    steps = run.steps(32)
    assert type(steps) is EagerSteps


def _epochs(model: str, optimizer: str, graphs: bool, monkeypatch, epochs: int = 2):
    """(classifier, steps, per-epoch loss sums) of a short run on CUDA with graphs on/off."""
    monkeypatch.setenv(ENV_SWITCH, "1" if graphs else "0")
    lr = {"sgd": 0.1, "momentum": 0.05, "adam": 0.003}[optimizer]
    config = synthetic(
        model, lr=lr, optimizer=optimizer, batch_size=32, train_examples=300, dropout=0.0
    )
    dataset = data.load_dataset("synthetic", None, None)
    device = torch.device("cuda")
    x, y = dataset.train_images[:300].to(device), dataset.train_labels[:300].to(device)
    run = prepare_classifier(config, x, y, 10, device)
    assert run.graphs is graphs
    steps = run.steps(config.batch_size)
    losses = []
    for epoch in range(1, epochs + 1):
        sums = run_epoch(
            run.objective, run.model, run.optimizer, n_train=300, config=config,
            generator=run.generator, device=device, epoch=epoch, steps=steps,
        )  # fmt: skip
        losses.append(float(sums.loss_sum) / sums.examples)
    return run, steps, losses


@pytest.mark.gpu
@pytest.mark.skipif(no_cuda, reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("model", "optimizer"), [("mlp", "sgd"), ("lenet", "momentum"), ("lenet", "adam")]
)
def test_graph_replays_train_like_eager_steps(
    model: str, optimizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    graphed_run, graphed, graphed_losses = _epochs(model, optimizer, True, monkeypatch)
    eager_run, _, eager_losses = _epochs(model, optimizer, False, monkeypatch)
    assert isinstance(graphed, GraphedSteps) and not graphed.failed
    # 300 examples in batches of 32: 9 full batches and one of 12 per epoch; the first
    # WARMUP_STEPS full batches run eagerly, the rest are replays (the capture's included).
    assert graphed.replays == 2 * 9 - WARMUP_STEPS
    assert graphed_losses == pytest.approx(eager_losses, rel=2e-2)
    assert graphed_losses[1] < graphed_losses[0]
    for (name, a), b in zip(
        graphed_run.model.state_dict().items(), eager_run.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3, msg=name)
    initial = prepare_classifier(
        synthetic(model, optimizer=optimizer), torch.zeros(1, 28, 28, dtype=torch.uint8),
        torch.zeros(1, dtype=torch.long), 10, torch.device("cpu"),
    ).model.state_dict()  # fmt: skip
    moved = [
        not torch.allclose(initial[k], v.cpu()) for k, v in graphed_run.model.state_dict().items()
    ]
    assert all(moved)


@pytest.mark.gpu
@pytest.mark.skipif(no_cuda, reason="needs a CUDA device")
def test_dropout_draws_new_masks_on_each_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    # The MLP with dropout 0.5 through train(): graphs on, and it still learns; a replay that
    # reused one mask would still learn, so the masks are compared directly below.
    monkeypatch.setenv(ENV_SWITCH, "1")
    result = train(
        synthetic("mlp", dropout=0.5, batch_size=32, lr=0.1, train_examples=600, epochs=3),
        device="cuda",
    )
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.test_acc > 0.3

    masks = []
    device = torch.device("cuda")
    static = torch.ones(4096, device=device)
    out = torch.empty_like(static)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out.copy_(torch.nn.functional.dropout(static, 0.5, training=True))
    for _ in range(2):
        graph.replay()
        masks.append(out.clone())
    assert not torch.equal(masks[0], masks[1])


@pytest.mark.gpu
@pytest.mark.skipif(no_cuda, reason="needs a CUDA device")
def test_augmentation_draws_anew_on_each_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    # As dropout above: a graphed run with flips and shifts learns, and two replays of the
    # captured augmentation change the same batch differently.
    monkeypatch.setenv(ENV_SWITCH, "1")
    result = train(
        synthetic("mlp", augment="flip_crop", batch_size=32, lr=0.1, train_examples=600,
                  epochs=3),
        device="cuda",
    )  # fmt: skip
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.test_acc > 0.3

    device = torch.device("cuda")
    static = torch.randint(1, 256, (256, 28, 28), dtype=torch.uint8, device=device)
    out = torch.empty_like(static)
    augment_batch(static, "flip_crop")  # kernels loaded before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out.copy_(augment_batch(static, "flip_crop"))
    batches = []
    for _ in range(2):
        graph.replay()
        batches.append(out.clone())
    assert not torch.equal(batches[0], batches[1])
    assert not torch.equal(batches[0], static)
