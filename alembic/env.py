"""Alembic environment: the URL comes from the caller or TRAINSERVE_DATABASE_URL."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from service.config import get_settings
from service.db import make_engine
from service.tables import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


# Any number shared by every trainserve process: the advisory lock that migrations take.
MIGRATION_LOCK_KEY = 7_311_920_426


def run_migrations_online() -> None:
    engine = make_engine(_url())
    with engine.connect() as connection:
        # One migration at a time: two `serve` (or `worker --migrate`) starting together on a
        # new database both created alembic_version, and one died with a duplicate key. The
        # second waits here, then finds the schema at head and does nothing.
        connection.execution_options(sqlite_immediate=True)  # SQLite: the write lock at BEGIN
        # render_as_batch: SQLite can only ALTER tables by copying them.
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
