"""How a job process words the failures a user can act on, and which failures are not the
training's: a database that cannot be reached is an outage, never a training crash."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from service.training.config import TrainConfig
from service.worker.execute import out_of_memory_message
from service.worker.retry import DatabaseRetry, DatabaseUnavailable, is_database_error


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


def _refused() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("Connection refused"))


def test_an_unreachable_database_is_never_a_training_crash() -> None:
    invalidated = DBAPIError("SELECT 1", {}, Exception("server closed the connection"))
    invalidated.connection_invalidated = True
    wrapped = RuntimeError("rank 0 failed")
    wrapped.__cause__ = _refused()
    for error in (
        _refused(),
        InterfaceError("SELECT 1", {}, Exception("connection already closed")),
        invalidated,
        wrapped,
        DatabaseUnavailable("the database was unreachable for 30s"),
    ):
        assert is_database_error(error), error
    for error in (
        RuntimeError("boom"),
        ValueError("shape mismatch"),
        IntegrityError("INSERT", {}, Exception("duplicate key")),  # a bug: not retried either
        DBAPIError("SELECT 1", {}, Exception("syntax error")),
    ):
        assert not is_database_error(error), error


def test_a_write_is_retried_while_the_lease_could_be_ours_then_given_up() -> None:
    calls: list[int] = []

    def down_twice() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise _refused()
        return "written"

    assert DatabaseRetry(patience_seconds=5, max_delay=0.01)(down_twice) == "written"

    def down() -> None:
        raise _refused()

    with pytest.raises(DatabaseUnavailable) as raised:
        DatabaseRetry(patience_seconds=0.05, max_delay=0.01)(down)
    assert isinstance(raised.value.__cause__, OperationalError)
    assert "Connection refused" in str(raised.value)

    calls.clear()

    def integrity() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):  # not an outage: no retry
        DatabaseRetry(patience_seconds=5)(integrity)
    assert len(calls) == 1

    stopped = DatabaseRetry(patience_seconds=60, give_up=lambda: True)
    with pytest.raises(DatabaseUnavailable):  # asked to stop: at once, not after the lease
        stopped(down)
