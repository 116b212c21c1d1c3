"""What can be trained: networks with their course defaults, datasets, optimizers, lr
schedules."""

from __future__ import annotations

from fastapi import APIRouter

import models
from service.api.params import query_names
from service.schemas import default_lr
from service.training.config import AUGMENTS, LR_SCHEDULES, OPTIMIZERS
from service.training.data import KNOWN_DATASETS

router = APIRouter(tags=["catalog"])


@router.get("/catalog", dependencies=[query_names()])
def catalog() -> dict[str, object]:
    """Networks (with the defaults a job gets when it omits lr, dropout, resize), datasets.

    lr, momentum_lr and adam_lr are the lr a job gets with optimizer sgd, momentum and adam."""
    networks = []
    # The regression model too: POST /jobs takes it, so its defaults must be findable here.
    for name in models.list_models() + models.list_regression_models():
        spec = models.get_spec(name)
        image = spec.task == "classification"
        networks.append(
            {
                "name": spec.name,
                "task": spec.task,
                "description": spec.description,
                "input_side": spec.input_side if image else None,  # feature vectors: no side
                "min_side": spec.min_side if image else None,
                "lr": default_lr(name, "sgd"),
                "momentum_lr": default_lr(name, "momentum"),
                "adam_lr": default_lr(name, "adam"),
                "dropout": spec.dropout,
                "has_dropout": spec.has_dropout,
            }
        )
    return {
        "models": networks,
        "datasets": list(KNOWN_DATASETS),  # and uploads: GET /datasets
        "optimizers": list(OPTIMIZERS),
        "lr_schedules": list(LR_SCHEDULES),
        "augments": list(AUGMENTS),
    }
