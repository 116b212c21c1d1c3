"""A short verdict on a finished run from its per-epoch curves, as the course reads them.

Training error and validation (generalisation) error tell three stories:
  underfitting  the model does not fit its own training data: (classification) its training
                loss is still near (or above) ln(classes), the loss of a uniform guess, or its
                training error is high (HIGH_LOSS_SHARE, LOW_ACC_SHARE), or its training
                accuracy is near chance; or the training loss is still falling markedly at the
                end (not converged: train longer, raise lr, or use a bigger model), or its
                trend rises (the optimisation is not converging: lower lr or the penalty). A
                model that fits nothing cannot overfit, so these come first;
  overfitting   the validation loss is well above the training loss, or has turned back up
                from its best while the training loss kept falling, or (classification) the
                training accuracy is well above the validation accuracy while the validation
                loss agrees (is not below the training loss);
  good fit      neither: the training loss has levelled off and validation follows it. After
                one epoch there is no trend yet: the verdict says it is provisional.

The figures compare like with like: the training loss is the data loss alone (EpochMetrics:
the l1 penalty and weight decay are not in it), as the validation loss is. But it is the mean
over the epoch's steps, with the weights moving, while validation is measured after the epoch.

The curves cannot show the job's knobs; given them (RunFacts, from run_facts(config)), the
advice names only the causes that apply (service/training/diagnosis_advice.py).

Pure function of the numbers; every verdict carries the figures it was drawn from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from service.training.diagnosis_advice import (
    MORE_CAPACITY,
    RunFacts,
    fit_advice,
    overfit_advice,
    steps_too_large,
    stuck_advice,
)

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
# The window of the trend. A rising loss is the window's mean change, not its last epoch: an
# MLP at lr 0.5 (8 epochs, 10 000 examples) went 0.5827 -> 0.4827 -> 0.5093, +5.5 % in its last
# epoch, yet fell 4.2 % a epoch over the window, and that epoch's validation loss was its best.
TREND_EPOCHS = 3
CHANCE_MARGIN = 1.5  # train or validation accuracy below 1.5 x chance is underfitting
# A loss within 2 % of ln(classes): the network gives every class the same score, whatever the
# input. That is where a net starts, where too strong a penalty holds it (softmax, weight decay
# 100, lr 0.01: 2.277 = 98.9 % of ln 10), and where a too-high lr leaves a ReLU net (dead units).
UNIFORM_LOSS_MARGIN = 0.02
# A loss still within 10 % of ln(classes): the scores barely differ between classes. Softmax
# under weight decay 5 (lr 0.1) stays at 91-92 % of ln 10 on the synthetic set with 0.14-0.24
# validation accuracy; its training accuracy (0.45-0.6) is then the argmax of near-equal scores,
# not a fit. (On the full Fashion-MNIST it ends at 1.96 = 85 %: HIGH_LOSS_SHARE catches that.)
NEAR_UNIFORM_MARGIN = 0.10
# High training error (the course's underfitting) for a classifier: a training loss still at
# 75 % or more of ln(classes), or a training accuracy less than a third of the way from chance
# to 1 (below 0.4 for 10 classes, 0.67 for 2). Measured on Fashion-MNIST, seed 0: the course's
# nets that fit end far below both: softmax lr 0.1, 10 epochs 0.4525 = 20 % of ln 10 (accuracy
# 0.847), on 10 000 examples 0.578 = 25 % (0.806); MLP (dropout 0.5, lr 0.5) 27 % (0.769); ReLU
# LeNet lr 0.1 26 % (0.763); even one softmax epoch on 10 000 examples is at 57 % (0.585). The
# runs that fit nothing sit above: softmax, weight decay 5, 3 epochs on the full set 1.964 =
# 85 % (accuracy 0.44); softmax on the synthetic set after one epoch 2.00 = 87 % (0.41); an MLP
# on 100 examples (lr 0.5, batch 16, 40 epochs) ends at 70 % of ln 10, inside the loss bound,
# but with training accuracy 0.356, 28 % of the way from chance.
HIGH_LOSS_SHARE = 0.75
LOW_ACC_SHARE = 1 / 3


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _window(losses: Sequence[float]) -> list[float]:
    return list(losses[-(TREND_EPOCHS + 1) :])


def _trend(losses: Sequence[float]) -> float | None:
    """The mean relative fall per epoch over the last TREND_EPOCHS (None: one epoch; < 0: the
    loss rose)."""
    window = _window(losses)
    if len(window) < 2 or window[0] <= 0:
        return None
    return (window[0] - window[-1]) / window[0] / (len(window) - 1)


def _per_epoch_drop(losses: Sequence[float]) -> float | None:
    """How fast the loss still falls (None: one epoch): the trend, or the last epoch's own fall
    if smaller. A run that converged within its first epoch (mean loss 1.9, then 5e-5 twice)
    has a mean fall of 50% per epoch over the window but is not falling any more."""
    trend = _trend(losses)
    if trend is None or losses[-2] <= 0:
        return None
    return min(trend, (losses[-2] - losses[-1]) / losses[-2])


def _still_falling(losses: Sequence[float], drop: float | None) -> bool:
    if drop is None or drop <= STILL_FALLING:
        return False
    whole_fall = losses[0] - min(losses)
    return whole_fall > 0 and (losses[-2] - losses[-1]) >= LATE_SHARE * whole_fall


def _rise(losses: Sequence[float], trend: float | None) -> tuple[float, float] | None:
    """(the trend window's lowest loss, the last loss) when the loss's trend rose markedly:
    more than STILL_FALLING per epoch over the window (one epoch's uptick is not a trend), and
    by at least LATE_SHARE of the run's whole fall (a run that never fell, whose loss only
    climbs, has none to compare with)."""
    if trend is None or trend >= -STILL_FALLING:
        return None
    low = min(_window(losses))
    whole_fall = losses[0] - min(losses)
    if losses[-1] - low < LATE_SHARE * whole_fall:
        return None
    return low, losses[-1]


def _overshoot(losses: Sequence[float]) -> float | None:
    """The largest relative rise from one epoch to the next within the trend window, where it
    passes STILL_FALLING (the steps overshoot); None otherwise."""
    window = _window(losses)
    rises = [(b - a) / a for a, b in zip(window, window[1:], strict=False) if a > 0]
    largest = max(rises, default=0.0)
    return largest if largest > STILL_FALLING else None


def _not_converging(figures: dict[str, Any], low: float) -> list[str]:
    """Why a rising training loss is no fit at all, with the figures that show it."""
    last_train, last_val = figures["train_loss"], figures["val_loss"]
    by = f" {100 * (last_train - low) / low:.0f}%" if low > 0 else ""
    trend = -figures["train_loss_trend_per_epoch"]
    reasons = [
        f"the training loss rose{by} at the end ({low:.4g} to {last_train:.4g}, "
        f"{100 * trend:.1f}% a epoch over the last {figures['trend_epochs']}): it has not "
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


def _chance_word(acc: float, chance: float) -> str:
    return "at or below chance" if acc < chance else "near chance"


def _no_fit(
    last_train: float,
    acc_train: float | None,
    num_classes: int | None,
    facts: RunFacts | None,
    overshoot: float | None,
) -> tuple[list[str], str | None]:
    """(reasons the classifier does not fit its own training data, the advice that fits them):
    a training loss near or above ln(classes), a high training error, or a training accuracy
    near chance. None of them: ([], None)."""
    if not num_classes or num_classes < 2:
        return [], None
    chance, uniform = 1 / num_classes, math.log(num_classes)
    reasons: list[str] = []
    if acc_train is not None and acc_train < CHANCE_MARGIN * chance:
        reasons.append(
            f"training accuracy {acc_train:.3f} is {_chance_word(acc_train, chance)} ({chance:.3f})"
        )
    if abs(last_train - uniform) <= UNIFORM_LOSS_MARGIN * uniform:
        reasons.append(
            f"the training loss {last_train:.4g} is ln {num_classes} = {uniform:.4g}: the "
            "network scores every class alike for every input"
        )
        return reasons, stuck_advice(facts)
    fits = acc_train is not None and (acc_train - chance) / (1 - chance) >= LOW_ACC_SHARE
    if last_train > (1 + NEAR_UNIFORM_MARGIN) * uniform and fits:
        # Mostly right answers with a mean loss above a guess's: the wrong ones (or some batches)
        # carry huge losses from scores that steps too large blew up. Not worse than guessing.
        reasons.append(
            f"the training loss {last_train:.4g} (the epoch's mean) is above ln {num_classes} = "
            f"{uniform:.4g}, the loss of a uniform guess, although training accuracy is "
            f"{acc_train:.3f}: its wrong answers carry huge losses, from scores blown up by "
            "steps that are too large"
        )
        return reasons, steps_too_large(facts)
    if last_train > (1 + NEAR_UNIFORM_MARGIN) * uniform:
        reasons.append(
            f"the training loss {last_train:.4g} is above ln {num_classes} = {uniform:.4g}, "
            f"the loss of a uniform guess ({last_train / uniform:.2g}x): the model does worse "
            "than guessing"
        )
        return reasons, steps_too_large(facts)
    if last_train >= (1 - NEAR_UNIFORM_MARGIN) * uniform:
        reasons.append(
            f"the training loss {last_train:.4g} is still within "
            f"{100 * NEAR_UNIFORM_MARGIN:.0f}% of ln {num_classes} = {uniform:.4g}, the loss "
            "of a uniform guess (the class scores barely differ)"
        )
        default = (
            "less regularisation (weight decay, l1, dropout), a higher learning rate, a larger "
            "model or a longer run"
        )
        return reasons, fit_advice(facts, overshoot, default)
    # High training error: no "ln" here, the uniform guess is named by its loss.
    if last_train >= HIGH_LOSS_SHARE * uniform:
        reasons.append(
            f"the training error is high: the training loss {last_train:.4g} is still "
            f"{100 * last_train / uniform:.0f}% of a uniform guess's {uniform:.4g} (a fit gets "
            f"below {100 * HIGH_LOSS_SHARE:.0f}%)"
        )
    if acc_train is not None:
        share = (acc_train - chance) / (1 - chance)
        if share < LOW_ACC_SHARE and acc_train >= CHANCE_MARGIN * chance:
            reasons.append(
                f"the training error is high: training accuracy {acc_train:.3f} is "
                f"{100 * max(share, 0):.0f}% of the way from chance ({chance:.3f}) to 1 (a fit "
                f"gets past {100 * LOW_ACC_SHARE:.0f}%)"
            )
    return reasons, (fit_advice(facts, overshoot, MORE_CAPACITY) if reasons else None)


def diagnose(
    train_loss: Sequence[float],
    val_loss: Sequence[float],
    train_acc: Sequence[float | None] | None = None,
    val_acc: Sequence[float | None] | None = None,
    num_classes: int | None = None,
    facts: RunFacts | None = None,
) -> dict[str, Any] | None:
    """{"verdict", "reason", and the figures}; None when there is no finite epoch to judge.
    ``facts`` (run_facts(config)) fits the advice to the job's knobs; the verdict is the same."""
    train, val = _finite(train_loss), _finite(val_loss)
    if not train or not val:
        return None
    last_train, last_val, best_val = train[-1], val[-1], min(val)
    gap = last_val - last_train
    ratio = last_val / last_train if last_train > 0 else math.inf
    val_rise = (last_val - best_val) / best_val if best_val > 0 else 0.0
    best_epoch = val.index(best_val) + 1
    drop, trend = _per_epoch_drop(train), _trend(train)
    figures: dict[str, Any] = {
        "epochs": len(train),
        "train_loss": last_train,  # the data loss alone: no penalty in it
        "val_loss": last_val,
        "gap": gap,  # val - train loss
        "best_val_loss": best_val,
        "best_val_epoch": best_epoch,  # from 1
        "val_rise": val_rise,  # (last - best) / best validation loss
        # relative, over the last epochs (or the last epoch's, if smaller); < 0: it rose
        "train_loss_drop_per_epoch": drop,
        "train_loss_trend_per_epoch": trend,  # the window's mean fall alone; < 0: it rose
        "trend_epochs": min(TREND_EPOCHS, len(train) - 1),
    }
    accs_train = _finite(train_acc or [])
    accs_val = _finite(val_acc or [])
    acc_gap = None
    if accs_train and accs_val:
        acc_gap = accs_train[-1] - accs_val[-1]
        figures |= {"train_acc": accs_train[-1], "val_acc": accs_val[-1], "acc_gap": acc_gap}
    loss_gap_wide = ratio > GAP_RATIO_OVERFIT and gap > 0
    acc_gap_wide = acc_gap is not None and acc_gap > ACC_GAP_OVERFIT
    if num_classes and num_classes >= 2:
        uniform = math.log(num_classes)
        figures |= {
            "chance_acc": 1 / num_classes,
            "uniform_loss": uniform,
            "train_loss_share_of_uniform": last_train / uniform,
        }

    # Overfitting presumes a training loss that settles; one whose trend climbs says the steps
    # fail.
    rise = _rise(train, trend)
    if rise is not None:
        return {
            "verdict": "underfitting",
            "reason": "; ".join(_not_converging(figures, rise[0])) + ": " + steps_too_large(facts),
            **figures,
        }

    val_chance = []
    if num_classes and num_classes >= 2 and accs_val and accs_val[-1] < CHANCE_MARGIN / num_classes:
        val_chance.append(
            f"validation accuracy {accs_val[-1]:.3f} is "
            f"{_chance_word(accs_val[-1], 1 / num_classes)} ({1 / num_classes:.3f})"
        )
    still_falling = []
    if _still_falling(train, drop):
        still_falling.append(
            f"training loss still falls {100 * drop:.1f}% per epoch and validation follows"  # type: ignore[operator]
        )

    # A model that fits nothing cannot overfit: near (or above) the uniform guess's loss, or with
    # a high training error, its training accuracy is the argmax of near-equal scores over moving
    # weights, and a gap from it says nothing of generalisation.
    no_fit, no_fit_advice = _no_fit(
        last_train, accs_train[-1] if accs_train else None, num_classes, facts, _overshoot(train)
    )
    if no_fit:
        reasons = no_fit + val_chance + still_falling
        if acc_gap_wide or loss_gap_wide:
            reasons.append(
                "so the gap between training and validation is no overfitting: there is no fit "
                "of the training data to fail to generalise"
            )
        return {
            "verdict": "underfitting",
            "reason": "; ".join(reasons) + ": " + str(no_fit_advice),
            **figures,
        }

    overfit_reasons = []
    if loss_gap_wide:
        overfit_reasons.append(
            f"validation loss {last_val:.4g} is {ratio:.2f}x the training loss {last_train:.4g}"
        )
    # The accuracies must agree with the losses: a validation loss below the training loss (the
    # mean over the epoch's moving weights) says the model generalises, whatever the argmax.
    if acc_gap_wide and gap >= 0:
        overfit_reasons.append(
            f"training accuracy is {100 * acc_gap:.1f} points above validation accuracy "
            f"(and validation loss {last_val:.4g} is not below the training loss "
            f"{last_train:.4g})"
        )
    # Since the best validation epoch, not over the last few: a training loss that spiked and
    # ended above its value there did not keep falling, whatever its latest epochs did.
    train_at_best = train[best_epoch - 1] if len(train) == len(val) else None
    if val_rise > VAL_RISE_OVERFIT and train_at_best is not None and last_train < train_at_best:
        overfit_reasons.append(
            f"validation loss rose {100 * val_rise:.0f}% above its best ({best_val:.4g}, epoch "
            f"{best_epoch}) while the training loss kept falling ({train_at_best:.4g} to "
            f"{last_train:.4g})"
        )
    if overfit_reasons:
        return {
            "verdict": "overfitting",
            "reason": "; ".join(overfit_reasons)
            + ": "
            + overfit_advice(facts, best_epoch if val_rise > VAL_RISE_OVERFIT else None),
            **figures,
        }

    underfit_reasons = still_falling + val_chance
    if underfit_reasons:
        return {
            "verdict": "underfitting",
            "reason": "; ".join(underfit_reasons) + ": " + MORE_CAPACITY,
            **figures,
        }
    reason = "training loss has levelled off and validation loss stays close to it"
    if drop is None:
        reason = (
            "one epoch shows no trend yet; validation loss stays close to the training loss and "
            "the training error is not high, so the verdict is provisional: train more epochs "
            "to confirm it"
        )
    return {"verdict": "good fit", "reason": reason, **figures}


def diagnose_epochs(
    epochs: Sequence[Any], num_classes: int | None = None, facts: RunFacts | None = None
) -> dict[str, Any] | None:
    """diagnose() over EpochMetrics-like rows (attributes train_loss, val_loss, ...)."""
    return diagnose(
        [e.train_loss for e in epochs],
        [e.val_loss for e in epochs],
        [e.train_acc for e in epochs],
        [e.val_acc for e in epochs],
        num_classes,
        facts,
    )
