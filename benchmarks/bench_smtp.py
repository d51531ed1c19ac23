"""Send an issue over SMTP to a minimal local sink, end to end: messages/s at 10,000 recipients.

Run: `.venv/bin/python benchmarks/bench_smtp.py [--size 10000] [--concurrency 4]` (also run by
`make bench`; `peers.py` (make bench-peers) reuses it against django-newsletter).

`send_issue` on a fresh SQLite database in a child process: the freeze, batches claimed, each
message's bytes built from the issue's once-serialised bytes, MAIL, RCPT and BDAT in one write
(the sink offers PIPELINING and CHUNKING), and every message's outcome recorded before the next
goes (the crash window of `digest.sending.stream`). The sink (`tests/support/smtp_sink.py`)
runs in its own process and does nothing with what it takes, so that it is not the
bottleneck. Target on a 2-core machine: ≥ 3,000 messages/s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
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

from bench_send import cpu_seconds, prepare  # noqa: E402

from digest.app import App, fixed_clock  # noqa: E402
from digest.config import settings_from_mapping  # noqa: E402
from tests.support.sample_issue import PERIOD  # noqa: E402

SLUG = "turkey-unpacked"
TARGET = 3000.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def sink() -> Iterator[tuple[int, int, list[int]]]:
    """The sink process: (port, pid, [messages counted], filled in when it stops)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.smtp_sink", str(port)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stdin is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("the SMTP sink did not start")
    counted: list[int] = []
    try:
        yield port, process.pid, counted
    finally:
        process.stdin.close()
        counted.append(int(process.stdout.readline().strip() or 0))
        process.wait(timeout=30)


def _config(url: str, port: int, concurrency: int) -> dict[str, Any]:
    return {
        "database": {"url": url},
        "site": {"name": "The Meridian Post", "base_url": "https://news.meridian.example"},
        "sender": {"from_email": "newsletters@meridian.example",
                   "from_name": "The Meridian Post"},
        "delivery": {"transport": "smtp", "batch_size": 500, "concurrency": concurrency},
        "smtp": {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 30},
        "newsletters": [{"slug": SLUG, "title": "Turkey Unpacked", "timezone": "Europe/Istanbul"}],
    }  # fmt: skip


def child(url: str, port: int, issue_id: int, concurrency: int) -> None:
    """Runs in its own process: the measured send. Prints one JSON line."""
    import resource

    from digest.sending.send import send_issue

    env = {"DIGEST_SECRET_KEY": "bench-secret-key-0123456789abcdef"}
    settings = settings_from_mapping(_config(url, port, concurrency), env=env)
    app = App(settings=settings, clock=fixed_clock(PERIOD))
    started = time.perf_counter()
    report = send_issue(app, issue_id)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    document = {"seconds": seconds, "cpu": cpu, "accepted": report.accepted}
    print(json.dumps({**document, "errors": report.errors}), flush=True)


def digest_smtp(size: int, port: int, sink_pid: int, concurrency: int = 4) -> dict[str, Any]:
    """One measured digest send of `size` recipients to the sink on `port`."""
    with tempfile.TemporaryDirectory(prefix="bench-smtp-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        issue_id = prepare(url, size)
        sink_before = cpu_seconds(sink_pid)
        output = subprocess.run(
            [sys.executable, __file__, "--child", url, str(port), str(issue_id), str(concurrency)],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if output.returncode != 0:
            raise RuntimeError(f"the SMTP send failed:\n{output.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
        result["sink_cpu"] = cpu_seconds(sink_pid) - sink_before
        result["rate"] = size / result["seconds"]
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, port, issue, concurrency = args.child
        child(url, int(port), int(issue), int(concurrency))
        return 0
    with sink() as (port, pid, counted):
        result = digest_smtp(args.size, port, pid, args.concurrency)
    print(
        f"digest over SMTP, {args.size:,} recipients, concurrency {args.concurrency}: "
        f"{result['seconds']:.2f} s ({result['rate']:,.0f} messages/s), accepted "
        f"{result['accepted']:,}, sink counted {counted[0]:,}; CPU sender {result['cpu']:.1f} s, "
        f"sink {result['sink_cpu']:.1f} s; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    met = result["rate"] >= TARGET and result["accepted"] == args.size
    print(f"    target ≥ {TARGET:,.0f} messages/s: {'ok' if met else 'MISSED'}", flush=True)
    return 0 if result["accepted"] == args.size else 1


if __name__ == "__main__":
    sys.exit(main())
