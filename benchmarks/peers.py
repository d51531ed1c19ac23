"""digest against software a newsroom might pick instead, measured in the same run.

Run: `make bench-peers` (installs rss2email 3.14 and django-newsletter 1.2.1 in var/peers, a
scratch virtualenv, then runs this), or `.venv/bin/python benchmarks/peers.py
[--feeds 100] [--items 50] [--rounds 5] [--recipients 10000] [--peer-recipients 1000]
[--ingest-only]`.

- Ingest, items/s: the same feed set over HTTP on 127.0.0.1 (bench_ingest's server, its own
  process), fresh state each: `digest ingest` through the normal CLI on a pseudo-terminal, so
  with its progress display on, against `r2e run --no-send` (rss2email fetches, parses and
  builds every entry's message, and sends none; with sending it only gets slower). `--rounds`
  interleaved rounds (digest, then rss2email, each on fresh state), so load from others on a
  shared machine falls on both alike; the ratio reported is the median of the rounds' ratios.
- SMTP, messages/s: the same rendered issue to the same minimal sink (its own process):
  `send_issue` to `--recipients` against django-newsletter's `Submission.submit()` to
  `--peer-recipients` (it sends one by one, a new connection each, so a sample is enough).

Prints each figure, the ratios and the load average; targets: ingest ≥ 3x rss2email, SMTP
≥ 10x django-newsletter and ≥ 3,000 messages/s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ingest import NEWSLETTERS, serve  # noqa: E402
from bench_send import _rendered_issue  # noqa: E402
from bench_smtp import digest_smtp, sink  # noqa: E402

PEERS = ROOT / "var" / "peers" / "bin"
DIGEST = Path(sys.executable).with_name("digest")


def _on_a_terminal(command: list[str], env: dict[str, str]) -> float:
    """Seconds `command` takes with stdout and stderr on a pseudo-terminal (drained)."""
    leader, follower = pty.openpty()
    drained = threading.Thread(target=_drain, args=(leader,), daemon=True)
    drained.start()
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, stdout=follower, stderr=follower, check=True)
    seconds = time.perf_counter() - started
    os.close(follower)
    drained.join(5)
    return seconds


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def digest_ingest(port: int, feeds: int, workdir: Path) -> float:
    """Seconds of `digest ingest` (CLI, progress on) into a fresh SQLite database."""
    config = workdir / "digest.toml"
    lines = [f'[database]\nurl = "sqlite:///{workdir / "ingest.db"}"']
    lines += [f'[[sources]]\nname = "feed{n}"\nurl = "http://127.0.0.1:{port}/feed{n}.xml"'
              for n in range(feeds)]  # fmt: skip
    for newsletter in NEWSLETTERS:
        topic = json.dumps(newsletter["topic"]).replace('": ', '" = ')
        lines.append(f'[[newsletters]]\nslug = "{newsletter["slug"]}"\ntitle = "T"\n'
                     f"topic = {topic}")  # fmt: skip
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "DIGEST_SECRET_KEY": "bench-secret-key-0123456789abcdef"}
    base = [str(DIGEST), "--config", str(config)]
    subprocess.run([*base, "db", "upgrade"], cwd=ROOT, env=env, capture_output=True, check=True)
    return _on_a_terminal([*base, "ingest"], env)


def rss2email_ingest(port: int, feeds: int, workdir: Path) -> tuple[float, int]:
    """Seconds of `r2e run --no-send` over the same feeds, and the entries it took."""
    config, data = workdir / "r2e.cfg", workdir / "r2e.json"
    r2e = [str(PEERS / "r2e"), "-c", str(config), "-d", str(data)]
    subprocess.run([*r2e, "new", "reader@example.com"], capture_output=True, check=True)
    outlines = "".join(
        f'<outline type="rss" text="feed{n}" xmlUrl="http://127.0.0.1:{port}/feed{n}.xml"/>'
        for n in range(feeds)
    )
    opml = workdir / "feeds.opml"
    opml.write_text(f'<?xml version="1.0"?><opml version="1.0"><body>{outlines}</body></opml>')
    subprocess.run([*r2e, "opmlimport", str(opml)], capture_output=True, check=True)
    started = time.perf_counter()
    subprocess.run([*r2e, "run", "--no-send"], capture_output=True, check=True)
    seconds = time.perf_counter() - started
    stored = json.loads(data.read_text())
    return seconds, sum(len(f.get("seen", {})) for f in stored.get("feeds", []))


def django_newsletter_send(port: int, count: int, workdir: Path) -> float:
    """Messages/s of django-newsletter sending the issue to `count` subscribers."""
    subject, html, _ = _rendered_issue()
    issue = workdir / "issue"
    issue.mkdir()
    (issue / "subject.txt").write_text(subject, encoding="utf-8")
    (issue / "issue.html").write_text(html, encoding="utf-8")
    script = ROOT / "benchmarks" / "peers_django_newsletter.py"
    output = subprocess.run(
        [str(PEERS / "python"), str(script), str(workdir), str(port), str(count), str(issue)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if output.returncode != 0:
        raise RuntimeError(f"django-newsletter failed:\n{output.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return count / float(result["seconds"])


def _feed_server(feeds: int, items: int, workdir: Path) -> tuple[Any, int]:
    edition = workdir / "edition"
    edition.write_text("1")
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    process = context.Process(target=serve, args=(queue, feeds, items, str(edition)), daemon=True)
    process.start()
    return process, int(queue.get(timeout=60))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--feeds", type=int, default=100)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--peer-recipients", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved ingest rounds")
    parser.add_argument("--ingest-only", action="store_true", help="skip the SMTP comparison")
    args = parser.parse_args()
    if not (PEERS / "r2e").exists():
        print("run `make bench-peers` first: it installs the peers in var/peers", flush=True)
        return 1
    total = args.feeds * args.items
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        work = Path(tmp)
        server, port = _feed_server(args.feeds, args.items, work)
        ratios, ours, theirs = [], [], []
        try:
            for round_ in range(args.rounds):
                (work / f"d{round_}").mkdir()
                ours.append(total / digest_ingest(port, args.feeds, work / f"d{round_}"))
                (work / f"r{round_}").mkdir()
                seconds, taken = rss2email_ingest(port, args.feeds, work / f"r{round_}")
                theirs.append(taken / seconds)
                ratios.append(ours[-1] / theirs[-1])
                print(f"  round {round_ + 1}: digest {ours[-1]:,.0f} items/s, rss2email "
                      f"{theirs[-1]:,.0f} items/s ({taken:,} entries): {ratios[-1]:.2f}x; "
                      f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        finally:
            server.terminate()
        print(f"ingest, {args.feeds} feeds × {args.items} items, median of {args.rounds} "
              f"interleaved round(s): digest {statistics.median(ours):,.0f} items/s (CLI, "
              f"progress on), rss2email {statistics.median(theirs):,.0f} items/s: "
              f"{statistics.median(ratios):.2f}x (target ≥ 3x); load average "
              f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        if args.ingest_only:
            return 0
        with sink() as (smtp_port, sink_pid, _):
            (work / "n").mkdir()
            peer = django_newsletter_send(smtp_port, args.peer_recipients, work / "n")
            result = digest_smtp(args.recipients, smtp_port, sink_pid)
        print(f"SMTP to the sink: digest {result['rate']:,.0f} messages/s "
              f"({args.recipients:,} recipients), django-newsletter {peer:,.0f} messages/s "
              f"({args.peer_recipients:,}): {result['rate'] / peer:.1f}x (target ≥ 10x, and "
              f"≥ 3,000/s); load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
