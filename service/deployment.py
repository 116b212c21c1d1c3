"""Which database an artifact directory belongs to.

Model files are named by job id (jobs/<id>/), and every database numbers its jobs from 1: a
second database pointed at the same directory (a PostgreSQL set-up started beside the embedded
SQLite default, say) would overwrite the first one's model 1 and serve the other's. The
directory is stamped with the id of the database that first ran jobs into it (tables.Deployment),
and a process of another database refuses to start on it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sqlalchemy import select

from service.artifacts import atomic_write_bytes
from service.config import SettingError, Settings
from service.db import make_engine
from service.tables import Deployment

STAMP_FILE = ".trainserve-database-id"


def database_id(url: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(Deployment.id)).scalar_one()
    finally:
        engine.dispose()


def check_artifact_owner(settings: Settings) -> None:
    """SettingError when the artifact directory is stamped with another database's id; stamp
    it when it is not (a read-only one, which only an API reads, is left as it is)."""
    directory = settings.resolved_artifact_dir
    own = database_id(settings.resolved_database_url)
    stamp = Path(directory) / STAMP_FILE
    try:
        stamped = stamp.read_text().strip()
    except FileNotFoundError:
        stamped = None
    if stamped is None:
        with contextlib.suppress(OSError):  # read-only: this process writes no model there
            atomic_write_bytes(stamp, own.encode())
        return
    if stamped != own:
        raise SettingError(
            f"{settings.artifact_dir_source}: {directory} holds the model files of another "
            f"database (its {STAMP_FILE} says {stamped}; this database is {own}): give each "
            "database its own TRAINSERVE_STATE_DIR or TRAINSERVE_ARTIFACT_DIR"
        )
