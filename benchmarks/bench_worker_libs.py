"""One issue sent by N worker processes three ways: `digest worker`, procrastinate, pgqueuer (#15).

Run: `make bench-worker-libs` (builds `var/worker-libs`, a scratch virtualenv with digest,
procrastinate 3.10 and pgqueuer 1.6, and runs this in it), or
`var/worker-libs/bin/python benchmarks/bench_worker_libs.py [--size 1000000] [--workers 1,2]
[--ways digest,procrastinate,pgqueuer]`. Elsewhere (`make bench`'s .venv, which
has neither library) it says so and stops.

Each measurement is a fresh PostgreSQL schema holding `--size` subscribers and the rendered
issue (bench_send's `prepare`), the job libraries' own tables created in it too, and a fresh
SendGrid test server in its own process. `digest`: `bench_workers.measure`, N `digest worker`
processes, timed from the hand-over to `sent`. `procrastinate` / `pgqueuer`: N worker processes of
that library (`worker_libs_jobs.py`: a freeze job per issue fanning out one job per batch, each
sent through digest's claim, transport and record), timed from the freeze job's defer to `sent`.
Each library worker takes 4 jobs at once, as `digest worker` sends 4 batches at once (bench_send's
`delivery.concurrency`); the freeze job holds one of the 4 while it runs.
After each run the ledger is read back: every delivery accepted, every batch claimed once
(`attempts`), and as many recipients at the server as subscribers: mailed exactly once.
CPU-seconds per 1000 recipients are the workers' own, start-up excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_send import API_KEY, SLUG, _config, _env, cpu_seconds, database, prepare  # noqa: E402
from bench_workers import _wait  # noqa: E402
from bench_workers import measure as measure_digest  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from sqlmodel import Session  # noqa: E402
from worker_libs_jobs import FREEZE, asyncpg_connection, libpq_url  # noqa: E402

from digest.sending.counts import delivery_counts  # noqa: E402
from digest.storage.db import make_engine  # noqa: E402
from digest.storage.models import Issue, IssueStatus, SendBatch  # noqa: E402

JOBS = ROOT / "benchmarks" / "worker_libs_jobs.py"
WAYS = ("digest", "procrastinate", "pgqueuer")
_B = SendBatch.__table__  # type: ignore[attr-defined]
# Jobs at once per library worker: the batches `digest worker` sends at once (bench_send's config).
CONCURRENCY = int(_config("", "")["delivery"]["concurrency"])


@contextmanager
def counting_server() -> Iterator[tuple[str, dict[str, int]]]:
    """bench_send's SendGrid test server, one per run, so its closing summary counts that run's
    recipients (filled in on exit)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.sendgrid_server", "--validate", "rules", "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: dict[str, int] = {}
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the SendGrid test server did not start: {url!r}")
        seen["pid"] = process.pid
        yield url, seen
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        words = (output.strip().splitlines() or [""])[-1].split()
        # "accepted R requests / N recipients, rejected X, ..."
        if len(words) > 7 and words[0] == "accepted":
            seen["recipients"], seen["rejected"] = int(words[4]), int(words[7].rstrip(","))


async def _install_and_defer(library: str, url: str, issue_id: int) -> None:
    """The library's schema in the bench schema; with `issue_id`, defer the issue's freeze job."""
    if library == "procrastinate":
        import procrastinate

        connector = procrastinate.PsycopgConnector(conninfo=libpq_url(url))
        app = procrastinate.App(connector=connector)
        async with app.open_async():
            if issue_id:
                await app.configure_task(FREEZE).defer_async(issue_id=issue_id)
            else:
                await app.schema_manager.apply_schema_async()
        return
    from pgqueuer import AsyncpgDriver, Queries

    connection = await asyncpg_connection(url)
    try:
        queries = Queries(AsyncpgDriver(connection))
        if issue_id:
            await queries.enqueue(FREEZE, f'{{"issue_id": {issue_id}}}'.encode())
        else:
            await queries.install()
    finally:
        await connection.close()


def measure_library(
    library: str, url: str, api_url: str, size: int, workers: int, concurrency: int, tmp: Path
) -> dict[str, Any]:
    issue_id = prepare(url, size)
    asyncio.run(_install_and_defer(library, url, 0))
    env = {**os.environ, **_env(), "BENCH_DB_URL": url, "BENCH_API_URL": api_url}
    env["SENDGRID_API_KEY"] = API_KEY
    ready = [tmp / f"ready-{library}-{workers}-{i}" for i in range(workers)]
    logs = [(tmp / f"{library}-{workers}-{i}.log").open("w") for i in range(workers)]
    processes = [
        subprocess.Popen(
            [sys.executable, str(JOBS), library, str(concurrency)],
            cwd=ROOT,
            env={**env, "BENCH_READY": str(flag)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for flag, log in zip(ready, logs, strict=True)
    ]
    engine = make_engine(url)
    try:
        _wait(lambda: all(f.exists() for f in ready), f"{workers} {library} workers", 60)
        time.sleep(1.0)  # from the flag to the first fetch: a few queries each
        for process, log in zip(processes, logs, strict=True):
            if process.poll() is not None:
                raise RuntimeError(f"a worker failed:\n{Path(log.name).read_text()[-3000:]}")
        cpu_before = sum(cpu_seconds(p.pid) for p in processes)
        started = time.perf_counter()
        asyncio.run(_install_and_defer(library, url, issue_id))

        def sent() -> bool:
            if any(p.poll() is not None for p in processes):
                raise RuntimeError(f"a {library} worker exited during the send")
            with Session(engine) as session:
                issue = session.get(Issue, issue_id)
                return issue is not None and issue.status == IssueStatus.SENT

        _wait(sent, "the issue to be sent", 1800)
        seconds = time.perf_counter() - started
        cpu = sum(cpu_seconds(p.pid) for p in processes) - cpu_before
    except BaseException:
        for log in logs:
            log.flush()
            print(f"--- {log.name}:\n{Path(log.name).read_text()[-2000:]}", file=sys.stderr)
        raise
    finally:
        for process in processes:
            process.terminate()
        for process, log in zip(processes, logs, strict=True):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
        engine.dispose()
    return {"seconds": seconds, "cpu": cpu}


def ledger_check(url: str, size: int) -> dict[str, Any]:
    """What the ledger says after the run: counts by state, batches and their claims."""
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            (issue_id,) = session.execute(select(Issue.id)).one()  # type: ignore[call-overload]
            counts = delivery_counts(session, issue_id)
            batches, frozen, claims = session.execute(
                select(func.count(), func.sum(_B.c.size), func.max(_B.c.attempts)).where(
                    _B.c.issue_id == issue_id
                )
            ).one()
            deliveries = session.execute(
                text("SELECT count(*), count(DISTINCT subscriber_id) FROM delivery")
            ).one()
    finally:
        engine.dispose()
    accepted = counts.get("accepted", 0)
    others = {k: v for k, v in counts.items() if k != "accepted" and v}
    return {
        "accepted": accepted,
        "others": others,
        "batches": int(batches),
        "max_attempts": int(claims or 0),
        "once": accepted == size == int(frozen or 0) == deliveries[1] == deliveries[0]
        and not others
        and claims == 1,
    }


def _line(way: str, workers: int, size: int, r: dict[str, Any], base: float | None) -> str:
    rate = size / r["seconds"]
    ratio = f" ({rate / base:.2f}x 1)" if base else ""
    server = r.get("server", {})
    once = "yes" if r["once"] and server.get("recipients") == size else "NO"
    return (
        f"{way:13} {workers} worker(s), {size:,} recipients ({SLUG}): {r['seconds']:6.1f} s, "
        f"{rate:,.0f}/s{ratio}; workers' CPU {r['cpu']:.1f} s = "
        f"{r['cpu'] / size * 1000:.3f} CPU-s per 1000; server CPU {r['server_cpu']:.1f} s; "
        f"exactly once: {once} (accepted {r['accepted']:,}, other states {r['others'] or 'none'}, "
        f"{r['batches']} batches claimed at most {r['max_attempts']}x, server counted "
        f"{server.get('recipients', '?'):,} recipients, rejected {server.get('rejected', '?')}); "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--ways", default=",".join(WAYS))
    args = parser.parse_args()
    ways = [w for w in args.ways.split(",") if w]
    missing = [m for m in ("procrastinate", "pgqueuer") if importlib.util.find_spec(m) is None]
    if missing and set(ways) - {"digest"}:
        print(f"skipped: {', '.join(missing)} not installed here; run `make bench-worker-libs`")
        return 0
    counts = [int(n) for n in args.workers.split(",") if n]
    print(f"load average at start {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-worker-libs-") as tmp:
        for way in ways:
            base = None
            for workers in counts:
                with (
                    counting_server() as (api_url, server),
                    database("postgresql", Path(tmp)) as url,
                ):
                    server_before = cpu_seconds(server["pid"])
                    if way == "digest":
                        result = measure_digest(url, api_url, args.size, workers, Path(tmp))
                    else:
                        result = measure_library(
                            way, url, api_url, args.size, workers, CONCURRENCY, Path(tmp)
                        )
                    result["server_cpu"] = cpu_seconds(server["pid"]) - server_before
                    result.update(ledger_check(url, args.size))
                result["server"] = server
                print(_line(way, workers, args.size, result, base), flush=True)
                base = base or args.size / result["seconds"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
