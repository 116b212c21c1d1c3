"""Claim storm: 500 queued jobs, 6 claiming processes, each job claimed exactly once, with a
negative control showing that the check catches a claim made without locking."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

from tests.integration.claim_storm import claim_until_empty
from tests.integration.fleet import Fleet

PROCESSES = 6


def _storm(fleet: Fleet, tmp_path: Path, jobs: int, naive: bool) -> tuple[int, int, int]:
    """Returns (claimed distinct, lost, duplicated claims)."""
    from sqlalchemy import insert

    from service.queue import JOBS

    config = {"model": "softmax", "dataset": "synthetic", "epochs": 1}
    with fleet.engine.begin() as conn:
        conn.execute(
            insert(JOBS),
            [
                {"status": "queued", "model": "softmax", "config": config, "priority": 0,
                 "attempts": 0, "max_attempts": 3, "cancel_requested": False, "epochs_done": 0}
                for _ in range(jobs)
            ],
        )  # fmt: skip
    context = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"claims-{i}.txt" for i in range(PROCESSES)]
    processes = [
        context.Process(
            target=claim_until_empty, args=(fleet.database_url, f"c{i}", str(out), naive)
        )
        for i, out in enumerate(outs)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=240)
        assert p.exitcode == 0, f"claimer exited with {p.exitcode}"
    counts = Counter(int(x) for out in outs for x in out.read_text().split())
    lost = jobs - len(counts)
    duplicated = sum(n - 1 for n in counts.values())
    print(
        f"\nclaim storm [{fleet.engine.dialect.name}, {'naive' if naive else 'real'} claim]: "
        f"jobs={jobs} processes={PROCESSES} claimed={len(counts)} lost={lost} "
        f"duplicated={duplicated}"
    )
    return len(counts), lost, duplicated


def test_every_job_claimed_exactly_once(database_url: str, tmp_path: Path) -> None:
    fleet = Fleet(database_url, tmp_path / "state", {})
    try:
        claimed, lost, duplicated = _storm(fleet, tmp_path, jobs=500, naive=False)
    finally:
        fleet.stop_all()
    assert (claimed, lost, duplicated) == (500, 0, 0)


def test_negative_control_catches_a_claim_without_locking(
    postgres_url: str, tmp_path: Path
) -> None:
    fleet = Fleet(postgres_url, tmp_path / "state", {})
    try:
        _, lost, duplicated = _storm(fleet, tmp_path, jobs=100, naive=True)
    finally:
        fleet.stop_all()
    assert duplicated > 0, "the naive claim produced no duplicate: the storm would not catch one"
