"""Training: datasets (`data`), optimizers (`optim`) and the one training loop (`loop`).

It knows no HTTP and no SQL. Import the submodules directly; this package imports nothing,
so that `service.training.config` stays cheap to import:

    from service.training.config import TrainConfig
    from service.training.data import DatasetError, DatasetNotFoundError, load_dataset
    from service.training.loop import EpochMetrics, TrainResult, train
    from service.training.loop import TrainingCancelled, TrainingDiverged
"""
