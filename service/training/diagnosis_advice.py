"""Advice for a diagnosis (service/training/diagnosis.py) that fits the job: the curves cannot
show its knobs, so RunFacts carries them (run_facts(config)), and the advice names only the
causes that apply: a penalty only when one is set, dropout only where the model has it, dead
ReLUs only for ReLU nets. Without them it stays general.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import models

STEPS_TOO_LARGE = "lower the learning rate, or the penalty (l1, weight decay) if one is set"
MORE_CAPACITY = "train longer, raise the learning rate or use a larger model"
# The hidden units of these are ReLUs (they can die at too high an lr); LeNet's only with
# activation relu (the course's is sigmoid); softmax and linear have none.
RELU_MODELS = frozenset({"mlp", "alexnet", "vgg", "nin"})


@dataclass(frozen=True)
class RunFacts:
    """The job's knobs the curves cannot show, for advice that fits (None: not known)."""

    lr: float | None = None
    weight_decay: float = 0.0
    l1: float = 0.0
    dropout: float = 0.0
    takes_dropout: bool | None = None  # the model has dropout layers (softmax, linear: none)
    relu: bool | None = None  # its hidden units are ReLUs
    batch_size: int | None = None  # with loss_reduction sum: each step is this times the mean's


def run_facts(config: Any) -> RunFacts:
    """RunFacts of a TrainConfig-like job (model, lr, weight_decay, l1, dropout, activation)."""
    try:
        takes_dropout: bool | None = models.get_spec(config.model).has_dropout
    except KeyError:  # an unknown model: say nothing of its layers
        takes_dropout = None
    if config.model == "lenet":
        relu: bool | None = (getattr(config, "activation", None) or "sigmoid") == "relu"
    else:
        relu = config.model in RELU_MODELS if takes_dropout is not None else None
    return RunFacts(
        lr=config.lr,
        weight_decay=config.weight_decay,
        l1=config.l1,
        dropout=config.dropout,
        takes_dropout=takes_dropout,
        relu=relu,
        batch_size=config.batch_size if getattr(config, "loss_reduction", "") == "sum" else None,
    )


def _or_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _penalty(facts: RunFacts) -> str:
    """The penalties the job set, e.g. 'weight decay 5, l1 0.01' ('' for none)."""
    set_ = [(name, v) for name, v in (("weight decay", facts.weight_decay), ("l1", facts.l1))]
    return ", ".join(f"{name} {v:g}" for name, v in set_ if v > 0)


def _at_lr(facts: RunFacts) -> str:
    return f" (now {facts.lr:g})" if facts.lr is not None else ""


def _or_mean_reduction(facts: RunFacts) -> str:
    """Where steps are too large and the loss is summed: the likeliest cause, named."""
    if facts.batch_size is None:
        return ""
    return f", or use loss_reduction mean (sum makes each step {facts.batch_size} times the mean's)"


def steps_too_large(facts: RunFacts | None) -> str:
    if facts is None:
        return STEPS_TOO_LARGE
    penalty = _penalty(facts)
    advice = f"lower the learning rate{_at_lr(facts)}{_or_mean_reduction(facts)}"
    return advice + (f", or the penalty ({penalty})" if penalty else "")


def stuck_advice(facts: RunFacts | None) -> str:
    """At ln(classes) every class scores alike: what can hold a net there."""
    if facts is None:
        return (
            "either the learning rate is too low (or the run too short) to leave the start, "
            "or so high that it killed the units (dead ReLUs); try lr x10 and x0.1, or the "
            "lr range test (kind lr_find)"
        )
    penalty = _penalty(facts)
    high = "so high that it killed the units (dead ReLUs)" if facts.relu else "too high"
    lr = f"the learning rate{_at_lr(facts)}"
    causes = f"{lr} is too low (or the run too short) to leave the start, or {high}"
    if penalty:
        causes = f"the penalty ({penalty}) holds the weights near zero: lower it; or {causes}"
    else:
        causes = "either " + causes
    return causes + "; try lr x10 and x0.1, or the lr range test (kind lr_find)"


def fit_advice(facts: RunFacts | None, overshoot: float | None, default: str) -> str:
    """How to fit the training data better: what the job's knobs allow. ``overshoot``: the
    training loss's largest rise from one of the last epochs to the next, where it rose."""
    if facts is None:
        return default
    fixes = []
    penalty = _penalty(facts)
    if penalty:
        fixes.append(f"a weaker penalty ({penalty})")
    if facts.dropout > 0:
        fixes.append(f"less dropout (now {facts.dropout:g})")
    if overshoot is not None:
        fixes.append(
            f"a lower learning rate{_at_lr(facts)}, as the training loss rose "
            f"{100 * overshoot:.0f}% from one of the last epochs to the next (the steps "
            "overshoot),"
        )
        fixes.append("a larger model")
    else:
        fixes += [f"a higher learning rate{_at_lr(facts)}", "a longer run", "a larger model"]
    return _or_list(fixes)


def overfit_advice(facts: RunFacts | None, rose_after: int | None) -> str:
    """What narrows the gap, of what the job can still change; ``rose_after``: the epoch of
    the best validation loss, where it has risen well above it since."""
    fixes = ["more data"]
    if facts is not None and facts.weight_decay > 0:
        fixes.append(f"stronger weight decay (now {facts.weight_decay:g})")
    else:
        fixes.append("weight decay")
    if facts is None or facts.takes_dropout is None:
        fixes.append("dropout where the model has it")
    elif facts.takes_dropout:
        fixes.append(f"more dropout (now {facts.dropout:g})" if facts.dropout > 0 else "dropout")
    if rose_after is not None:
        fixes.append(f"fewer epochs (validation was best at epoch {rose_after})")
    return _or_list(fixes)
