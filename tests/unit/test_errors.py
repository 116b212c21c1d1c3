"""The error handlers: one JSON shape, and the right status for what went wrong."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from service.errors import install_error_handlers


def test_a_database_that_does_not_answer_is_503_with_retry_after() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/down")
    def down() -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    @app.get("/bug")
    def bug() -> None:
        raise RuntimeError("a bug")

    client = TestClient(app, raise_server_exceptions=False)
    response = client.get("/down")
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert response.json()["error"]["code"] == "database_unavailable"
    assert client.get("/bug").status_code == 500  # anything else is still our fault
