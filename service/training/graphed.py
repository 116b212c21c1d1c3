"""Whole-step CUDA graphs: capture forward, backward, optimizer step and metric sums once, then
replay them for every full batch.

Small networks (softmax regression, the MLP, LeNet) are launch-bound on a GPU: a step is some
hundred tiny kernels, and the host takes longer to issue them one by one than the GPU takes to
run them. A replay issues the whole step at once. Everything the step touches keeps its
address between replays: the batch's indices are copied into one static tensor, the weights,
gradients, optimizer state and the metric sums are updated in place, and dropout draws from
the generator the graph advances on each replay. Batches of another size (a short last batch)
and the first few steps (cuDNN picks its algorithms, the optimizer makes its state) run
eagerly. If capture fails, the run goes on eagerly and says so in the log.

Only the launch-bound nets are graphed (``GRAPHED_MODELS``); TRAINSERVE_CUDA_GRAPHS=0 turns graphs
off for them too.
"""

from __future__ import annotations

import logging
import os

import torch

from service.training.steps import EagerSteps, Objective

log = logging.getLogger(__name__)

ENV_SWITCH = "TRAINSERVE_CUDA_GRAPHS"
WARMUP_STEPS = 3  # eager steps on a side stream before capture, as the CUDA-graph docs ask
# Only the small nets are graphed. On an H100 (bench/train.py --eager-too, one epoch) graphs
# made the MLP 7.0x, LeNet 1.8x and softmax regression 1.2x faster, although the graphed run
# went first and so also paid the process's cuDNN/cuBLAS warm-up. AlexNet, VGG and NiN at
# 224 px are bound by the GPU, not by launches (the profiler puts device time at 94-98% of an
# eager step's wall time: bench/profile_step.py), so graphs cannot gain them much, and their
# capture costs memory.
GRAPHED_MODELS = frozenset({"softmax", "mlp", "lenet"})
GRAPHED_MAX_SIDE = 64


def cuda_graphs_enabled(device: torch.device, model: str, side: int) -> bool:
    """Graphs for the launch-bound nets on CUDA devices, unless TRAINSERVE_CUDA_GRAPHS=0."""
    if device.type != "cuda" or model not in GRAPHED_MODELS or side > GRAPHED_MAX_SIDE:
        return False
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in {"0", "false", "no", "off"}


class GraphedSteps(EagerSteps):
    """EagerSteps whose full batches (``batch_size`` examples) replay one captured graph."""

    def __init__(
        self,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        batch_size: int,
    ) -> None:
        super().__init__(objective, optimizer, device)
        self.device = device
        self.batch_size = batch_size
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: torch.Tensor | None = None
        self.warmed_up = 0
        self.failed = False
        self.replays = 0

    def __call__(self, batch: torch.Tensor) -> None:
        if self.failed or len(batch) != self.batch_size:
            self.step(batch)
        elif self.graph is not None:
            self.static_batch.copy_(batch)
            self.graph.replay()
            self.replays += 1
        elif self.warmed_up < WARMUP_STEPS:
            self._side_stream_step(batch)
            self.warmed_up += 1
        else:
            self._capture_and_run(batch)

    def _side_stream_step(self, batch: torch.Tensor) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.step(batch)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture_and_run(self, batch: torch.Tensor) -> None:
        self.static_batch = batch.clone()
        # Gradients made during capture live in the graph's memory pool; each replay rewrites
        # them before its optimizer step reads them.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step(self.static_batch)
        except Exception as exc:  # an op that cannot be captured: stay eager, and say so
            log.warning("CUDA graph capture failed (%s); training on without graphs", exc)
            self.failed = True
            self.static_batch = None
            self.step(batch)  # capture ran nothing, so this batch still needs its step
            return
        self.graph = graph
        graph.replay()  # capture records the step without running it
        self.replays += 1
