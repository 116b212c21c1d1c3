"""The `trainserve` command: serve | worker | migrate."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from service.config import (
    SettingError,
    Settings,
    check_device,
    check_inference_device,
    check_listen_address,
    check_writable,
    get_settings,
    unknown_variables,
)
from service.db import check_database, shown_url
from service.deployment import check_artifact_owner

REPO_ROOT = Path(__file__).resolve().parents[1]


def migrate(settings: Settings) -> None:
    """Upgrade the database to the newest schema (alembic upgrade head)."""
    from alembic import command
    from alembic.config import Config

    check_writable(settings, artifacts=False)  # one line, not a traceback
    check_database(settings.resolved_database_url).dispose()
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "alembic"))
    config.set_main_option("sqlalchemy.url", settings.resolved_database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api import create_app
    from service.worker import WorkerPool, default_worker_devices

    overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    given = {k: v for k, v in overrides.items() if v is not None}
    # Built anew rather than model_copy(update=...), which would skip validation: --port 99999
    # must stop here as TRAINSERVE_PORT=99999 does, not listen on 99999 mod 65536.
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        bad_options = [e for e in exc.errors() if e["loc"] and e["loc"][0] in given]
        if not bad_options:
            raise  # a TRAINSERVE_* variable: main() names it
        raise SettingError(
            "; ".join(f"--{e['loc'][0]} {given[e['loc'][0]]}: {e['msg']}" for e in bad_options)
        ) from None
    # Before migrating and starting workers:
    check_inference_device(settings.inference_device)
    check_listen_address(settings.host, settings.port)
    devices = default_worker_devices(settings.workers, settings.slots_per_gpu)
    check_writable(settings, artifacts=bool(devices))
    migrate(settings)
    check_artifact_owner(settings)
    pool = WorkerPool(settings, devices)
    pool.start()
    try:
        log = logging.getLogger("trainserve")
        log.info("database %s", shown_url(settings.resolved_database_url))
        log.info("artifacts %s", settings.resolved_artifact_dir)
        # The pool stops in the app's shutdown: uvicorn re-raises SIGTERM/SIGINT after a
        # graceful shutdown, so code after uvicorn.run may never run.
        app = create_app(settings, on_shutdown=pool.stop, on_queued=pool.wake)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    finally:
        pool.stop()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from service.worker import Worker

    settings = get_settings()
    device = args.device.strip().lower() if args.device else _default_device()
    # Before anything else: a worker on a device it cannot use would claim jobs and fail them.
    check_device(device, "--device")
    check_writable(settings, artifacts=True)
    if args.migrate:
        migrate(settings)
    else:
        _check_schema(settings)
    check_artifact_owner(settings)
    worker = Worker(settings, device=device, name=args.name)
    worker.install_signal_handlers()
    if args.parent_pid:
        worker.exit_with_parent(args.parent_pid)
    worker.run()
    return 0


def _check_schema(settings: Settings) -> None:
    """SettingError unless the database answers and is at the newest schema: a worker on an
    unmigrated database would fail every query, and retry them forever."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    engine = check_database(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    head = ScriptDirectory(str(REPO_ROOT / "alembic")).get_current_head()
    if current != head:
        raise SettingError(
            f"the database is at schema {current or 'none'}, not {head}: run `trainserve "
            "migrate` (or `trainserve worker --migrate`) first"
        )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _migrate(_: argparse.Namespace) -> int:
    settings = get_settings()
    migrate(settings)
    print(f"database at the newest schema: {shown_url(settings.resolved_database_url)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="API + embedded worker pool (migrates first)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1, TRAINSERVE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, TRAINSERVE_PORT)")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes (default: TRAINSERVE_SLOTS_PER_GPU per GPU, else one; "
        "TRAINSERVE_WORKERS); 0 runs the API alone",
    )
    serve.set_defaults(func=_serve)

    worker = sub.add_parser("worker", help="a standalone worker against TRAINSERVE_DATABASE_URL")
    worker.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    worker.add_argument("--name", help="lease owner name (default host:pid:random)")
    worker.add_argument("--migrate", action="store_true", help="upgrade the schema first")
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    worker.set_defaults(func=_worker)

    mig = sub.add_parser("migrate", help="upgrade the database schema (alembic upgrade head)")
    mig.set_defaults(func=_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # alembic's plugin set-up logs seven INFO lines at its import, on every start.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        # argparse would first say the command is missing, not what it did not know
        parser.error(f"unrecognized arguments: {argv[0]} (options come after the command)")
    args = parser.parse_args(argv)
    if getattr(args, "parent_pid", None) is None:  # an embedded worker's `serve` has warned
        for line in unknown_variables(os.environ):
            logging.getLogger("trainserve").warning(line)
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:  # a TRAINSERVE_* variable that does not parse
        print(f"trainserve: invalid settings:\n{_describe(exc)}", file=sys.stderr)
        return 2
    except SettingError as exc:
        print(f"trainserve: {exc}", file=sys.stderr)
        return 2


def _version() -> str:
    try:
        return importlib.metadata.version("trainserve")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "(not installed)"


def _describe(exc: ValidationError) -> str:
    return "\n".join(
        f"  TRAINSERVE_{'_'.join(str(p) for p in e['loc']).upper()}: "
        + e["msg"].removeprefix("Value error, ")  # pydantic's wording for a validator's error
        for e in exc.errors()
    )


if __name__ == "__main__":
    sys.exit(main())
