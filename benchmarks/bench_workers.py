"""One issue sent by a pool of 1, 2 and 3 `digest worker` processes on PostgreSQL.

Run: `.venv/bin/python benchmarks/bench_workers.py [--size 1000000] [--workers 1,2,3]`
(also run by `make bench`, at 100,000 unless `--size` says otherwise).

Each measurement starts N real `digest worker` processes on a fresh schema holding the audience,
waits until they have registered, then starts the issue as the scheduler does
(`worker_pool.hand_over`: the issue goes to `sending` and the workers freeze and send it) and
times until the issue is `sent`. The SendGrid-compatible server runs in its own process (schema
rules, bodies dropped). On a 2-core machine the workers, the server and PostgreSQL share the
CPUs, so recipients/s flattens once they are busy; CPU-seconds per 1000 recipients (the
workers' own, start-up excluded) says what each recipient costs whatever the core count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_send import (  # noqa: E402
    API_KEY,
    SLUG,
    _config,
    _env,
    cpu_seconds,
    database,
    prepare,
    sendgrid_server,
)
from sqlmodel import Session  # noqa: E402

from digest.app import App  # noqa: E402
from digest.config import settings_from_mapping  # noqa: E402
from digest.sending import worker_pool  # noqa: E402
from digest.storage.db import make_engine  # noqa: E402
from digest.storage.models import Issue, IssueStatus  # noqa: E402
from tests.support.scheduling import to_toml  # noqa: E402


def _wait(condition: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def measure(url: str, api_url: str, size: int, workers: int, workdir: Path) -> dict[str, Any]:
    issue_id = prepare(url, size)
    config = _config(url, api_url)
    path = workdir / f"digest-{workers}.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    env = {**os.environ, **_env(), "DIGEST_CONFIG": str(path), "SENDGRID_API_KEY": API_KEY}
    env.pop("DIGEST_DATABASE_URL", None)
    logs = [(workdir / f"worker-{workers}-{i}.log").open("w") for i in range(workers)]
    command = [sys.executable, "-m", "digest", "worker"]
    processes = [
        subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        for log in logs
    ]
    engine = make_engine(url)
    app = App(settings=settings_from_mapping(config, env=_env()), _engine=engine)
    try:

        def registered() -> bool:
            with Session(engine) as session:
                return len(worker_pool.live_workers(session)) == workers

        _wait(registered, f"{workers} workers", 60)
        cpu_before = sum(cpu_seconds(p.pid) for p in processes)
        started = time.perf_counter()
        if worker_pool.hand_over(app, issue_id) is None:
            raise RuntimeError("no live worker took the issue")

        def sent() -> bool:
            with Session(engine) as session:
                issue = session.get(Issue, issue_id)
                return issue is not None and issue.status == IssueStatus.SENT

        _wait(sent, "the issue to be sent", 1800)
        seconds = time.perf_counter() - started
        cpu = sum(cpu_seconds(p.pid) for p in processes) - cpu_before
    finally:
        for process in processes:
            process.terminate()
        for process, log in zip(processes, logs, strict=True):
            process.wait(timeout=60)
            log.close()
        engine.dispose()
    for process, log in zip(processes, logs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"a worker failed:\n{Path(log.name).read_text()[-2000:]}")
    return {"seconds": seconds, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2,3")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n]
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp, sendgrid_server() as server:
        api_url, server_pid = server
        for workers in counts:
            with database("postgresql", Path(tmp)) as url:
                server_before = cpu_seconds(server_pid)
                result = measure(url, api_url, args.size, workers, Path(tmp))
                result["server_cpu"] = cpu_seconds(server_pid) - server_before
            results[workers] = result
            rate = args.size / result["seconds"]
            base = args.size / results[counts[0]]["seconds"]
            print(
                f"{workers} worker(s), {args.size:,} recipients ({SLUG}): "
                f"{result['seconds']:6.1f} s, {rate:,.0f}/s ({rate / base:.2f}x {counts[0]}); "
                f"workers' CPU {result['cpu']:.1f} s = "
                f"{result['cpu'] / args.size * 1000:.3f} CPU-s per 1000 recipients; "
                f"server CPU {result['server_cpu']:.1f} s; "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
