"""The warm job process a worker keeps waiting (service.worker.standby)."""

from __future__ import annotations

from service.config import Settings
from service.worker.standby import Standby


def _settings_data(tmp_path) -> dict:
    return Settings(state_dir=tmp_path).model_dump(mode="json")


def test_a_standby_without_a_job_exits_when_its_pipe_closes(tmp_path) -> None:
    standby = Standby(_settings_data(tmp_path), "cpu")
    assert standby.process.is_alive()
    standby._send.close()  # what close() does first; it kills only a standby that lingers
    standby.process.join(timeout=60)
    assert standby.process.exitcode == 0  # it left on its own, after its warm-up


def test_close_stops_a_standby(tmp_path) -> None:
    standby = Standby(_settings_data(tmp_path), "cpu")
    standby.close()
    assert not standby.process.is_alive()


def test_a_dead_standby_is_not_given_the_job(tmp_path) -> None:
    standby = Standby(_settings_data(tmp_path), "cpu")
    standby.process.kill()
    standby.process.join()
    assert standby.start_job(1, "token", {"model": "lenet"}) is None
