"""SendGrid webhook events applied per second on PostgreSQL, with a sent issue's counts kept exact.

Run: `.venv/bin/python benchmarks/bench_events.py [--recipients 100000] [--batch 1000]
[--via direct,http] [--connections 4]` (also run by `make bench`).

A sent issue of `--recipients` deliveries is built with `INSERT … SELECT generate_series`
(`benchmarks/sent_rows.py`: accepted batches of 1000, counts stored by `snapshot.take`), one
per way of applying. Its events are what SendGrid sends after such a send, in the order it
sends them (waves): processed and delivered for everyone, deferred first for 2%, opens for
20%, clicks for 5%, bounces for 1% (a fifth of them hard: the address is suppressed, one
event at a time), and 1% of every wave posted twice (SendGrid's retries). They go in batches
of `--batch` (SendGrid posts up to about a thousand), each batch one transaction:

- `direct`: `apply_sendgrid_events` in a session per batch, committed, one after another (the
  database work and the Python around it, no HTTP);
- `http`: what SendGrid does: signed `POST /webhooks/sendgrid` requests to `digest serve`'s app
  under uvicorn in a process of its own (`--serve`, as `digest serve` runs it), from an httpx
  client keeping `--connections` requests in flight (SendGrid posts over a few connections at
  once). The whole request is timed: HTTP, ECDSA verification, JSON parsing, the events
  applied and committed. The bodies are signed beforehand (SendGrid's work, not ours). The
  in-process TestClient measured before spent a fifth of its time in its own thread hops.

Reported: events/s for each, the CPU-seconds per 1000 events of digest's process and of the
PostgreSQL backends serving it (on a shared machine, steadier than the rate), then the issue's
stored counts checked against a recount of its deliveries (concurrent batches included).
Target: at least 20,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from sqlalchemy import text  # noqa: E402

from benchmarks.sent_rows import NOW, fill, mark_sent  # noqa: E402
from digest.app import App, fixed_clock  # noqa: E402
from digest.config import Settings, settings_from_mapping  # noqa: E402
from digest.sending import snapshot  # noqa: E402
from digest.sending.events import apply_sendgrid_events  # noqa: E402
from digest.storage.db import make_engine, upgrade  # noqa: E402
from tests.support.sending import make_issue  # noqa: E402

PG_URL = os.environ.get("DIGEST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SLUG = "turkey-unpacked"
TARGET = 20_000


def waves(issue_id: int, rows: list[tuple[int, str]], seed: int) -> list[dict[str, Any]]:
    """Every event of the issue, wave after wave, 1% of each wave sent twice."""
    rng = random.Random(seed)
    at = int(NOW.timestamp()) - 3600

    def event(kind: str, delivery: tuple[int, str], **extra: Any) -> dict[str, Any]:
        return {
            "email": delivery[1], "timestamp": at, "event": kind,
            "sg_event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "sg_message_id": f"m{delivery[0]}.filter", "digest_delivery_id": str(delivery[0]),
            "digest_issue_id": str(issue_id), "digest_newsletter": SLUG, **extra,
        }  # fmt: skip

    bounced = set(rng.sample(range(len(rows)), len(rows) // 100))
    out: list[dict[str, Any]] = []
    for wave in (
        [event("processed", d) for d in rows],
        [event("deferred", d, response="421 busy") for d in rows if rng.random() < 0.02],
        [
            event("bounce", d, type="bounce" if i % 5 == 0 else "blocked", reason="550 no")
            if i in bounced
            else event("delivered", d, response="250 OK")
            for i, d in enumerate(rows)
        ],
        [event("open", d) for d in rows if rng.random() < 0.2],
        [event("click", d, url="https://news.example.com/a") for d in rows if rng.random() < 0.05],
    ):
        again = rng.sample(wave, len(wave) // 100)
        out += wave + again
    return out


class Signer:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_b64 = base64.b64encode(der).decode()

    def headers(self, body: bytes) -> dict[str, str]:
        stamp = str(int(NOW.timestamp()))
        signature = self.key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }


def sent_issue(app: App, period: str, recipients: int, first: int) -> list[tuple[int, str]]:
    issue_id = make_issue(app.engine, SLUG, period=period)
    fill(app.engine, issue_id, recipients, first=first, mixed=False)
    with app.engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
    mark_sent(app.engine, issue_id)
    with app.engine.connect() as connection:
        found = connection.execute(
            text("SELECT id, email FROM delivery WHERE issue_id = :i ORDER BY id"), {"i": issue_id}
        ).all()
    return [(issue_id, "")] + [(int(d), str(e)) for d, e in found]


def run(
    app: App, via: str, events: list[dict[str, Any]], size: int, signer: Signer, connections: int
) -> tuple[float, float, float]:
    """Seconds to apply every batch; CPU-seconds of digest's process (this one for `direct`,
    the server for `http`) and of the PostgreSQL backends serving it."""
    batches = [events[i : i + size] for i in range(0, len(events), size)]
    if via == "direct":
        database = backends_cpu(app)
        cpu, started = time.process_time(), time.perf_counter()
        for batch in batches:
            with app.session() as session:
                apply_sendgrid_events(session, batch, now=app.now())
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        return seconds, cpu, backends_cpu(app) - database
    bodies = [json.dumps(b, separators=(",", ":")).encode() + b"\r\n" for b in batches]
    signed = [(body, signer.headers(body)) for body in bodies]
    with Server(signer.public_b64, app.settings.database.url) as server:
        cpu, database = server.cpu(), backends_cpu(app)
        seconds = asyncio.run(post_all(server.url, signed, connections))
        return seconds, server.cpu() - cpu, backends_cpu(app) - database


def backends_cpu(app: App) -> float:
    """CPU-seconds of the PostgreSQL backends of this run (its `application_name`, asked over a
    connection of another name), this machine's processes: the database's share."""
    name = app.engine.url.query["application_name"]
    engine = make_engine(PG_URL)
    try:
        with engine.connect() as connection:
            pids = connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": name},
            ).scalars()
            return sum(cpu_seconds(int(pid)) for pid in pids)
    finally:
        engine.dispose()


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0  # ended meanwhile
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def post_all(url: str, signed: list[tuple[bytes, dict[str, str]]], connections: int) -> float:
    """POST every body, `connections` at a time, in order; seconds from the first to the last."""
    pending = iter(signed)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        for answer in await asyncio.gather(*(client.get("/healthz") for _ in range(connections))):
            answer.raise_for_status()  # connected before the clock starts

        async def worker() -> None:
            for body, headers in pending:
                answer = await client.post("/webhooks/sendgrid", content=body, headers=headers)
                assert answer.status_code == 200, answer.text

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return time.perf_counter() - started


class Server:
    """`digest serve`'s app under uvicorn in a child process (`--serve`), on a free port."""

    def __init__(self, public_key: str, database_url: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "BENCH_KEY": public_key, "BENCH_DB": database_url,
               "BENCH_PORT": str(self.port)}  # fmt: skip
        self.log = open(os.devnull, "wb")  # noqa: SIM115 (closed in __exit__)
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"], env=env, stdout=self.log, stderr=subprocess.PIPE
        )

    def __enter__(self) -> Server:
        """Once `/healthz` answers (the app has imported everything and reached the database)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server died: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not answer /healthz within 60 s")

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def serve() -> None:
    """The `--serve` child: the app as `digest serve` runs it, on the benchmark's schema."""
    import uvicorn

    from digest.ops.logs import redact_access_log
    from digest.web.server import create_app

    settings = bench_settings(os.environ["BENCH_DB"], os.environ["BENCH_KEY"])
    app = App(settings=settings, clock=fixed_clock(NOW))
    redact_access_log()
    uvicorn.run(create_app(app), host="127.0.0.1", port=int(os.environ["BENCH_PORT"]),
                log_level="info")  # fmt: skip


def bench_settings(url: str, public_key: str) -> Settings:
    return settings_from_mapping(
        {
            "database": {"url": url},
            "site": {"base_url": "http://127.0.0.1:8000"},
            "newsletters": [{"slug": SLUG, "title": "Turkey Unpacked"}],
        },
        env={
            "DIGEST_SECRET_KEY": "bench-secret-key-0123456789abcdef",
            "SENDGRID_WEBHOOK_PUBLIC_KEY": public_key,
        },
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--via", default="direct,http")
    parser.add_argument("--connections", type=int, default=4, help="http: requests in flight")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}&application_name={schema}"
    signer = Signer()
    settings = bench_settings(url, signer.public_b64)
    engine = make_engine(url)
    app = App(settings=settings, clock=fixed_clock(NOW), _engine=engine)
    failed = False
    try:
        upgrade(engine)
        for n, via in enumerate(args.via.split(",")):
            head, *rows = sent_issue(
                app, f"2026-11-{16 + n}T05:00:00+00:00", args.recipients, 1 + n * args.recipients
            )
            issue_id = head[0]
            events = waves(issue_id, rows, seed=n)
            seconds, cpu, database = run(app, via, events, args.batch, signer, args.connections)
            rate = len(events) / seconds
            per = 1000 / len(events)
            how = (f" ({args.connections} connections)" if via == "http" else "") + (
                f" [CPU-s per 1000 events: {'server' if via == 'http' else 'digest'} "
                f"{cpu * per:.3f}, PostgreSQL {database * per:.3f}]"
            )
            with app.session() as session:
                kept = snapshot.stored(session, [issue_id])[issue_id]
                live = snapshot.live(session, [issue_id])[issue_id]
            exact = {k: v for k, v in kept.items() if v} == {k: v for k, v in live.items() if v}
            failed = failed or not exact
            verdict = "ok" if rate >= TARGET else "under target"
            print(f"{via:>6}: {len(events):,} events for {args.recipients:,} recipients in "
                  f"{seconds:.1f} s{how}: {rate:,.0f} events/s (target ≥ {TARGET:,}: {verdict}); "
                  f"stored counts {'equal' if exact else 'DIFFER FROM'} the recount "
                  f"{ {k: v for k, v in kept.items() if v} }", flush=True)  # fmt: skip
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
