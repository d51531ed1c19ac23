"""Leadership: of several scheduler processes, one works and the others stand by.

PostgreSQL: a session-level advisory lock held on a dedicated connection. When the leader dies
its connection closes and the server releases the lock, so a stand-by's next try wins. The
lock's connection asks the server for TCP keepalives so that a leader whose host vanished is
noticed in about half a minute, not after the kernel's two hours.

SQLite: an exclusive `flock` on a lock file next to the database; the kernel releases it when
the process dies.

The lock is the truth; the `scheduler_leader` row only shows people (and `digest status`,
`/metrics`) who leads and when it last proved alive. Leadership saves duplicate work: what
makes a period fire once is the unique (newsletter, period) row (`digest.scheduling.tick`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from digest.app import App
from digest.storage.db import is_postgres
from digest.storage.models import SchedulerLeader

log = logging.getLogger("digest.leader")

LEADER_ROW = "scheduler"


def new_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leadership(Protocol):
    holder: str
    backend: str

    def try_acquire(self) -> bool:
        """Take the lock without waiting; True when this process leads (again)."""
        ...

    def still_leader(self) -> bool:
        """Check that the lock is still ours (a lost connection loses it)."""
        ...

    def release(self) -> None: ...


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class PostgresLeadership:
    """`pg_try_advisory_lock` on a connection kept for as long as we lead."""

    backend = "postgresql advisory lock"

    def __init__(self, engine: Engine, holder: str | None = None, name: str = LEADER_ROW) -> None:
        self.engine = engine
        self.holder = holder or new_holder_id()
        self.name = name
        self._connection: Connection | None = None
        self._key: int | None = None

    def try_acquire(self) -> bool:
        if self._connection is not None:
            return self.still_leader()
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            # Advisory locks are per database: key them by schema too, so that deployments
            # (and tests) sharing a database in separate schemas do not block each other.
            schema = connection.execute(text("SELECT current_schema()")).scalar_one()
            key = lock_key(f"digest:{schema}:{self.name}")
            got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
            if not got.scalar_one():
                connection.close()
                return False
            for setting, value in (("idle", 10), ("interval", 5), ("count", 3)):
                connection.execute(text(f"SET tcp_keepalives_{setting} = {value}"))
        except Exception:
            connection.invalidate()
            connection.close()
            raise
        self._connection, self._key = connection, key
        return True

    @property
    def key(self) -> int | None:
        """The advisory-lock key while leading (for operators: `pg_locks` shows it)."""
        return self._key

    def still_leader(self) -> bool:
        if self._connection is None or self._key is None:
            return False
        key = self._key
        try:
            held = self._connection.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND pid = pg_backend_pid() AND classid = :hi AND objid = :lo"
                    " AND objsubid = 1"
                ),
                {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
            ).scalar_one()
        except Exception as exc:
            log.error("lost the leader lock's connection: %s", type(exc).__name__)
            self._forget()
            return False
        if not held:
            self._forget()
        return bool(held)

    def release(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
        except Exception as exc:  # the lock dies with the connection anyway
            log.warning("could not unlock (%s); closing the connection", type(exc).__name__)
        self._forget()

    def _forget(self) -> None:
        connection, self._connection, self._key = self._connection, None, None
        if connection is not None:
            # Never hand a connection that may hold the lock back to the pool.
            connection.invalidate()
            connection.close()


class FileLeadership:
    """An exclusive `flock` on a lock file (SQLite deployments, one host)."""

    backend = "lock file"

    def __init__(self, path: Path, holder: str | None = None) -> None:
        self.path = path
        self.holder = holder or new_holder_id()
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return self.still_leader()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.holder}\n".encode())
        self._fd = fd
        return True

    def still_leader(self) -> bool:
        if self._fd is None:
            return False
        try:
            # Someone deleting the file would let a second process lock a new one.
            same = os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            same = False
        if not same:
            log.error("the lock file %s was removed or replaced: giving up leadership", self.path)
            self.release()
        return same

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def lock_file_path(app: App) -> Path:
    configured = app.settings.scheduler.lock_file
    if configured:
        return Path(configured)
    database = make_url(str(app.settings.database.url)).database
    if not database or database == ":memory:":
        raise ValueError("[scheduler] lock_file is required with an in-memory SQLite database")
    return Path(f"{database}.scheduler.lock")


def leadership_for(app: App, holder: str | None = None) -> Leadership:
    if is_postgres(app.engine):
        return PostgresLeadership(app.engine, holder)
    return FileLeadership(lock_file_path(app), holder)


@contextmanager
def leading(app: App, leadership: Leadership | None = None) -> Iterator[Leadership | None]:
    """Lead for the length of a block (`digest run-due`), or yield None when another does."""
    leadership = leadership or leadership_for(app)
    if not leadership.try_acquire():
        yield None
        return
    try:
        record_heartbeat(app, leadership, acquired=True)
        yield leadership
    finally:
        leadership.release()
        record_release(app, leadership)


# ------------------------------------------------------------------------------ visibility


def record_heartbeat(app: App, leadership: Leadership, *, acquired: bool = False) -> None:
    """Show that `leadership.holder` leads and is alive at `app.now()`."""
    now = app.now()
    with app.session() as session:
        row = _leader_row(session, leadership.holder, now)
        if acquired or row.holder != leadership.holder:
            row.holder, row.acquired_at = leadership.holder, now
            row.host, _, pid = leadership.holder.partition(":")
            row.pid = int(pid.split(":")[0]) if pid.split(":")[0].isdigit() else 0
        row.heartbeat_at = now
        row.released_at = None
        session.add(row)


def record_release(app: App, leadership: Leadership) -> None:
    with app.session() as session:
        row = session.get(SchedulerLeader, LEADER_ROW)
        if row is not None and row.holder == leadership.holder:
            row.released_at = app.now()
            session.add(row)


def _leader_row(session: Session, holder: str, now: datetime) -> SchedulerLeader:
    row = session.get(SchedulerLeader, LEADER_ROW)
    if row is not None:
        return row
    row = SchedulerLeader(name=LEADER_ROW, holder=holder, acquired_at=now, heartbeat_at=now)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        found = session.get(SchedulerLeader, LEADER_ROW)
        if found is None:
            raise
        return found
    return row


@dataclass(frozen=True)
class LeaderInfo:
    holder: str
    acquired_at: datetime
    heartbeat_at: datetime
    released_at: datetime | None
    heartbeat_age: float  # seconds

    @property
    def active(self) -> bool:
        return self.released_at is None

    def as_dict(self, stale_after: timedelta) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "acquired_at": self.acquired_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "heartbeat_age_seconds": round(self.heartbeat_age, 1),
            "released_at": self.released_at.isoformat() if self.released_at else None,
            "state": self.state(stale_after),
        }

    def state(self, stale_after: timedelta) -> str:
        if not self.active:
            return "released"
        if self.heartbeat_age > stale_after.total_seconds():
            return "stale"
        return "leading"


def leader_info(session: Session, now: datetime) -> LeaderInfo | None:
    row = session.get(SchedulerLeader, LEADER_ROW)
    if row is None:
        return None
    return LeaderInfo(
        holder=row.holder,
        acquired_at=row.acquired_at,
        heartbeat_at=row.heartbeat_at,
        released_at=row.released_at,
        heartbeat_age=max((now - row.heartbeat_at).total_seconds(), 0.0),
    )
