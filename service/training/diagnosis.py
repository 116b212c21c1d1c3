"""A short verdict on a finished run from its per-epoch curves, as the course reads them.

Training error and validation (generalisation) error tell three stories:
  overfitting   the validation loss is well above the training loss, or has turned back up
                from its best while the training loss kept falling, or (classification) the
                training accuracy is well above the validation accuracy while the model does fit
                its training data;
  underfitting  the model does not fit its own training data: the training loss is still
                falling markedly at the end (not converged: train longer, raise lr, or use a
                bigger model), or rising (the optimisation is not converging: lower lr or the
                penalty), or (classification) the model is near chance: accuracy barely above
                1 / classes, or a training loss still near (or above) ln(classes), the loss
                of a uniform guess;
  good fit      neither: the training loss has levelled off and validation follows it.

The figures compare like with like: the training loss is the data loss alone (EpochMetrics:
the l1 penalty and weight decay are not in it), as the validation loss is. But it is the mean
over the epoch's steps, with the weights moving, while validation is measured after the epoch.

Pure function of the numbers; every verdict carries the figures it was drawn from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

GAP_RATIO_OVERFIT = 1.5  # val loss above 1.5 x train loss
ACC_GAP_OVERFIT = 0.10  # train accuracy 10 points above validation accuracy
VAL_RISE_OVERFIT = 0.10  # val loss 10 % above its best epoch's
STILL_FALLING = 0.02  # train loss fell more than 2 % per epoch over the last epochs
# ... and its last epoch still brought at least 1 % of the whole run's fall. A run at its noise
# floor can fall 87 % in relative terms from epoch 2 to 3 (4e-4 to 5e-5: epoch 2's mean still
# held some of the descent) while that is 0.02 % of its fall from 1.8; a 10-epoch LeNet still
# learning brings 1-2 % in its last epoch. The same share keeps a noise-floor wobble upwards
# from counting as a rising loss.
LATE_SHARE = 0.01
TREND_EPOCHS = 3  # the window of the trend
CHANCE_MARGIN = 1.5  # train or validation accuracy below 1.5 x chance is underfitting
# A loss within 2 % of ln(classes): the network gives every class the same score, whatever the
# input. That is where a net starts, and also where a too-high lr leaves it (dead ReLUs).
UNIFORM_LOSS_MARGIN = 0.02
# A loss still within 10 % of ln(classes): the scores barely differ between classes. Softmax
# under weight decay 5 (lr 0.1) stays at 91-92 % of ln 10 with 0.14-0.24 validation accuracy;
# its training accuracy (0.45-0.6) is then the argmax of near-equal scores, not a fit.
NEAR_UNIFORM_MARGIN = 0.10
STEPS_TOO_LARGE = "lower the learning rate, or the penalty (l1, weight decay) if one is set"


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _per_epoch_drop(losses: Sequence[float]) -> float | None:
    """How fast the loss still falls (None: one epoch): the mean relative fall per epoch over
    the last TREND_EPOCHS, or the last epoch's own fall if smaller. A run that converged within
    its first epoch (mean loss 1.9, then 5e-5 twice) has a mean fall of 50% per epoch over the
    window but is not falling any more. Negative: the loss rose."""
    window = list(losses[-(TREND_EPOCHS + 1) :])
    if len(window) < 2 or window[0] <= 0 or window[-2] <= 0:
        return None
    epochs = len(window) - 1
    mean_fall = (window[0] - window[-1]) / window[0] / epochs
    last_fall = (window[-2] - window[-1]) / window[-2]
    return min(mean_fall, last_fall)


def _still_falling(losses: Sequence[float], drop: float | None) -> bool:
    if drop is None or drop <= STILL_FALLING:
        return False
    whole_fall = losses[0] - min(losses)
    return whole_fall > 0 and (losses[-2] - losses[-1]) >= LATE_SHARE * whole_fall


def _rise(losses: Sequence[float], drop: float | None) -> tuple[float, float] | None:
    """(the trend window's lowest loss, the last loss) when the loss rose markedly at the end:
    more than STILL_FALLING per epoch, and by at least LATE_SHARE of the run's whole fall (a
    run that never fell, whose loss only climbs, has none to compare with)."""
    if drop is None or drop >= -STILL_FALLING:
        return None
    low = min(losses[-(TREND_EPOCHS + 1) :])
    whole_fall = losses[0] - min(losses)
    if losses[-1] - low < LATE_SHARE * whole_fall:
        return None
    return low, losses[-1]


def _not_converging(figures: dict[str, Any], low: float) -> list[str]:
    """Why a rising training loss is no fit at all, with the figures that show it."""
    last_train, last_val = figures["train_loss"], figures["val_loss"]
    by = f" {100 * (last_train - low) / low:.0f}%" if low > 0 else ""
    reasons = [
        f"the training loss rose{by} at the end ({low:.4g} to {last_train:.4g}): it has not "
        "levelled off, the steps overshoot"
    ]
    # Both are data losses, but the training one is averaged over the epoch's steps: far above
    # the loss of the weights the epoch ended with, those weights swing from step to step.
    if last_val > 0 and last_train > GAP_RATIO_OVERFIT * last_val:
        reasons.append(
            f"the training loss (mean over the epoch's steps) is {last_train / last_val:.0f}x "
            f"the validation loss {last_val:.4g} (after the epoch): the weights swing"
        )
    return reasons


def _chance(
    last_train: float, accs_train: list[float], accs_val: list[float], num_classes: int | None
) -> tuple[list[str], str | None, bool]:
    """(reasons the model is near chance, the advice that fits them or None, whether the
    training loss is still near (or above) the uniform guess's ln(classes): the model does not
    fit its training data)."""
    if not num_classes or num_classes < 2:
        return [], None, False
    chance, uniform = 1 / num_classes, math.log(num_classes)
    reasons: list[str] = []
    for name, accs in (("training", accs_train), ("validation", accs_val)):
        if accs and accs[-1] < CHANCE_MARGIN * chance:
            reasons.append(f"{name} accuracy {accs[-1]:.3f} is near chance ({chance:.3f})")
    if abs(last_train - uniform) <= UNIFORM_LOSS_MARGIN * uniform:
        reasons.append(
            f"the training loss {last_train:.4g} is ln {num_classes} = {uniform:.4g}: the "
            "network scores every class alike for every input"
        )
        advice = (
            "either the learning rate is too low (or the run too short) to leave the start, "
            "or so high that it killed the units (dead ReLUs); try lr x10 and x0.1, or the "
            "lr range test (kind lr_find)"
        )
        return reasons, advice, True
    if last_train > (1 + NEAR_UNIFORM_MARGIN) * uniform:
        reasons.append(
            f"the training loss {last_train:.4g} is above ln {num_classes} = {uniform:.4g}, "
            "the loss of a uniform guess: the model does worse than guessing"
        )
        return reasons, STEPS_TOO_LARGE, True
    if last_train >= (1 - NEAR_UNIFORM_MARGIN) * uniform:
        reasons.append(
            f"the training loss {last_train:.4g} is still within "
            f"{100 * NEAR_UNIFORM_MARGIN:.0f}% of ln {num_classes} = {uniform:.4g}, the loss "
            "of a uniform guess (the class scores barely differ)"
        )
        advice = (
            "less regularisation (weight decay, l1, dropout), a higher learning rate, a larger "
            "model or a longer run"
        )
        return reasons, advice, True
    return reasons, None, False


def diagnose(
    train_loss: Sequence[float],
    val_loss: Sequence[float],
    train_acc: Sequence[float | None] | None = None,
    val_acc: Sequence[float | None] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any] | None:
    """{"verdict", "reason", and the figures}; None when there is no finite epoch to judge."""
    train, val = _finite(train_loss), _finite(val_loss)
    if not train or not val:
        return None
    last_train, last_val, best_val = train[-1], val[-1], min(val)
    gap = last_val - last_train
    ratio = last_val / last_train if last_train > 0 else math.inf
    val_rise = (last_val - best_val) / best_val if best_val > 0 else 0.0
    drop = _per_epoch_drop(train)
    figures: dict[str, Any] = {
        "epochs": len(train),
        "train_loss": last_train,  # the data loss alone: no penalty in it
        "val_loss": last_val,
        "gap": gap,  # val - train loss
        "best_val_loss": best_val,
        "val_rise": val_rise,  # (last - best) / best validation loss
        "train_loss_drop_per_epoch": drop,  # relative, over the last epochs; < 0: it rose
    }
    accs_train = _finite(train_acc or [])
    accs_val = _finite(val_acc or [])
    acc_gap = None
    if accs_train and accs_val:
        acc_gap = accs_train[-1] - accs_val[-1]
        figures |= {"train_acc": accs_train[-1], "val_acc": accs_val[-1], "acc_gap": acc_gap}
    if num_classes and num_classes >= 2:
        figures |= {"chance_acc": 1 / num_classes, "uniform_loss": math.log(num_classes)}

    # Overfitting presumes a training loss that settles; one that climbs says the steps fail.
    rise = _rise(train, drop)
    if rise is not None:
        return {
            "verdict": "underfitting",
            "reason": "; ".join(_not_converging(figures, rise[0])) + ": " + STEPS_TOO_LARGE,
            **figures,
        }

    chance_reasons, chance_advice, near_uniform = _chance(
        last_train, accs_train, accs_val, num_classes
    )
    overfit_reasons = []
    if ratio > GAP_RATIO_OVERFIT and gap > 0:
        overfit_reasons.append(
            f"validation loss {last_val:.4g} is {ratio:.1f}x the training loss {last_train:.4g}"
        )
    # Near (or above) the uniform guess's loss the model fits nothing: its training accuracy is
    # the argmax of near-equal scores over moving weights, and a gap from it says nothing of
    # generalisation.
    if acc_gap is not None and acc_gap > ACC_GAP_OVERFIT and not near_uniform:
        overfit_reasons.append(
            f"training accuracy is {100 * acc_gap:.1f} points above validation accuracy"
        )
    if val_rise > VAL_RISE_OVERFIT and drop is not None and drop > 0:
        overfit_reasons.append(
            f"validation loss rose {100 * val_rise:.0f}% above its best ({best_val:.4g}) "
            "while the training loss kept falling"
        )
    if overfit_reasons:
        return {
            "verdict": "overfitting",
            "reason": "; ".join(overfit_reasons)
            + ": more data, weight decay or dropout, or fewer epochs",
            **figures,
        }

    underfit_reasons = []
    if _still_falling(train, drop):
        underfit_reasons.append(
            f"training loss still falls {100 * drop:.1f}% per epoch and validation follows"
        )
    underfit_reasons += chance_reasons
    if near_uniform and acc_gap is not None and acc_gap > ACC_GAP_OVERFIT:
        underfit_reasons.append(
            f"so the {100 * acc_gap:.1f}-point accuracy gap is no overfitting: there is no fit "
            "of the training data to fail to generalise"
        )
    if underfit_reasons:
        advice = chance_advice or "train longer, raise the learning rate or use a larger model"
        return {
            "verdict": "underfitting",
            "reason": "; ".join(underfit_reasons) + ": " + advice,
            **figures,
        }
    reason = "training loss has levelled off and validation loss stays close to it"
    if drop is None:
        reason = "validation loss stays close to the training loss (one epoch: no trend yet)"
    return {"verdict": "good fit", "reason": reason, **figures}


def diagnose_epochs(epochs: Sequence[Any], num_classes: int | None = None) -> dict[str, Any] | None:
    """diagnose() over EpochMetrics-like rows (attributes train_loss, val_loss, ...)."""
    return diagnose(
        [e.train_loss for e in epochs],
        [e.val_loss for e in epochs],
        [e.train_acc for e in epochs],
        [e.val_acc for e in epochs],
        num_classes,
    )
