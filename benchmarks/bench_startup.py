"""Start-up: `digest --help`, and a `digest run-due` tick with nothing due, as cron runs it.

Run: `.venv/bin/python benchmarks/bench_startup.py [--runs 15]` (also run by `make bench`).

Each figure is the median wall time of `--runs` fresh processes (the installed `digest`
script, as cron or a shell starts it). The tick runs against a migrated SQLite database whose
newsletter's current period has already been handled by a first tick, so the measured ticks
find nothing due. Targets on a 2-core machine: `--help` ≤ 0.3 s, an idle tick ≤ 0.6 s. Also
prints `python -c pass`, the floor no command can go below.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGEST = Path(sys.executable).with_name("digest")
NOW = "2026-11-30T06:00:00Z"
TARGETS = {"digest --help": 0.3, "digest run-due (nothing due)": 0.6}


def _config(workdir: Path) -> Path:
    path = workdir / "digest.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{workdir / "tick.db"}"\n'
        '[site]\nbase_url = "http://127.0.0.1:8000"\n'
        f'[delivery]\ntransport = "outbox"\noutbox_dir = "{workdir / "outbox"}"\n'
        '[[newsletters]]\nslug = "turkey-unpacked"\ntitle = "Turkey Unpacked"\n'
        'schedule = "0 8 * * 1"\ntimezone = "Europe/Istanbul"\n',
        encoding="utf-8",
    )
    return path


def _median_seconds(command: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = {**os.environ, "DIGEST_SECRET_KEY": "bench-secret-key-0123456789abcdef"}
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        config = _config(Path(tmp))
        base = [str(DIGEST), "--config", str(config), "--now", NOW]
        subprocess.run([*base, "db", "upgrade"], cwd=ROOT, env=env, capture_output=True, check=True)
        subprocess.run([*base, "run-due"], cwd=ROOT, env=env, capture_output=True, check=False)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "digest --help": [str(DIGEST), "--help"],
            "digest run-due (nothing due)": [*base, "run-due"],
        }
        for name, command in commands.items():
            seconds = _median_seconds(command, args.runs, env)
            target = TARGETS.get(name)
            verdict = "" if target is None else (" ok" if seconds <= target else " MISSED")
            ok = ok and (target is None or seconds <= target)
            limit = f" (target ≤ {target} s){verdict}" if target else ""
            print(f"{name:30} {seconds:.3f} s median of {args.runs}{limit}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
