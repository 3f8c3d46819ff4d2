"""Engine creation for SQLite (default, a file under the data dir) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel, create_engine

from refloop.store import imaging, tables  # noqa: F401  (registers the tables)


def sqlite_url(data_dir: str | Path) -> str:
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'refloop.db'}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # WAL: readers (CLI, API) never block the worker's writes
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    SQLModel.metadata.create_all(engine)
    return engine
