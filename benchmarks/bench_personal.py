"""Send a personal newsletter (#14) to 1M readers over 10 topics, next to a 1M topic newsletter.

Run: `.venv/bin/python benchmarks/bench_personal.py [--size 1000000]
[--databases sqlite,postgresql] [--rounds 1] [--profile]` (also run by `make bench`).
`--rounds 3` runs both sends three times, the order alternating, and reports the median ratio:
on a shared machine one pair of runs swings by ±20%.

Per database, in the same run and against the same local SendGrid-compatible server (schema
rules checked, bodies dropped, in its own process), each on a fresh database:

- the single topic newsletter: `bench_send.py`'s measurement (its own `prepare` and child
  process), `--size` readers of one newsletter, one message for all;
- the personal newsletter: 10 topic newsletters of 8 articles each (one article of each topic
  also matches the next topic by keyword, so each reader's email places it in its strongest
  match, the tag) and one `kind = "personal"` newsletter (12 articles at most); `--size` readers
  each following 1 to 4 topics at random (seeded; uniform count, then a uniform set of that
  size), stored as real Article / ArticleTopic rows and subscriptions; the issue built by
  `build_issue`, then `send_issue` in a child process (its own peak RSS) through the sendgrid
  transport: the freeze plans each reader's variant, cuts batches per variant and hands each
  new variant over to be rendered once.

Render time is measured in the child, as `digest.issues.variant_renders` renders: for a large
audience in the freezing process (below; the variants it reports stored are counted), for a
middling one in a rendering process of its own (its CPU, start-up included, and its peak RSS,
read just before the send closes it), otherwise in the senders (`Renderer.render`, timed
there); besides, the CPU
the freeze spends handing each new variant over (its renderer input built) and the time the
senders wait for their batch's variant (`VariantRenders.get`). The send helpers' CPU and peak
RSS (`delivery.send_processes`, in both sends) are read the same way. Also the CPU of the
freeze thread and of the sending threads (and of the process that plans the freeze's pages
and renders the variants for a large audience, `digest.sending.freeze_process`, read as the
rendering one), when the
first batch was done and how much was sent by the end of the freeze. After each send the bench
checks, from the database and the server's count: every reader accepted once (no delivery row
twice, the server accepted exactly `--size` recipients), each reader's variant is the set of
topics they follow, and the variants' reader counts add up.

Targets on a 2-core machine: the personal send within 1.5x the single newsletter's time, peak
RSS at most 300 MB (the sending, rendering, freezing and helper processes' together). `--profile`
runs the personal child under cProfile (every thread of it, not the rendering process) and
prints its hot spots; the times are then inflated and not comparable.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, text  # noqa: E402

from benchmarks import bench_send as single  # noqa: E402
from digest.app import App, fixed_clock  # noqa: E402
from digest.config import settings_from_mapping  # noqa: E402
from digest.storage.db import make_engine, upgrade  # noqa: E402
from tests.support.sample_issue import PERIOD  # noqa: E402
from tests.support.sending import add_audience  # noqa: E402

PERSONAL = "my-briefing"
TOPICS = [f"topic-{n}" for n in range(10)]
PER_TOPIC = 8
SEED = 14
HELPERS_ENV = "DIGEST_BENCH_SEND_PROCESSES"
TARGET_RATIO = 1.5
TARGET_RSS_MB = 300.0
# Every set of 1 to 4 of the 10 topics: a reader draws a size, then one set of that size.
COMBINATIONS = [list(itertools.combinations(range(len(TOPICS)), k)) for k in range(1, 5)]


def _config(url: str, api_url: str) -> dict[str, Any]:
    """bench_send's configuration (transport, batches, threads), with the personal setup."""
    config = single._config(url, api_url, send_processes=_helpers())
    config["sender"]["postal_address"] = "The Meridian Post, 12 Harbour Lane, Port Meridian 10101"
    config["newsletters"] = [
        {"slug": slug, "title": f"Topic {n}", "timezone": "Europe/Istanbul"}
        for n, slug in enumerate(TOPICS)
    ] + [
        {"slug": PERSONAL, "title": "Your Briefing", "kind": "personal",
         "timezone": "Europe/Istanbul", "min_articles": 1, "max_articles": 12}
    ]  # fmt: skip
    return config


def _helpers() -> int | str:
    """`delivery.send_processes` of both sends (`--send-processes`, passed on to the children)."""
    value = os.environ.get(HELPERS_ENV, "0")
    return int(value) if value.isdigit() else value


def follows(size: int) -> Iterator[tuple[int, ...]]:
    """The topics (indices) reader 1, 2, … `size` follow: seeded, the same on every call."""
    rng = random.Random(SEED)
    for _ in range(size):
        yield rng.choice(COMBINATIONS[rng.randrange(4)])


def _add_follows(engine: Engine, size: int, first: int, chunk: int = 50_000) -> None:
    """The readers' active topic subscriptions (ids first … first + size - 1), in bulk."""
    followed = follows(size)
    with engine.begin() as connection:
        pg = connection.dialect.name == "postgresql"
        stamp: object = "2026-01-01 00:00:00.000000"
        if pg:
            stamp = PERIOD.replace(month=1, day=1, hour=0, tzinfo=None)
        for offset in range(0, size, chunk):
            rows = [
                (first + i, TOPICS[t])
                for i, topics in zip(
                    range(offset, min(offset + chunk, size)), followed, strict=False
                )
                for t in topics
            ]
            if pg:
                connection.exec_driver_sql(
                    "INSERT INTO subscription (subscriber_id, newsletter, status, source, "
                    "created_at) SELECT s, n, 'active', 'bench', %(c)s FROM "
                    "unnest(%(s)s::int[], %(n)s::text[]) AS t(s, n)",
                    {"s": [r[0] for r in rows], "n": [r[1] for r in rows], "c": stamp},
                )
            else:
                connection.exec_driver_sql(
                    "INSERT INTO subscription (subscriber_id, newsletter, status, source, "
                    "created_at) VALUES (?, ?, 'active', 'bench', ?)",
                    [(s, n, stamp) for s, n in rows],
                )


def _add_articles(app: App) -> None:
    """PER_TOPIC articles per topic in the window, tagged; the first of each topic also matches
    the next topic by a keyword (a weaker match: it belongs in its own topic's section)."""
    from tests.support.articles import add_article

    for n, slug in enumerate(TOPICS):
        for j in range(PER_TOPIC):
            topics = {slug: [f"tag: Topic {n}"]}
            if j == 0:
                topics[TOPICS[(n + 1) % len(TOPICS)]] = [f"keyword: topic {n + 1}"]
            add_article(
                app,
                f"Topic {n} story {j + 1}: what changed this week and what comes next",
                PERIOD - timedelta(hours=2 + 3 * j + n),
                source="world" if j % 2 else "business",
                topics=topics,
                tags=[f"Topic {n}"],
                image_url=f"https://cdn.meridian.example/img/{n}-{j}.jpg" if j % 3 == 0 else None,
            )


def _app(url: str, api_url: str = "http://127.0.0.1:9") -> App:
    settings = settings_from_mapping(_config(url, api_url), env=single._env())
    return App(settings=settings, clock=fixed_clock(PERIOD))


def prepare(url: str, size: int) -> tuple[int, float]:
    """A migrated database with the audience, the articles and the built personal issue: its
    id and the seconds `build_issue` took."""
    from digest.issues.assemble import build_issue
    from digest.storage.models import IssueStatus

    engine = make_engine(url)
    upgrade(engine)
    first, _ = add_audience(engine, PERSONAL, size)
    _add_follows(engine, size, first)
    app = _app(url)
    _add_articles(app)
    started = time.perf_counter()
    issue = build_issue(app, PERSONAL, PERIOD)
    built = time.perf_counter() - started
    if issue.status != IssueStatus.DRAFT or issue.id is None:
        raise RuntimeError(f"the personal issue was not built: {issue.status} {issue.skip_reason}")
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    app.engine.dispose()
    engine.dispose()
    return issue.id, built


class _Timer:
    """Wall seconds, CPU seconds (of the calling thread) and calls, summed over every thread,
    through one wrapped callable; the moment the last call ended."""

    def __init__(self) -> None:
        self.seconds, self.cpu, self.calls, self.ended = 0.0, 0.0, 0, 0.0
        self._lock = threading.Lock()

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                ended = time.perf_counter()
                with self._lock:
                    self.seconds += ended - started
                    self.cpu += time.thread_time() - cpu
                    self.calls += 1
                    self.ended = max(self.ended, ended)

        return timed


@contextmanager
def _profiled(path: str | None) -> Iterator[None]:
    """cProfile in every thread started meanwhile (and this one); the top functions to `path`."""
    if not path:
        yield
        return
    import cProfile
    import io
    import pstats

    profiles: list[cProfile.Profile] = []
    run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main = cProfile.Profile()
    main.enable()
    try:
        yield
    finally:
        main.disable()
        threading.Thread.run = run  # type: ignore[method-assign]
        stats = pstats.Stats(main)
        for profile in profiles:
            stats.add(profile)
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
        Path(path).write_text(out.getvalue())
        stats.dump_stats(f"{path}.pstats")  # for pstats' callers / callees


def _process_stats(pid: int) -> tuple[float, float]:
    """CPU seconds and peak RSS (MB) of a live process (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0.0
    peak = next((int(line.split()[1]) for line in status.splitlines()
                 if line.startswith("VmHWM:")), 0)  # fmt: skip
    return single.cpu_seconds(pid), peak / 1024


def child(url: str, api_url: str, issue_id: int, profile: str | None) -> None:
    """Runs in its own process: the measured personal send. Prints one JSON line.

    Variants are rendered by `digest.issues.variant_renders.VariantRenders`: in a process of its
    own for a large audience (its CPU and peak RSS are read just before the send closes it), in
    the senders' threads otherwise (`Renderer.render` here). `VariantRenders.get` is what a
    sender waits in for its batch's variant; `submit` is the freeze handing a new variant over
    (its renderer input built there)."""
    from digest.issues.variant_renders import VariantRenders
    from digest.rendering.render import Renderer
    from digest.sending.freeze_process import FreezeProcess
    from digest.sending.run import SendRun
    from digest.sending.send import send_issue

    gets, submits, renders = _Timer(), _Timer(), _Timer()
    freezer, senders = _Timer(), _Timer()
    VariantRenders.get = gets.wrap(VariantRenders.get)  # type: ignore[method-assign]
    VariantRenders.submit = submits.wrap(VariantRenders.submit)  # type: ignore[method-assign]
    Renderer.render = renders.wrap(Renderer.render)  # type: ignore[method-assign]
    SendRun._freeze = freezer.wrap(SendRun._freeze)  # type: ignore[method-assign]
    SendRun._work = senders.wrap(SendRun._work)  # type: ignore[method-assign]
    process: dict[str, float] = {"cpu": 0.0, "peak_mb": 0.0, "count": 0, "renders": 0}
    close = VariantRenders.close

    def closing(self: VariantRenders) -> None:
        pool = self._pool
        if pool is not None:
            for pid in list(getattr(pool, "_processes", None) or {}):
                cpu, peak = _process_stats(pid)
                process["cpu"] += cpu
                process["peak_mb"] = max(process["peak_mb"], peak)
                process["count"] += 1
            process["renders"] = sum(1 for _, f in self._pending.values() if f and f.done())
        close(self)

    VariantRenders.close = closing  # type: ignore[method-assign]
    arrived = VariantRenders.arrived
    remote_renders: set[int] = set()

    def arriving(self: VariantRenders, variant_ids: list[int]) -> None:
        remote_renders.update(variant_ids)  # stored (or failed) by the freezing process
        arrived(self, variant_ids)

    VariantRenders.arrived = arriving  # type: ignore[method-assign]
    frozen_by: dict[str, float] = {"cpu": 0.0, "peak_mb": 0.0, "count": 0}
    stop_freezing = FreezeProcess.close

    def stopping(self: FreezeProcess) -> None:
        if self._process.pid is not None and self._process.is_alive():
            cpu, peak = _process_stats(self._process.pid)
            frozen_by["cpu"] += cpu
            frozen_by["peak_mb"] = max(frozen_by["peak_mb"], peak)
            frozen_by["count"] += 1
        stop_freezing(self)

    FreezeProcess.close = stopping  # type: ignore[method-assign]
    sent: list[tuple[float, int]] = []  # (when, recipients) of each batch done
    note = SendRun._note

    def noted(run: SendRun, batch: Any, results: Any, taken: int) -> None:
        sent.append((time.perf_counter(), taken))
        note(run, batch, results, taken)

    SendRun._note = noted  # type: ignore[method-assign,assignment]
    single.watch_helpers()
    app = _app(url, api_url)
    with _profiled(profile):
        started = time.perf_counter()
        report = send_issue(app, issue_id)
        seconds = time.perf_counter() - started
    first = min((t for t, _ in sent), default=started) - started
    by_freeze_end = sum(n for t, n in sent if t <= freezer.ended)
    print(
        json.dumps(
            {
                **single.send_figures(report, seconds),
                "get_seconds": gets.seconds,
                "get_calls": gets.calls,
                "submit_cpu": submits.cpu,
                "submit_calls": submits.calls,
                "renderer": renders.seconds,
                "renderer_calls": renders.calls,
                "process_cpu": process["cpu"],
                "process_peak_mb": process["peak_mb"],
                "processes": process["count"],
                "process_renders": process["renders"],
                "freeze_process_renders": len(remote_renders),
                "freeze_cpu": freezer.cpu,
                "freeze_process_cpu": frozen_by["cpu"],
                "freeze_process_peak_mb": frozen_by["peak_mb"],
                "freeze_processes": frozen_by["count"],
                "senders_cpu": senders.cpu,
                "first_batch": first,
                "sent_by_freeze_end": by_freeze_end,
            }
        ),
        flush=True,
    )


def verify(url: str, issue_id: int, size: int) -> tuple[dict[str, Any], list[str]]:
    """The variants' figures, and what is wrong with the send (nothing: an empty list)."""
    from sqlmodel import Session

    from digest.sending.counts import BATCH_SPEAKS_AS, delivery_counts
    from digest.storage.models import DeliveryStatus

    engine = make_engine(url)
    problems: list[str] = []
    try:
        with engine.connect() as db:
            variants = {
                int(vid): (int(readers), tuple(topics if isinstance(topics, list) else
                                               json.loads(topics)), html is not None)
                for vid, readers, topics, html in db.execute(
                    text("SELECT id, readers, topics, html FROM issue_variant "
                         "WHERE issue_id = :i"), {"i": issue_id})
            }  # fmt: skip
            statuses = delivery_counts(Session(bind=db), issue_id)
            twice = db.execute(
                text("SELECT count(*) FROM (SELECT subscriber_id FROM delivery "
                     "WHERE issue_id = :i GROUP BY subscriber_id HAVING count(*) > 1) AS t"),
                {"i": issue_id},
            ).scalar()  # fmt: skip
            batches = db.execute(
                text("SELECT count(*) FROM send_batch WHERE issue_id = :i"), {"i": issue_id}
            ).scalar()
            # A pending row's batch speaks for it (digest.sending.counts); the batch's variant
            # is the message the reader was sent.
            rows = db.execute(
                text("SELECT d.subscriber_id, d.variant_id, b.variant_id, d.status, b.status "
                     "FROM delivery d LEFT JOIN send_batch b ON b.id = d.batch_id "
                     "WHERE d.issue_id = :i ORDER BY d.subscriber_id"), {"i": issue_id}
            )  # fmt: skip
            first = None
            wrong, seen, per_variant = 0, 0, dict.fromkeys(variants, 0)
            followed = follows(size)
            for subscriber, variant, sent_as, status, batch_status in rows:
                first = subscriber if first is None else first
                if subscriber != first + seen:
                    problems.append(f"reader {first + seen} has no delivery")
                    break
                seen += 1
                topics = tuple(TOPICS[t] for t in next(followed))
                if status == DeliveryStatus.PENDING:
                    status = BATCH_SPEAKS_AS.get(batch_status, status)
                if (
                    status != DeliveryStatus.ACCEPTED
                    or variant not in variants
                    or sent_as != variant
                ):
                    wrong += 1
                    continue
                per_variant[variant] += 1
                if tuple(sorted(variants[variant][1])) != topics:
                    wrong += 1
    finally:
        engine.dispose()
    if statuses.get(DeliveryStatus.ACCEPTED, 0) != size or seen != size:
        found = {k: v for k, v in statuses.items() if v}
        problems.append(f"accepted {found.get(DeliveryStatus.ACCEPTED, 0):,} of {size:,} ({found})")
    if twice:
        problems.append(f"{twice:,} readers with more than one delivery")
    if wrong:
        problems.append(f"{wrong:,} readers not accepted with the variant of their topics")
    if any(per_variant[v] != readers for v, (readers, _, _) in variants.items()):
        problems.append("issue_variant.readers differs from the variants' deliveries")
    if not all(rendered for _, _, rendered in variants.values()):
        problems.append("some variants were never rendered")
    readers = sorted(r for r, _, _ in variants.values())
    figures = {
        "variants": len(variants),
        "largest": readers[-1] if readers else 0,
        "median": statistics.median(readers) if readers else 0,
        "batches": batches,
    }
    return figures, problems


@contextmanager
def sendgrid_server() -> Iterator[tuple[str, int, dict[str, int]]]:
    """bench_send's test server, one per measurement: its count of accepted recipients is
    filled in (`accepted`) once it has stopped."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.sendgrid_server", "--validate", "rules", "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    counts: dict[str, int] = {}
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the SendGrid test server did not start: {url!r}")
        yield url, process.pid, counts
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        words = (output.strip().splitlines() or [""])[-1].split()
        # "accepted N requests / M recipients, rejected R, aborted A, injected I"
        if len(words) >= 10 and words[0] == "accepted":
            counts["accepted"] = int(words[4])
            counts["rejected"] = int(words[7].rstrip(","))


def busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy so far (Linux /proc/stat): with the child's
    and the server's own CPU, what else ran during a measurement."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _run_child(command: list[str], what: str, server_pid: int) -> dict[str, Any]:
    """Run a measured child; its JSON line, with the server's CPU and the machine's besides."""
    server_before, busy_before, load = single.cpu_seconds(server_pid), busy_cpu(), os.getloadavg()
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if output.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{output.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    result["server_cpu"] = single.cpu_seconds(server_pid) - server_before
    result["other_cpu"] = (
        busy_cpu() - busy_before - result["cpu"] - result["server_cpu"]
        - result.get("process_cpu", 0.0)  # the personal send's rendering process
        - result.get("freeze_process_cpu", 0.0)  # and its freezing process
        - result.get("helpers_cpu", 0.0)  # and the send helpers
    )  # fmt: skip
    result["load"] = (load[0], os.getloadavg()[0])
    return result


def measure_single(kind: str, size: int, workdir: Path) -> dict[str, Any]:
    """bench_send's measurement (its `prepare`, its child), on a fresh database and a server of
    its own."""
    with single.database(kind, workdir) as url, sendgrid_server() as (api_url, pid, counts):
        started = time.perf_counter()
        issue_id = single.prepare(url, size)
        setup = time.perf_counter() - started
        helpers = str(_helpers())
        command = [sys.executable, single.__file__, "--child", url, api_url, str(issue_id), helpers]
        result = _run_child(command, f"the single-newsletter send on {kind}", pid)
        result["setup"] = setup
    result["server_accepted"] = counts.get("accepted", -1)
    return result


def measure_personal(
    kind: str, size: int, workdir: Path, profile: str | None
) -> tuple[dict[str, Any], list[str]]:
    with single.database(kind, workdir) as url, sendgrid_server() as (api_url, pid, counts):
        started = time.perf_counter()
        issue_id, built = prepare(url, size)
        setup = time.perf_counter() - started
        command = [sys.executable, __file__, "--child", url, api_url, str(issue_id)]
        result = _run_child(
            command + ([profile] if profile else []), f"the personal send on {kind}", pid
        )
        result.update(setup=setup, built=built)
        figures, problems = verify(url, issue_id, size)
        result.update(figures)
    result["server_accepted"] = counts.get("accepted", -1)
    if result["server_accepted"] != size:
        problems.append(f"the server accepted {result['server_accepted']:,} recipients")
    return result, problems


def _ok(met: bool) -> str:
    return "ok" if met else "MISSED"


def report(kind: str, size: int, one: dict[str, Any], mine: dict[str, Any]) -> bool:
    """Print one database's figures; True when both targets are met."""
    print(
        f"{kind:10} single topic newsletter, {size:,} readers: {one['seconds']:.1f} s "
        f"({size / one['seconds']:,.0f}/s), freeze {one['freeze']:.1f} s, peak RSS "
        f"{one['peak_mb']:.0f} MB{single.helper_rss(one)}, accepted {one['accepted']:,} "
        f"[setup {one['setup']:.0f} s]",
        flush=True,
    )
    print(
        f"{kind:10} personal, {size:,} readers over {len(TOPICS)} topics: "
        f"{mine['seconds']:.1f} s ({size / mine['seconds']:,.0f}/s), "
        f"freeze {mine['freeze']:.1f} s, peak RSS {mine['peak_mb']:.0f} MB, "
        f"accepted {mine['accepted']:,} "
        f"[setup {mine['setup']:.0f} s, build_issue {mine['built']:.2f} s]",
        flush=True,
    )
    others = " (PostgreSQL's included)" if kind == "postgresql" else ""
    print(
        f"    {mine['variants']:,} variants, readers per variant: largest {mine['largest']:,}, "
        f"median {mine['median']:,.0f}; {mine['batches']:,} batches",
        flush=True,
    )
    rendered = mine["process_renders"] or mine["renderer_calls"]
    if mine.get("freeze_process_renders"):
        where = (
            f"{mine['freeze_process_renders']:,} in the freezing process (its CPU below, "
            "the freeze's included)"
        )
    elif mine["processes"]:
        where = (
            f"{mine['process_renders']:,} in the rendering process: its CPU "
            f"{mine['process_cpu']:.1f} s (start-up included; "
            f"{mine['process_cpu'] / max(1, rendered) * 1e3:.0f} ms a variant), peak RSS "
            f"{mine['process_peak_mb']:.0f} MB"
        )
    else:
        where = (
            f"{mine['renderer_calls']:,} in the senders' threads: Renderer.render "
            f"{mine['renderer']:.1f} s summed over the threads"
        )
    if (mine["processes"] or mine.get("freeze_process_renders")) and mine["renderer_calls"]:
        where += f"; {mine['renderer_calls']:,} in the senders ({mine['renderer']:.1f} s)"
    print(
        f"    render: {where}; variants handed over by the freeze "
        f"{mine['submit_cpu']:.2f} s CPU; senders waited {mine['get_seconds']:.1f} s for "
        f"{mine['get_calls']:,} variants (VariantRenders.get, summed over the threads)",
        flush=True,
    )
    frozen = ""
    if mine["freeze_processes"]:
        frozen = (
            f" (it waits on the freezing process: its CPU {mine['freeze_process_cpu']:.1f} s, "
            f"start-up included, peak RSS {mine['freeze_process_peak_mb']:.0f} MB)"
        )
    print(
        f"    CPU of the personal send by thread: freeze {mine['freeze_cpu']:.1f} s{frozen}, "
        f"senders {mine['senders_cpu']:.1f} s; first batch done after {mine['first_batch']:.1f} s, "
        f"{mine['sent_by_freeze_end'] / size:.0%} of the readers sent when the freeze ended",
        flush=True,
    )
    print(
        f"    CPU: sender {mine['cpu']:.1f} s (single {one['cpu']:.1f} s), its send helpers "
        f"{mine['helpers_cpu']:.1f} s (single {one['helpers_cpu']:.1f} s), local SendGrid server "
        f"{mine['server_cpu']:.1f} s (single {one['server_cpu']:.1f} s), anything else "
        f"{mine['other_cpu']:.1f} s (single {one['other_cpu']:.1f} s){others}; load average "
        f"{one['load'][0]:.1f} → {one['load'][1]:.1f} (single), "
        f"{mine['load'][0]:.1f} → {mine['load'][1]:.1f} (personal)",
        flush=True,
    )
    ratio = mine["seconds"] / one["seconds"]
    both = (mine["peak_mb"] + mine["process_peak_mb"] + mine["freeze_process_peak_mb"]
            + mine["helpers_peak_mb"])  # fmt: skip
    fast, small = ratio <= TARGET_RATIO, both <= TARGET_RSS_MB
    rss = f"peak RSS {mine['peak_mb']:.0f} MB"
    if mine["processes"] or mine["freeze_processes"] or mine["helpers"]:
        rss += f" ({_ok(mine['peak_mb'] <= TARGET_RSS_MB)} alone)"
        if mine["processes"]:
            rss += f" + {mine['process_peak_mb']:.0f} MB rendering"
        if mine["freeze_processes"]:
            rss += f" + {mine['freeze_process_peak_mb']:.0f} MB freezing"
        if mine["helpers"]:
            rss += f" + {mine['helpers_peak_mb']:.0f} MB in {mine['helpers']:.0f} send helpers"
        rss += f" = {both:.0f} MB"
    print(
        f"    personal / single: {ratio:.2f}x, target ≤ {TARGET_RATIO}x: {_ok(fast)}; "
        f"{rss}, target ≤ {TARGET_RSS_MB:.0f} MB: {_ok(small)}",
        flush=True,
    )
    return fast and small


def _one_round(
    kind: str, args: argparse.Namespace, tmp: Path, *, personal_first: bool
) -> tuple[bool, float]:
    """Both sends once, on fresh databases; (its checks passed, the ratio). A missed target is
    reported, not a failure."""
    profile = str(tmp / f"profile-{kind}.txt") if args.profile else None
    if personal_first:
        mine, problems = measure_personal(kind, args.size, tmp, profile)
        one = measure_single(kind, args.size, tmp)
    else:
        one = measure_single(kind, args.size, tmp)
        mine, problems = measure_personal(kind, args.size, tmp, profile)
    if one["accepted"] != args.size or one["server_accepted"] != args.size:
        problems.append(
            f"single newsletter: accepted {one['accepted']:,}, server "
            f"{one['server_accepted']:,} of {args.size:,}"
        )
    report(kind, args.size, one, mine)
    if problems:
        print(f"    WRONG: {'; '.join(problems)}", flush=True)
    else:
        print(
            f"    verified: {args.size:,} accepted (server and ledger), nobody twice, "
            "each reader's variant = the topics they follow",
            flush=True,
        )
    if profile:
        print(Path(profile).read_text(), flush=True)
        kept = Path(tempfile.gettempdir()) / f"bench-personal-{kind}.pstats"
        kept.write_bytes(Path(f"{profile}.pstats").read_bytes())
        print(f"    profile kept in {kept}", flush=True)
    return not problems, mine["seconds"] / one["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1_000_000, help="readers (each send)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the personal send (times inflated)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="interleaved rounds (single and personal, the order alternating): the median ratio",
    )  # fmt: skip
    parser.add_argument(
        "--send-processes", default="0",
        help="delivery.send_processes of both sends, compared like with like (0: a personal "
        "issue's default, no helpers; 2: two helpers each)",
    )  # fmt: skip
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:  # the children read it from their environment
        os.environ[HELPERS_ENV] = args.send_processes
    if args.child:
        url, api_url, issue, *rest = args.child
        child(url, api_url, int(issue), rest[0] if rest else None)
        return 0
    kinds = [k for k in args.databases.split(",") if k]
    ok = True
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-personal-") as tmp:
        for kind in kinds:
            ratios: list[float] = []
            for round_ in range(args.rounds):
                if args.rounds > 1:
                    print(f"{kind}: round {round_ + 1} of {args.rounds}", flush=True)
                checked, ratio = _one_round(kind, args, Path(tmp), personal_first=round_ % 2 == 1)
                ok = ok and checked
                ratios.append(ratio)
            if args.rounds > 1:
                median = statistics.median(ratios)
                listed = ", ".join(f"{r:.2f}x" for r in ratios)
                print(
                    f"{kind:10} personal / single over {args.rounds} interleaved rounds: median "
                    f"{median:.2f}x ({listed}), target ≤ {TARGET_RATIO}x: "
                    f"{_ok(median <= TARGET_RATIO)}",
                    flush=True,
                )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
