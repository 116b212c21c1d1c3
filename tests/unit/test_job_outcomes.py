"""How a job process words the failures a user can act on."""

from __future__ import annotations

from service.training.config import TrainConfig
from service.worker.execute import out_of_memory_message


def test_cuda_out_of_memory_suggests_a_smaller_batch() -> None:
    config = TrainConfig(model="vgg", batch_size=512)
    error = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = out_of_memory_message(error, config)
    assert message is not None
    assert "batch size 512" in message and "batch_size (e.g. 256)" in message


def test_cpu_out_of_memory_suggests_a_smaller_batch() -> None:
    config = TrainConfig(model="vgg", batch_size=4096, resize=512)
    for error in (
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 68719476736 bytes. Error code 12"
        ),
        MemoryError(),
    ):
        message = out_of_memory_message(error, config)
        assert message is not None and "batch_size (e.g. 2048)" in message


def test_other_errors_are_not_out_of_memory() -> None:
    assert out_of_memory_message(ValueError("shape mismatch"), TrainConfig(model="lenet")) is None
