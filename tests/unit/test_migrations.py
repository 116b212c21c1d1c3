"""The Alembic migrations: they build the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from service.cli import REPO_ROOT, migrate
from service.config import Settings
from service.db import make_engine
from service.tables import Base

pytestmark = pytest.mark.timeout(60)

APP_TABLES = {"jobs", "epoch_metrics", "sweeps", "datasets"}


def alembic_config(url: str) -> Config:
    """Built the way service.cli.migrate builds it."""
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "alembic"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if "alembic_version" not in inspect(conn).get_table_names():
                return None
            return conn.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        engine.dispose()


def head(config: Config) -> str:
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1, f"several migration heads: {heads}"
    return heads[0]


def test_upgrade_check_downgrade_upgrade(database_url: str) -> None:
    config = alembic_config(database_url)
    assert tables(database_url) == set()

    migrate(Settings(database_url=database_url))
    assert tables(database_url) >= APP_TABLES
    assert current_revision(database_url) == head(config)
    command.check(config)  # the models and the migrated schema agree (no autogenerate diff)

    command.downgrade(config, "base")
    assert tables(database_url) & APP_TABLES == set()
    assert current_revision(database_url) is None

    command.upgrade(config, "head")
    assert tables(database_url) >= APP_TABLES
    assert current_revision(database_url) == head(config)
    command.check(config)


def test_migrate_twice_is_a_no_op(database_url: str) -> None:
    migrate(Settings(database_url=database_url))
    migrate(Settings(database_url=database_url))
    assert current_revision(database_url) == head(alembic_config(database_url))


def test_migrated_schema_has_the_declared_indexes_and_constraints(database_url: str) -> None:
    migrate(Settings(database_url=database_url))
    engine = create_engine(database_url)
    try:
        inspector = inspect(engine)
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("jobs")}
        assert indexes["ix_jobs_claim"] == ["status", "priority", "created_at"]
        assert indexes["ix_jobs_created_at"] == ["created_at"]
        uniques = [tuple(u["column_names"]) for u in inspector.get_unique_constraints("jobs")]
        assert ("idempotency_key",) in uniques
        sweep_uniques = inspector.get_unique_constraints("sweeps")
        assert ("idempotency_key",) in [tuple(u["column_names"]) for u in sweep_uniques]
        metric_uniques = inspector.get_unique_constraints("epoch_metrics")
        assert ("job_id", "epoch") in [tuple(u["column_names"]) for u in metric_uniques]
        fks = inspector.get_foreign_keys("epoch_metrics")
        assert [(fk["referred_table"], fk["options"].get("ondelete")) for fk in fks] == [
            ("jobs", "CASCADE")
        ]
        for table in APP_TABLES:
            declared = set(Base.metadata.tables[table].columns.keys())
            assert {c["name"] for c in inspector.get_columns(table)} == declared
    finally:
        engine.dispose()


def test_sqlite_database_is_in_wal_mode(sqlite_url: str) -> None:
    migrate(Settings(database_url=sqlite_url))
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    finally:
        engine.dispose()
    # WAL is a property of the file: a plain connection sees it too.
    path = make_url(sqlite_url).database
    assert path
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_migrations_started_together_take_turns(database_url: str, tmp_path: Path) -> None:
    """Two `serve` (or `worker --migrate`) starting at once on a new database both created
    alembic_version, and one died with a duplicate key and a traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRAINSERVE_DATABASE_URL": database_url,
           "TRAINSERVE_STATE_DIR": str(tmp_path)}  # fmt: skip
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "service.cli", "migrate"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=120)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert not any("Traceback" in out for out in outputs)
    engine = make_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()
