"""digest's send as procrastinate or pgqueuer jobs, for `bench_worker_libs.py` (never digest's).

Run by the benchmark in `var/worker-libs` (where both libraries are installed), one process per
worker: `python benchmarks/worker_libs_jobs.py procrastinate|pgqueuer CONCURRENCY`, with
BENCH_DB_URL (SQLAlchemy URL), BENCH_API_URL (the SendGrid test server) and BENCH_READY (a file
to create once the worker is about to take jobs) in the environment.

The integration a real one would be. The scheduler defers one `digest_freeze` job per issue; the
worker that takes it starts the issue and freezes its audience page by page with digest's own
freeze step (`send._freeze_step`, what `send_issue` runs), deferring one `digest_send_batch` job
per batch each page cut, so sending starts after the first page as with `digest worker`. One job
per batch, not per issue: a job per issue would leave the library nothing to do but start
`send_issue` (the loop `digest worker` already is); per batch, the library owns what it offers,
distributing units of work, their concurrency and their retries. A batch job runs
`SendRun._one_batch`, the code each of `send_issue`'s threads runs: `ledger.claim` takes the next
pending batch of the issue by compare-and-set (SKIP LOCKED), the transport sends it,
`ledger.record` stores the outcome. The job carries its batch id as a label only: which batch a
job sends is the ledger's choice, so a job run again (both libraries are at-least-once) claims
another pending batch or nothing, never the one its dead run left in flight, which
`ledger.release_stale` marks unknown. The job that finds nothing left pending or in flight marks
the issue sent (`ledger.finish_if_done`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_send import _config, _env  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from digest.app import App  # noqa: E402
from digest.config import settings_from_mapping  # noqa: E402
from digest.sending import freeze, ledger  # noqa: E402
from digest.sending.claimer import Claimer  # noqa: E402
from digest.sending.counts import delivery_counts  # noqa: E402
from digest.sending.fleet_rate import shared_limiter  # noqa: E402
from digest.sending.run import LEASE, SendRun  # noqa: E402
from digest.sending.send import _freeze_step, check_sendable, sendable_statuses  # noqa: E402
from digest.storage.models import BatchStatus, Issue, IssueStatus, SendBatch  # noqa: E402
from digest.transports import RetryPolicy, Transport, build_transport  # noqa: E402

FREEZE = "digest_freeze"
SEND_BATCH = "digest_send_batch"
_B = SendBatch.__table__  # type: ignore[attr-defined]


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as libpq takes it (the bench schema's search_path kept)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def asyncpg_connection(url: str) -> Any:
    """An asyncpg connection to the bench schema (asyncpg takes the search_path apart)."""
    import asyncpg

    parsed = make_url(url)
    options = str(parsed.query.get("options", ""))
    settings = dict([options.removeprefix("-c").split("=", 1)]) if options else {}
    dsn = parsed.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    return await asyncpg.connect(dsn, server_settings=settings)


class Sender:
    """digest's side of one worker process: one claimer, transport and `SendRun` per issue,
    shared by the library's concurrent jobs as `send_issue`'s threads share them."""

    def __init__(self, app: App) -> None:
        self.app = app
        settings = app.settings
        policy = RetryPolicy(max_attempts=settings.delivery.max_retries + 1)
        name = str(settings.delivery.transport)
        self.limiter = shared_limiter(
            app.engine, name, settings.delivery.rate_limit, sleep=policy.sleep
        )
        if self.limiter is not None:  # the fleet's 429 pause, as send_issue wires it
            policy = dataclasses.replace(policy, on_pause=self.limiter.pause)
        self.policy = policy
        self.claimer = Claimer.new()
        self.claimer.activate()
        self._transport: Transport | None = None
        self._runs: dict[int, SendRun] = {}
        self._lock = threading.Lock()

    def transport(self) -> Transport:
        with self._lock:
            if self._transport is None:
                self._transport = build_transport(self.app.settings, policy=self.policy)
            return self._transport

    def batch_size(self) -> int:
        return _batch_size(self.app, self.transport())

    def run(self, issue_id: int) -> SendRun:
        """This process's send run of the issue (its heartbeat refreshes our claims)."""
        transport = self.transport()
        with self._lock:
            run = self._runs.get(issue_id)
            if run is None:
                with self.app.session() as session:
                    issue = session.get(Issue, issue_id)
                assert issue is not None
                newsletter = self.app.settings.newsletter(issue.newsletter)
                run = SendRun(
                    self.app, issue, newsletter, transport, self.claimer, self.policy, None,
                    None, 0, _batch_size(self.app, transport), limiter=self.limiter,
                )  # fmt: skip
                threading.Thread(target=run._heartbeat, daemon=True).start()
                self._runs[issue_id] = run
            return run

    def start_freeze(self, issue_id: int) -> Callable[[], bool]:
        """Start the issue (compare-and-set) if nobody has; the freeze's one-page step."""
        app = self.app
        with app.session() as session:
            issue = session.get(Issue, issue_id)
        assert issue is not None
        newsletter = app.settings.newsletter(issue.newsletter)
        check_sendable(issue, newsletter, force=False)
        if issue.status not in (IssueStatus.SENDING, IssueStatus.SENT):
            with app.session() as session:
                freeze.start(
                    session, issue_id=issue_id, from_statuses=sendable_statuses(newsletter),
                    now=app.now(),
                )  # fmt: skip
        return _freeze_step(app, issue_id, newsletter, self.batch_size())

    def pending_after(self, issue_id: int, after: int) -> list[int]:
        """Ids of the issue's pending batches past `after` (the page just frozen)."""
        with self.app.session() as session:
            return list(
                session.scalars(
                    select(_B.c.id)
                    .where(_B.c.issue_id == issue_id, _B.c.id > after)
                    .where(_B.c.status == BatchStatus.PENDING)
                    .order_by(_B.c.id)
                )
            )

    def send_batch(self, issue_id: int) -> bool:
        """Claim, send and record one batch of the issue; False if none was pending."""
        run = self.run(issue_id)
        before = run.batches
        run._one_batch(None)  # raises on a bug or an outage: the library's failed job
        return run.batches > before

    def finish_if_last(self, issue_id: int) -> bool:
        """Mark the issue sent when its audience is frozen and no batch is pending or in flight
        (a dead sender's batch is marked unknown first, which keeps the issue from `sent`)."""
        app = self.app
        with app.session() as session:
            if freeze.freezing_after(session, issue_id) is not None:
                return False
            left = dict(
                session.execute(
                    select(_B.c.status, func.count())
                    .where(_B.c.issue_id == issue_id)
                    .where(_B.c.status.in_([BatchStatus.PENDING, BatchStatus.SENDING]))
                    .group_by(_B.c.status)
                ).all()
            )
        if left.get(BatchStatus.PENDING):
            return False
        if left.get(BatchStatus.SENDING):
            with app.session() as session:
                ledger.release_stale(
                    session, issue_id=issue_id, me=self.claimer, now=app.now(), lease=LEASE
                )
                still = session.execute(
                    select(func.count()).where(
                        _B.c.issue_id == issue_id, _B.c.status == BatchStatus.SENDING
                    )
                ).scalar()
            if still:
                return False  # its live sender finishes the issue
        with app.session() as session:
            counts = delivery_counts(session, issue_id)
            return ledger.finish_if_done(session, issue_id=issue_id, now=app.now(), counts=counts)


def _batch_size(app: App, transport: Transport) -> int:
    return max(1, min(app.settings.delivery.batch_size, transport.max_batch_size))


async def freeze_and_fan_out(
    sender: Sender, issue_id: int, defer: Callable[[int, list[int]], Any]
) -> None:
    """The freeze job: a page at a time, then one batch job per batch that page cut."""
    step = await asyncio.to_thread(sender.start_freeze, issue_id)
    last = 0
    while True:
        more = await asyncio.to_thread(step)
        batches = await asyncio.to_thread(sender.pending_after, issue_id, last)
        if batches:
            await defer(issue_id, batches)
            last = batches[-1]
        if not more:
            break
    await asyncio.to_thread(sender.finish_if_last, issue_id)


def send_one(sender: Sender, issue_id: int) -> None:
    """The batch job's body (in a thread of the library's)."""
    sender.send_batch(issue_id)
    sender.finish_if_last(issue_id)


def _sender() -> Sender:
    url, api_url = os.environ["BENCH_DB_URL"], os.environ["BENCH_API_URL"]
    return Sender(App(settings=settings_from_mapping(_config(url, api_url), env=_env())))


def _ready() -> None:
    Path(os.environ["BENCH_READY"]).touch()


def run_procrastinate(concurrency: int) -> None:
    import procrastinate

    sender = _sender()
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=libpq_url(os.environ["BENCH_DB_URL"]))
    )

    @app.task(name=SEND_BATCH)
    def send_batch(issue_id: int, batch_id: int) -> None:  # sync: procrastinate runs it in a thread
        send_one(sender, issue_id)

    @app.task(name=FREEZE)
    async def freeze_issue(issue_id: int) -> None:
        async def defer(issue: int, batches: list[int]) -> None:
            await send_batch.batch_defer_async(
                *({"issue_id": issue, "batch_id": b} for b in batches)
            )

        await freeze_and_fan_out(sender, issue_id, defer)

    async def main() -> None:
        async with app.open_async():
            _ready()
            await app.run_worker_async(concurrency=concurrency, delete_jobs="never")

    asyncio.run(main())


def run_pgqueuer(concurrency: int) -> None:
    from pgqueuer import AsyncpgDriver, PgQueuer
    from pgqueuer.models import Job

    sender = _sender()

    async def main() -> None:
        # asyncpg, one connection for the QueueManager: what pgqueuer's tuning guide says (its
        # psycopg driver shares one connection between LISTEN and the queries).
        connection = await asyncpg_connection(os.environ["BENCH_DB_URL"])
        pgq = PgQueuer(AsyncpgDriver(connection))
        queries = pgq.qm.queries

        @pgq.entrypoint(SEND_BATCH)
        async def send_batch(job: Job) -> None:  # pgqueuer 1.6 takes async entrypoints only
            payload = json.loads(job.payload or b"{}")
            await asyncio.to_thread(send_one, sender, int(payload["issue_id"]))

        async def defer(issue: int, batches: list[int]) -> None:
            payloads = [json.dumps({"issue_id": issue, "batch_id": b}).encode() for b in batches]
            await queries.enqueue([SEND_BATCH] * len(batches), payloads, [0] * len(batches))  # type: ignore[arg-type]

        @pgq.entrypoint(FREEZE)
        async def freeze_issue(job: Job) -> None:
            await freeze_and_fan_out(
                sender, int(json.loads(job.payload or b"{}")["issue_id"]), defer
            )

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):  # drain: pgqueuer's own CLI does this
            loop.add_signal_handler(signum, pgq.shutdown.set)
        # `concurrency` batches sent at once: the threads the jobs run in. pgqueuer holds up to
        # twice as many jobs (its per-worker cap must be at least twice the fetch batch, and a
        # finished job frees its slot only once its status is flushed, 0.1 s later): with the
        # cap at `concurrency` the threads idled between jobs (100k, psycopg driver, load 6-7:
        # 41 s, against 31 s so; asyncpg then 12 s).
        # An entrypoint's concurrency_limit would be the whole fleet's, not this worker's.
        loop.set_default_executor(ThreadPoolExecutor(concurrency, thread_name_prefix="digest-job"))
        _ready()
        await pgq.qm.run(batch_size=concurrency, max_concurrent_tasks=2 * concurrency)
        await connection.close()

    asyncio.run(main())


if __name__ == "__main__":
    library, concurrency = sys.argv[1], int(sys.argv[2])
    {"procrastinate": run_procrastinate, "pgqueuer": run_pgqueuer}[library](concurrency)
