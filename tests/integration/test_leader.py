"""Leadership: one scheduler leads, the others stand by and take over when it dies.

In-process tests check the locks; the last tests run two `digest scheduler` processes and kill
the leader with SIGKILL (no clean-up at all), on SQLite (lock file) and PostgreSQL (advisory
lock). Waiting there is for another process to notice a death, never for a schedule.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from digest.app import App
from digest.scheduling.leader import (
    FileLeadership,
    PostgresLeadership,
    leader_info,
    leading,
    lock_file_path,
    record_heartbeat,
)
from digest.storage.db import make_engine, upgrade
from digest.storage.models import SchedulerLeader
from tests.conftest import PG_URL, _pg_schema_url, base_config
from tests.support.scheduling import (
    digest_process,
    issues_of,
    load_sample_subscribers,
    runs_of,
    seed_articles,
    to_toml,
)

NOW = datetime(2026, 11, 30, 5, 0, 30, tzinfo=UTC)


def test_a_lock_file_admits_one_leader_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "digest.db.scheduler.lock"
    first, second = FileLeadership(path, "a"), FileLeadership(path, "b")
    assert first.try_acquire()
    assert not second.try_acquire()
    assert first.try_acquire() and first.still_leader()  # leading again is fine
    first.release()
    assert second.try_acquire()
    assert path.read_text().strip() == "b"
    second.release()


def test_a_removed_lock_file_ends_leadership(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.lock"
    leader = FileLeadership(path, "a")
    assert leader.try_acquire()
    path.unlink()
    assert not leader.still_leader()  # another process could now lock a new file
    assert FileLeadership(path, "b").try_acquire()


def test_the_lock_file_lives_next_to_the_sqlite_database(
    engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app(engine)
    assert lock_file_path(app) == Path(f"{engine.url.database}.scheduler.lock")
    custom = make_app(engine, scheduler={"lock_file": str(tmp_path / "x.lock")})
    assert lock_file_path(custom) == tmp_path / "x.lock"


def test_an_advisory_lock_admits_one_leader_and_dies_with_its_connection(
    pg_engine: Engine,
) -> None:
    other = make_engine(str(pg_engine.url.render_as_string(hide_password=False)))
    first, second = PostgresLeadership(pg_engine, "a"), PostgresLeadership(other, "b")
    try:
        assert first.try_acquire() and first.still_leader()
        assert not second.try_acquire()
        # The leader's connection dies (its process crashed, its host vanished):
        key = first.key
        assert key is not None
        with other.connect() as connection:
            pid = connection.execute(
                text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid = :hi AND objid = :lo AND objsubid = 1"
                ),
                {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
            ).scalar_one()
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert not first.still_leader()
        assert second.try_acquire() and second.still_leader()
        assert not first.try_acquire()
        second.release()
        assert first.try_acquire()
        first.release()
    finally:
        other.dispose()


def test_advisory_locks_are_per_schema(pg_url: str) -> None:
    """Two deployments sharing a database in two schemas each have their own leader."""
    other_schema = f"{pg_url.split('search_path%3D')[1]}_b"
    admin = make_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{other_schema}"'))
    engines = [make_engine(pg_url), make_engine(_pg_schema_url(other_schema))]
    try:
        leaders = [PostgresLeadership(e, f"l{i}") for i, e in enumerate(engines)]
        assert all(leader.try_acquire() for leader in leaders)
        third = make_engine(pg_url)
        assert not PostgresLeadership(third, "x").try_acquire()
        third.dispose()
        for leader in leaders:
            leader.release()
    finally:
        for engine in engines:
            engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{other_schema}" CASCADE'))
        admin.dispose()


def test_leading_records_the_holder_heartbeat_and_release(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(any_engine, now=NOW)
    with leading(app) as leadership:
        assert leadership is not None
        with leading(make_app(any_engine, now=NOW)) as second:
            assert second is None  # someone else leads
        with app.session() as session:
            info = leader_info(session, NOW + timedelta(seconds=20))
        assert info is not None and info.holder == leadership.holder and info.active
        assert info.heartbeat_age == 20
        app.clock = lambda: NOW + timedelta(seconds=30)
        record_heartbeat(app, leadership)
        with app.session() as session:
            row = session.get(SchedulerLeader, "scheduler")
            assert row is not None and row.heartbeat_at == NOW + timedelta(seconds=30)
    with app.session() as session:
        info = leader_info(session, NOW + timedelta(minutes=1))
    assert info is not None and not info.active
    assert info.state(timedelta(seconds=30)) == "released"


# -- processes


def _write_config(tmp_path: Path, url: str, schedule: str) -> Path:
    config = base_config(tmp_path)
    config["database"] = {"url": url}
    config["sources"] = []  # articles are seeded: these tests are about leadership
    config["newsletters"] = [dict(config["newsletters"][0], schedule=schedule, timezone="UTC")]
    config["scheduler"] = {"heartbeat_every": "1s", "standby_retry": "1s", "tick_every": "1h"}
    path = tmp_path / "digest.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    return path


def _leader_pid(engine: Engine) -> int | None:
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT pid, released_at FROM scheduler_leader WHERE name = 'scheduler'")
        ).first()
    return int(row[0]) if row and row[1] is None else None


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_killed_leader_is_replaced_and_the_period_still_fires_once(
    db_url: str, make_app: Callable[..., App], tmp_path: Path
) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    # A schedule whose latest period was 10 minutes ago: each new leader's first tick (the
    # catch-up) finds it due, so a period is in play at every change of leader.
    real_now = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    config = _write_config(tmp_path, db_url, f"{real_now.minute} {real_now.hour} * * *")
    app = make_app(engine, now=real_now)
    seed_articles(app)
    load_sample_subscribers(app)

    processes = [
        digest_process(["scheduler"], config=config, database_url=db_url) for _ in range(2)
    ]
    try:
        first = _wait_for(lambda: _leader_pid(engine), "a leader")
        _wait_for(
            lambda: [r for r in runs_of(engine) if r.outcome == "sent"],
            "the first leader's catch-up tick to send",
        )
        by_pid = {p.pid: p for p in processes}
        assert first in by_pid
        os.kill(int(str(first)), signal.SIGKILL)
        by_pid[int(str(first))].wait(timeout=10)
        second = _wait_for(
            lambda: (pid := _leader_pid(engine)) and pid != first and pid, "a new leader"
        )
        assert second in by_pid and by_pid[int(str(second))].poll() is None
        # The new leader's catch-up tick has run once it heartbeats; the period is not refired.
        _wait_for(lambda: _heartbeats_after_takeover(engine), "the new leader's heartbeat")
        # SIGHUP reloads the configuration; the reload's catch-up tick shows it happened.
        ticked = _last_tick(engine)
        by_pid[int(str(second))].send_signal(signal.SIGHUP)
        _wait_for(lambda: _last_tick(engine) != ticked, "the tick after a reload")
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        outputs = [_finish(p) for p in processes]
    survivors = [out for p, out in zip(processes, outputs, strict=True) if p.returncode == 0]
    assert len(survivors) == 1, outputs  # the killed one died of SIGKILL, the other exited 0
    assert "configuration reloaded" in survivors[0] and "scheduler stopped" in survivors[0]
    assert len(issues_of(engine, "turkey-unpacked")) == 1
    assert [r.outcome for r in runs_of(engine)] == ["sent"]
    engine.dispose()


def _last_tick(engine: Engine) -> object:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT last_finished_at FROM scheduler_job WHERE name = 'tick'")
        ).scalar()


def _heartbeats_after_takeover(engine: Engine) -> bool:
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT acquired_at, heartbeat_at FROM scheduler_leader")
        ).first()
    return bool(row and row[1] > row[0])


def _finish(process: subprocess.Popen[str]) -> str:
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return f"rc={process.returncode}\n{out}\n{err}"
