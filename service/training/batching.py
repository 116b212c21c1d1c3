"""One epoch's batches under the course's three last-batch policies: keep, drop, pad.

A plan is an index tensor (the shuffled order, plus any padding samples) and the [start, end)
bounds of each batch in it, so the loop moves one index tensor to the device per epoch.
"""

from __future__ import annotations

import torch


class EmptyEpochError(ValueError):
    """The policy leaves no batch at all (drop with fewer examples than one batch)."""


def _keep_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch; the last partial batch is kept, but a lone trailing example
    is folded into the previous batch (BatchNorm cannot train on a batch of one)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


def plan_epoch(
    order: torch.Tensor, batch_size: int, policy: str, generator: torch.Generator
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(indices, bounds) for one epoch over the shuffled `order` (CPU int64, length n).

    keep: every example once, the last batch short; drop: only full batches; pad: the short
    last batch is filled with examples drawn (without replacement) from the other batches.
    Only `pad` draws from `generator`, so keep and drop shuffle exactly as before.
    """
    n = len(order)
    if policy == "keep":
        return order, _keep_bounds(n, batch_size)
    full = n // batch_size
    bounds = [(i * batch_size, (i + 1) * batch_size) for i in range(full)]
    short = n - full * batch_size
    if policy == "drop":
        if not bounds:
            raise EmptyEpochError(
                f"last_batch 'drop' with batch_size {batch_size} and {n} training examples "
                "leaves no batch; use a smaller batch_size or last_batch 'keep' or 'pad'"
            )
        return order, bounds
    if policy == "pad":
        if short == 0:
            return order, bounds
        rest = order[: full * batch_size]
        need = batch_size - short
        if len(rest) >= need:
            fill = rest[torch.randperm(len(rest), generator=generator)[:need]]
        else:  # fewer examples than one batch: draw the fill with replacement
            fill = order[torch.randint(n, (need,), generator=generator)]
        return torch.cat([order, fill]), [*bounds, (full * batch_size, (full + 1) * batch_size)]
    raise ValueError(f"unknown last_batch policy {policy!r} (known: keep, drop, pad)")
