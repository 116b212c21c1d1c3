"""Engine and sessions. SQLite gets WAL mode and explicit BEGIN handling; PostgreSQL as is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Room for every thread of the API's threadpool (40) to hold a connection at once.
POOL_SIZE = 10
POOL_OVERFLOW = 40
# libpq's defaults wait without end for a host that does not answer: a request to the API hung
# past 100 s instead of its 503. These bound a connect and a dead peer; a URL that sets one of
# them (?connect_timeout=...) keeps its own. A server whose machine answers TCP but whose
# PostgreSQL is frozen mid-query is beyond them (the kernel acknowledges what is sent).
PG_CONNECT_ARGS: dict[str, int] = {
    "connect_timeout": 5,  # seconds
    "keepalives": 1,
    "keepalives_idle": 10,  # seconds of silence before the first probe
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,  # ms that sent data may stay unacknowledged
}


def shown_url(url: str | URL) -> str:
    """The database URL as it may be printed or logged: its password as ***, also one given as
    a query parameter (libpq's ?password=)."""
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return str(url)  # not a URL: it holds no password to hide
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args = {k: v for k, v in PG_CONNECT_ARGS.items() if k not in parsed.query}
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            connect_args=connect_args,
        )

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Take transaction control from pysqlite so that SQLAlchemy's BEGIN is the one emitted.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(
            "PRAGMA synchronous=NORMAL"
        )  # safe with WAL: a crash loses no committed write
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Writers take the lock up front, so a read-then-write never fails with SQLITE_BUSY.
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """FastAPI dependency: one session per request, from the app's session factory.

    Closed as soon as the endpoint returns (scope="function"), on the event loop (async): a
    session closed later, or on a threadpool thread, can keep its pooled connection while every
    thread waits for one, and then nothing moves until the pool times out.
    """
    session = request.app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


# One shared limit: no more sessions at once than the pool has connections.
SessionDep = Annotated[
    Session,
    Depends(get_session, scope="function", max_concurrency=POOL_SIZE + POOL_OVERFLOW),
]


CONNECT_CHECK_SECONDS = 10  # an unreachable host fails the start-up check, not hangs it
DATABASE_VARIABLE = "TRAINSERVE_DATABASE_URL"


def check_database(url: str) -> Engine:
    """An engine on ``url`` that has answered once (the caller disposes of it). SettingError
    (one line for the CLI, exit 2) for a URL that does not parse, a database other than SQLite
    or PostgreSQL, a driver that is not installed, or a database that does not answer."""
    from sqlalchemy import text
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from service.config import SettingError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise SettingError(
            f"{DATABASE_VARIABLE}: {exc}; e.g. postgresql+psycopg://user@host:5432/db "
            "or sqlite:///var/trainserve.db"
        ) from None
    shown = shown_url(url)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise SettingError(
            f"{DATABASE_VARIABLE}={shown}: trainserve runs on sqlite or postgresql "
            f"(postgresql+psycopg://...), not {backend}"
        )
    try:
        engine = (
            make_engine(url)
            if backend == "sqlite"  # its directory made, its pragmas set, as the service's
            else create_engine(url, connect_args={"connect_timeout": CONNECT_CHECK_SECONDS})
        )
    except (ImportError, NoSuchModuleError) as exc:
        raise SettingError(
            f"{DATABASE_VARIABLE}={shown}: its driver is not installed ({exc}); "
            "use postgresql+psycopg://"
        ) from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise SettingError(f"{DATABASE_VARIABLE}={shown}: cannot connect ({reason})") from None
    return engine
