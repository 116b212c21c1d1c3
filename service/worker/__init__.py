"""Workers: claim queued jobs from the database, train them, write the results back."""

from service.worker.loop import Worker
from service.worker.pool import WorkerPool, default_worker_devices

__all__ = ["Worker", "WorkerPool", "default_worker_devices"]
