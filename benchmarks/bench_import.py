"""Import a 100,000-row subscriber CSV into a fresh database and print rows per second.

    python benchmarks/bench_import.py            # SQLite in a temporary directory
    python benchmarks/bench_import.py --pg       # PostgreSQL ($DIGEST_TEST_PG_URL), a fresh schema
    python benchmarks/bench_import.py --rows 20000

Also times a second import of the same file (the idempotent "nothing to do" pass), and counts
the rows stored, so a fast but wrong import shows.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, func, text
from sqlmodel import Session, select

from digest.storage.db import make_engine, upgrade
from subscribers import import_csv
from subscribers.models import Subscription

PG_URL = os.environ.get("DIGEST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NEWSLETTERS = ["turkey-unpacked", "climate-weekly", "business-brief"]
ZONES = ["Europe/Istanbul", "Europe/London", "America/New_York", "Asia/Kolkata", ""]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com", "News.Example.ORG"]


def make_csv(rows: int, seed: int = 8058) -> str:
    rng = random.Random(seed)
    out = io.StringIO()
    out.write("email,name,newsletters,timezone,locale\n")
    for i in range(rows):
        lists = ";".join(rng.sample(NEWSLETTERS, rng.choice((1, 1, 1, 2))))
        domain = rng.choice(DOMAINS)
        out.write(f"reader.{i}@{domain},Reader {i},{lists},{rng.choice(ZONES)},en\n")
    return out.getvalue()


def timed_import(engine: Engine, data: str) -> tuple[float, float, object]:
    """(wall seconds, this process's CPU seconds, report): CPU time shows on a busy machine."""
    start, cpu = time.perf_counter(), time.process_time()
    with Session(engine) as session:
        report = import_csv(
            session,
            io.StringIO(data),
            now=datetime.now(UTC),
            known_newsletters=set(NEWSLETTERS),
            file_name="bench.csv",
        )
        session.commit()
    return time.perf_counter() - start, time.process_time() - cpu, report


def run(engine: Engine, rows: int, label: str) -> None:
    upgrade(engine)
    data = make_csv(rows)
    seconds, cpu, report = timed_import(engine, data)
    print(
        f"{label}: first import of {rows:,} rows: {seconds:.2f} s, {rows / seconds:,.0f} rows/s"
        f" (client CPU {cpu:.2f} s)"
    )
    print(f"  {report.summary()}")  # type: ignore[attr-defined]
    again, cpu2, report2 = timed_import(engine, data)
    print(
        f"{label}: re-import (nothing to do): {again:.2f} s, {rows / again:,.0f} rows/s"
        f" (client CPU {cpu2:.2f} s)"
    )
    print(f"  {report2.summary()}")  # type: ignore[attr-defined]
    with Session(engine) as session:
        stored = session.exec(select(func.count()).select_from(Subscription)).one()
    print(f"  subscriptions stored: {stored:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pg", action="store_true", help="use PostgreSQL instead of SQLite")
    args = parser.parse_args()
    if args.pg:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = make_engine(PG_URL)
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in PG_URL else "?"
        engine = make_engine(f"{PG_URL}{sep}options=-csearch_path%3D{schema}")
        try:
            run(engine, args.rows, "postgresql")
        finally:
            engine.dispose()
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()
        return
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            run(engine, args.rows, "sqlite")
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
